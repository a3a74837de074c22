"""Saved policies, every family alike: a directory with a JSON card and, for fitted ones, safetensors.

``card.json`` says what the policy is: format and version, the policy's registry name and constructor
parameters (:mod:`.policy_state`), the feature schema a learned policy reads, the tokenizer a fitted
policy's corpus tables were built with (their keys are token ids), how and on which task a learned policy
was trained and how it scored, package versions, and the SHA-256 of every other file. ``policy.safetensors``
holds the tensors (a learned scorer's weights, pmi / informative tables), absent when there are none;
``word_counts.json`` the corpus word counts a collator fitted for the ``frequency`` / ``rarity`` features.
Loading reads JSON and safetensors only (never a pickle), resolves the policy's name through the registry
(never an import path), checks every checksum and every tensor's name and shape, and says clearly what is
wrong with a bad artifact. Version 1 (learned policies only: ``policy.class`` and ``weights``) still loads;
a newer version is refused with a request to upgrade.

Before a loaded policy masks for a task, :func:`check_use` compares the task's entity spans
with those the policy was trained on: a different source is a warning, none at all (for a
policy that reads the ``entity`` feature) an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from maskpolicy.meta.learning.policy_state import (
    TABLES,
    ArtifactError,
    context_spec,
    decode,
    encode,
    feature_names,
    learned_params,
    policy_parts,
)
from maskpolicy.meta.results.files import staged_directory, write_json
from maskpolicy.meta.results.schema import versions
from maskpolicy.policies import FEATURE_SIZES, MaskingPolicy
from maskpolicy.tasks.base import Document, Task, TaskError
from maskpolicy.tasks.hashing import file_sha256
from maskpolicy.tasks.text.context import encoder_location, weights_sha256

log = logging.getLogger(__name__)

FORMAT = "maskpolicy-policy"
FORMAT_VERSION = 2
CARD, WEIGHTS, WORD_COUNTS = "card.json", "policy.safetensors", "word_counts.json"
V1_CLASSES = ("learned",)  # version 1 cards name a class; only the learned policy was saved then

__all__ = ["CARD", "FORMAT", "FORMAT_VERSION", "WEIGHTS", "WORD_COUNTS", "ArtifactError", "check_tokenizer",
           "check_use", "entity_source", "load_policy", "load_word_counts", "policy_params", "read_card",
           "save_policy", "tagger_settings", "tokenizer_fingerprint"]

policy_params = learned_params  # the earlier name: a learned policy's constructor arguments


def save_policy(policy: MaskingPolicy, path: str | os.PathLike, training: dict[str, Any] | None = None, *,
                tokenizer: Any = None, collator: dict[str, Any] | None = None,
                word_counts: Mapping[str, int] | None = None, schedule: dict[str, Any] | None = None) -> Path:
    """Writes any registered policy's folder whole (a reader sees the old one or the new one, never a mix).

    ``training`` describes a learned policy's origin (method, task, evaluation, seed, …; default: the training
    block of the artifact it was loaded from). ``tokenizer``: the tokenizer a fitted policy's tables were built
    with, recorded by its vocabulary's SHA-256 so a loader can refuse another one. ``collator``: a
    :class:`~maskpolicy.meta.collator.MaskingCollator`'s settings; ``word_counts``: its fitted word counts.
    ``schedule``: the rate schedule of the policy's config (recorded; a loaded policy masks at its base rate).
    """
    node, tensors = encode(policy)
    if training is None:
        training = (getattr(policy, "source", None) or {}).get("training")
    with staged_directory(path) as staging:
        files: dict[str, Any] = {}
        if tensors:
            save_file(tensors, staging / WEIGHTS)
            files["tensors"] = {"file": WEIGHTS, "sha256": file_sha256(staging / WEIGHTS),
                                "shapes": {name: list(t.shape) for name, t in sorted(tensors.items())}}
        if word_counts is not None:
            write_json(staging / WORD_COUNTS, dict(sorted(word_counts.items())))
            files["word_counts"] = {"file": WORD_COUNTS, "sha256": file_sha256(staging / WORD_COUNTS),
                                    "words": len(word_counts)}
        fitted = any(f".{TABLES}." in f".{name}" for name in tensors)  # corpus tables, the policy's or a part's
        write_json(staging / CARD, {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "policy": node,
            "feature_sizes": {name: FEATURE_SIZES[name] for name in feature_names(policy)},
            "tensors": files.get("tensors"),
            "tokenizer": tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
            "fitted_tables": fitted,
            "context": _context_card(policy),
            "word_counts": files.get("word_counts"),
            "collator": collator,
            "schedule": schedule,
            "training": training,
            "versions": versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
    return Path(path)


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """What identifies a tokenizer's ids: its class, name and the SHA-256 of its whole vocabulary (token → id)."""
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))
    digest = hashlib.sha256(json.dumps(vocabulary, ensure_ascii=False).encode("utf-8")).hexdigest()
    return {"class": type(tokenizer).__name__, "name_or_path": str(getattr(tokenizer, "name_or_path", "") or ""),
            "vocab_size": len(vocabulary), "vocab_sha256": digest}


def check_tokenizer(card: Mapping[str, Any], tokenizer: Any, path: str | os.PathLike) -> None:
    """Refuses a tokenizer other than the one a saved policy's corpus tables were built with (their keys hash
    token ids, so another vocabulary finds no n-gram, or wrong ones)."""
    if not card.get("fitted_tables"):
        return
    saved = card.get("tokenizer")
    if saved is None:
        log.warning("%s: the policy's corpus tables do not say which tokenizer built them; if it is not this one, "
                    "refit them with collator.fit(texts)", path)
        return
    now = tokenizer_fingerprint(tokenizer)
    if now["vocab_sha256"] != saved.get("vocab_sha256"):
        raise ArtifactError(
            f"{path}: the policy's corpus tables were built from the token ids of tokenizer "
            f"{saved.get('name_or_path') or saved.get('class')!r} ({saved.get('vocab_size')} tokens), and this "
            f"tokenizer {now['name_or_path'] or now['class']!r} ({now['vocab_size']} tokens) has another "
            "vocabulary: refit the tables on your corpus with collator.fit(texts), or use the tokenizer they were "
            "built with"
        )


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """The artifact's card, checked for format and version."""
    path = Path(path)
    card_file = path / CARD
    if not card_file.is_file():
        raise ArtifactError(
            f"no policy artifact at {path}: expected {CARD} and {WEIGHTS} (written by save_policy, "
            "MaskingCollator.save_pretrained, maskpolicy-learn or maskpolicy-search); check the path"
        )
    try:
        card = json.loads(card_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{card_file} is not valid JSON ({error}); the artifact is damaged, re-save it") from error
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise ArtifactError(f"{card_file} is not a maskpolicy policy card (format must be {FORMAT!r})")
    version = card.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ArtifactError(
            f"{path} has card format version {version!r}; this maskpolicy reads versions 1–{FORMAT_VERSION}. "
            "Upgrade maskpolicy (pip install -U maskpolicy) to load artifacts from a newer version"
        )
    if version >= 2:
        _check_sections(card, card_file)
    return card


# the JSON type of each section of a format-2 card (None: the section may be null)
CARD_SECTIONS: dict[str, tuple[type | None, ...]] = {
    "policy": (dict,), "feature_sizes": (dict,), "tensors": (dict, None), "tokenizer": (dict, None),
    "fitted_tables": (bool,), "context": (dict, None), "word_counts": (dict, None), "collator": (dict, None),
    "schedule": (dict, None), "training": (dict, None),
}


def _check_sections(card: Mapping[str, Any], card_file: Path) -> None:
    """Refuses a card whose sections have the wrong JSON type before anything reads them."""
    def fits(value: Any, kinds: tuple[type | None, ...]) -> bool:
        return any(value is None if kind is None else isinstance(value, kind) for kind in kinds)

    wrong = [f"{name} ({type(card[name]).__name__})" for name, kinds in CARD_SECTIONS.items()
             if name in card and not fits(card[name], kinds)]
    policy = card.get("policy")
    if isinstance(policy, dict) and "params" in policy and not isinstance(policy["params"], dict):
        wrong.append(f"policy.params ({type(policy['params']).__name__})")
    if wrong:
        raise ArtifactError(f"{card_file} has sections of the wrong type: {', '.join(wrong)}; the card is damaged or "
                            "was edited by hand: re-save the policy")


def load_policy(
    path: str | os.PathLike,
    rate: float | None = None,
    sampling: str | None = None,
    temperature: float | None = None,
    encoder: str | None = None,
    **params: Any,
) -> MaskingPolicy:
    """Rebuilds a saved policy of any family; ``rate``, ``sampling``, ``temperature`` and any other constructor
    parameter given (not None) override the saved ones.

    A policy that reads contextual states must find the encoder it was trained with: the card's encoder (an
    asset key, folder or model name), or ``encoder`` (another place holding the same weights); its weight files'
    SHA-256 must be the card's, else :class:`ArtifactError` says which is missing or differs."""
    path = Path(path)
    card = read_card(path)
    node, tensors = _v1_contents(path, card) if card["format_version"] == 1 else (card.get("policy") or {},
                                                                                   _read_tensors(path, card))
    _check_feature_schema(path, card)
    overrides = {key: value for key, value in {"rate": rate, "sampling": sampling, "temperature": temperature,
                                               **params}.items() if value is not None}
    policy = decode(node, tensors, overrides=overrides, where=str(path))
    _find_encoder(policy, path, encoder)
    source = {"path": str(path.resolve()), "training": card.get("training") or {}, "created": card.get("created")}
    with contextlib.suppress(AttributeError):  # a policy with __slots__ keeps no source
        policy.source = source
    return policy


def load_word_counts(path: str | os.PathLike, card: Mapping[str, Any]) -> dict[str, int] | None:
    """The word counts saved with a collator's policy, checked against the card; None when there are none."""
    entry = card.get("word_counts")
    if not entry:
        return None
    counts_file = _checked_file(Path(path), entry, "word counts")
    return {str(word): int(count) for word, count in json.loads(counts_file.read_text()).items()}


def _v1_contents(path: Path, card: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A version-1 card's policy node and tensors (a learned scorer's weights, named without a prefix)."""
    policy_card = card.get("policy") or {}
    if policy_card.get("class") not in V1_CLASSES:
        raise ArtifactError(f"{path}: unknown policy class {policy_card.get('class')!r}; known: "
                            f"{', '.join(V1_CLASSES)}")
    weights = _checked_file(path, card.get("weights") or {"file": WEIGHTS}, "weights")
    tensors = _safetensors(weights)
    return {"name": policy_card["class"], "params": dict(policy_card.get("params") or {})}, {
        f"scorer.{name}": tensor for name, tensor in tensors.items()}


def _read_tensors(path: Path, card: dict[str, Any]) -> dict[str, Tensor]:
    entry = card.get("tensors")
    return _safetensors(_checked_file(path, entry, "tensor")) if entry else {}


def _checked_file(path: Path, entry: Mapping[str, Any], what: str) -> Path:
    file = path / str(entry.get("file", WEIGHTS))
    if not file.is_file():
        raise ArtifactError(f"{path}: the {what} file {file.name} is missing")
    if file_sha256(file) != entry.get("sha256"):
        raise ArtifactError(
            f"{file} does not match the checksum in {CARD}: the file was modified or truncated after saving; "
            "re-save the policy or restore the original file"
        )
    return file


def _safetensors(file: Path) -> dict[str, Tensor]:
    try:
        return load_file(file)
    except (SafetensorError, OSError) as error:
        raise ArtifactError(f"{file} is not a readable safetensors file ({error})") from error


def entity_source(task: Task, corpus: Sequence[Document] | None = None) -> dict[str, Any]:
    """Where ``task``'s entity spans come from: ``{"kind": "tagger", "class": ..., "config": ...}`` for a task with
    a tagger, ``{"kind": "gold"}`` when its documents carry spans, ``{"kind": "none"}`` otherwise.

    ``corpus`` is the task's corpus when the caller already has it.
    """
    tagger = getattr(task, "tagger", None)
    if tagger is not None:
        return {"kind": "tagger", "class": type(tagger).__name__, "config": tagger_settings(tagger)}
    documents = task.corpus() if corpus is None else corpus
    return {"kind": "gold"} if any(document.entities for document in documents) else {"kind": "none"}


def tagger_settings(tagger: object) -> dict[str, Any]:
    """The tagger's public attributes that JSON can hold (its settings; a loaded model is left out)."""
    settings = {}
    for name, value in vars(tagger).items():
        if isinstance(value, set | frozenset | tuple):
            value = list(value) if isinstance(value, tuple) else sorted(value, key=repr)
        if not name.startswith("_") and _plain(value):
            settings[name] = value
    return settings


def _plain(value: Any) -> bool:
    """A JSON scalar, or a list of strings."""
    if isinstance(value, list):
        return all(isinstance(item, str) for item in value)
    return value is None or isinstance(value, bool | int | float | str)


def check_use(policy: object, task: Task, corpus: Sequence[Document]) -> list[str]:
    """Checks a loaded policy against the task it is about to mask for; returns the warnings it logged.

    Only a policy that reads the ``entity`` feature and came from an artifact (has a ``source``) is checked.
    Raises :class:`ArtifactError` when the task gives no entity spans at all; warns when its entity spans
    come from another source than the training task's (a card without one, from an older version, is not compared).
    """
    source = getattr(policy, "source", None)
    if not source or "entity" not in getattr(policy, "features", ()):
        return []
    used = entity_source(task, corpus)
    if used["kind"] == "none":
        raise ArtifactError(
            f"policy artifact {source.get('path')} reads the 'entity' feature, but task {task.name!r} gives no "
            "entity spans (no gold spans on its documents and no tagger): configure a tagger (e.g. "
            "tagger@task.tagger=rule) or retrain the policy without the 'entity' feature (policy.features)"
        )
    training = source.get("training") or {}
    trained = training.get("tagger")
    if trained is None or trained == used:
        return []
    trained_on = (training.get("task") or {}).get("name", "?")
    message = (
        f"policy artifact {source.get('path')} was trained on task {trained_on!r} with {_describe(trained)} but "
        f"is used on task {task.name!r} with {_describe(used)}: its 'entity' feature marks other spans here, so "
        "its masks may not match the quality on its card; retrain it with this entity source to be sure"
    )
    log.warning(message)
    return [message]


def _describe(source: dict[str, Any]) -> str:
    if source.get("kind") != "tagger":
        return {"gold": "gold entity spans", "none": "no entity spans"}.get(source.get("kind"), f"{source!r}")
    settings = ", ".join(f"{name}={value!r}" for name, value in (source.get("config") or {}).items())
    return f"entity spans from the tagger {source.get('class')}({settings})"


def _check_feature_schema(path: Path, card: dict[str, Any]) -> None:
    """The features the policy was trained on must still mean the same ids here."""
    for name, size in card.get("feature_sizes", {}).items():
        if FEATURE_SIZES.get(name) != size:
            now = "is not defined" if name not in FEATURE_SIZES else f"has size {FEATURE_SIZES[name]}"
            raise ArtifactError(
                f"{path} was trained with feature {name!r} of size {size}, but in this maskpolicy it {now}; "
                "the feature schema changed (maskpolicy.policies.features): re-train the policy"
            )


def _context_card(policy: MaskingPolicy) -> dict[str, Any] | None:
    """The encoder a policy's contextual states come from (name, weights SHA-256, layers, unit, dim), or None."""
    spec = context_spec(policy)
    return None if spec is None else spec.as_dict()


def _find_encoder(policy: MaskingPolicy, path: Path, encoder: str | None) -> None:
    """Points the policy's context at ``encoder`` (when given) and checks that encoder's weights are the card's."""
    for part in policy_parts(policy):
        spec = getattr(part, "context", None)
        if spec is None:
            continue
        if encoder is not None:
            part.context = spec = dataclasses.replace(spec, encoder=str(encoder))
        if spec.weights_sha256 is None:
            log.warning("%s: the policy reads contextual states of encoder %r but its card does not say which "
                        "weights it was trained with; it cannot be checked", path, spec.encoder)
            continue
        try:
            found = weights_sha256(encoder_location(spec.encoder))
        except TaskError as error:
            raise ArtifactError(
                f"{path}: the policy reads contextual states of encoder {spec.encoder!r} (weights sha256 "
                f"{spec.weights_sha256[:12]}…), which is not available here: {error}. Install it, or give "
                "load_policy(path, encoder=<folder with those weights>) (policy.encoder=… in a config)") from error
        if found != spec.weights_sha256:
            raise ArtifactError(
                f"{path}: the policy was trained on states of encoder {spec.encoder!r} with weights sha256 "
                f"{spec.weights_sha256[:12]}…, but {encoder_location(spec.encoder)} holds weights {found[:12]}…: "
                "another encoder's states mean other things to its scorer. Give the encoder it was trained with "
                "(load_policy(path, encoder=<folder>), policy.encoder=… in a config) or retrain the policy")
