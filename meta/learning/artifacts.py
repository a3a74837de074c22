"""Saved learned policies: a directory with safetensors weights and a JSON card.

``policy.safetensors`` holds the scorer's tensors; ``card.json`` says what they are:
format version, policy class and parameters, feature set, how and on which task the
policy was trained and how it scored, package versions, and the weights' SHA-256. Loading
reads JSON and safetensors only (never a pickle), checks the checksum and every
tensor's name and shape, and says clearly what is wrong with a bad artifact.

Before a loaded policy masks for a task, :func:`check_use` compares the task's entity spans
with those the policy was trained on: a different source is a warning, none at all (for a
policy that reads the ``entity`` feature) an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from maskpolicy.meta.results.files import staged_directory, write_json
from maskpolicy.meta.results.schema import versions
from maskpolicy.policies import FEATURE_SIZES, LearnedPolicy, PolicyError, TokenScorer
from maskpolicy.tasks.base import Document, Task

log = logging.getLogger(__name__)

FORMAT = "maskpolicy-policy"
FORMAT_VERSION = 1
CARD, WEIGHTS = "card.json", "policy.safetensors"
POLICY_CLASSES = {"learned": LearnedPolicy}


class ArtifactError(PolicyError):
    """A policy artifact is missing, damaged, tampered with, or from an incompatible version."""


def policy_params(policy: LearnedPolicy) -> dict[str, Any]:
    """The constructor arguments that rebuild ``policy`` around its weights."""
    encoder = policy.scorer.encoder
    return {"rate": policy.rate, "features": list(policy.features), "embedding_dim": encoder.input_size,
            "hidden_size": encoder.hidden_size, "sampling": policy.sampling, "temperature": policy.temperature}


def save_policy(policy: LearnedPolicy, path: str | os.PathLike, training: dict[str, Any]) -> Path:
    """Writes the artifact directory whole (a reader sees the old one or the new one, never a mix).

    ``training`` describes its origin: method, task, evaluation, seed, …
    """
    with staged_directory(path) as staging:
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in policy.scorer.state_dict().items()}
        save_file(tensors, staging / WEIGHTS)
        write_json(staging / CARD, _card(policy, _sha256(staging / WEIGHTS), training))
    return Path(path)


def _card(policy: LearnedPolicy, sha256: str, training: dict[str, Any]) -> dict[str, Any]:
    """What the weights are: format, policy class and parameters, feature schema, origin, versions."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "policy": {"class": "learned", "params": policy_params(policy)},
        "feature_sizes": {name: FEATURE_SIZES[name] for name in policy.features},
        "weights": {"file": WEIGHTS, "sha256": sha256},
        "training": training,
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """The artifact's card, checked for format and version."""
    path = Path(path)
    card_file = path / CARD
    if not card_file.is_file():
        raise ArtifactError(
            f"no policy artifact at {path}: expected {CARD} and {WEIGHTS} (written by maskpolicy-learn); "
            "check policy.path"
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
            "Upgrade maskpolicy to load newer artifacts"
        )
    return card


def load_policy(
    path: str | os.PathLike,
    rate: float | None = None,
    sampling: str | None = None,
    temperature: float | None = None,
) -> LearnedPolicy:
    """Rebuilds a saved policy; ``rate``, ``sampling`` and ``temperature`` override the saved ones."""
    path = Path(path)
    card = read_card(path)
    policy_card = card.get("policy", {})
    if policy_card.get("class") not in POLICY_CLASSES:
        raise ArtifactError(f"{path}: unknown policy class {policy_card.get('class')!r}; known: "
                            f"{', '.join(POLICY_CLASSES)}")
    params = dict(policy_card.get("params", {}))
    _check_feature_schema(path, card)
    overrides = {"rate": rate, "sampling": sampling, "temperature": temperature}
    params.update({key: value for key, value in overrides.items() if value is not None})
    scorer = TokenScorer(params["features"], params["embedding_dim"], params["hidden_size"])
    scorer.load_state_dict(_read_weights(path, card, scorer))
    scorer.eval()
    policy = POLICY_CLASSES[policy_card["class"]](**params, scorer=scorer)
    policy.source = {"path": str(path.resolve()), "training": card.get("training", {}), "created": card.get("created")}
    return policy


def entity_source(task: Task, corpus: Sequence[Document] | None = None) -> dict[str, Any]:
    """Where ``task``'s entity spans come from: ``{"kind": "tagger", "class": ..., "config": ...}`` for a task with
    a tagger, ``{"kind": "gold"}`` when its documents carry spans, ``{"kind": "none"}`` otherwise.

    ``corpus`` is the task's corpus when the caller already has it.
    """
    tagger = getattr(task, "tagger", None)
    if tagger is not None:
        return {"kind": "tagger", "class": type(tagger).__name__, "config": _settings(tagger)}
    documents = task.corpus() if corpus is None else corpus
    return {"kind": "gold"} if any(document.entities for document in documents) else {"kind": "none"}


def _settings(tagger: object) -> dict[str, Any]:
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


def _read_weights(path: Path, card: dict[str, Any], scorer: TokenScorer) -> dict:
    weights = path / card.get("weights", {}).get("file", WEIGHTS)
    if not weights.is_file():
        raise ArtifactError(f"{path}: the weights file {weights.name} is missing")
    if _sha256(weights) != card.get("weights", {}).get("sha256"):
        raise ArtifactError(
            f"{weights} does not match the checksum in {CARD}: the file was modified or truncated after saving; "
            "re-save the policy or restore the original file"
        )
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError) as error:
        raise ArtifactError(f"{weights} is not a readable safetensors file ({error})") from error
    expected = {name: tuple(t.shape) for name, t in scorer.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if expected != found:
        wrong = sorted(set(expected) ^ set(found)) or sorted(n for n in expected if expected[n] != found[n])
        raise ArtifactError(f"{weights} does not fit the card's policy parameters (mismatched tensors: {wrong})")
    return tensors


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
