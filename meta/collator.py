"""``MaskingCollator``: any maskpolicy policy as a Hugging Face data collator, for other people's training loops.

``collator(features) -> {"input_ids", "attention_mask", "labels"}`` (plus ``token_type_ids`` when given), the
contract of ``transformers.DataCollatorForLanguageModeling``: labels hold the original id where the policy
selected a token and -100 elsewhere; inputs are the project's 80/10/10 corruption (``mlm_corrupt``), or for a
seq2seq model its sentinel format (``sentinel_corrupt``: each masked span one sentinel; ``target="spans"``
or ``"full"``). The features are what a fast tokenizer gives (:mod:`maskpolicy.tasks.text.collation` lists
the keys); :meth:`MaskingCollator.tokenize` makes them.

The work splits in two halves a training loop may run apart: :meth:`~MaskingCollator.prepare` (CPU, in
DataLoader workers: padding, word and entity ids, word features) and :meth:`~MaskingCollator.mask` (selection
and corruption on whatever device the batch is on, with a generator on that device). Masks come from the
collator's own generators, one per process and device: in the main process seeded by ``seed``; in a
DataLoader worker by ``seed``, the worker id and (``reseed_each_epoch``, the default) the seed PyTorch gives
that worker, which the DataLoader draws from its own generator each epoch — so masks change every epoch and
repeat exactly when the DataLoader is seeded (``DataLoader(generator=torch.Generator().manual_seed(s))``, or
``transformers.set_seed``, which the Trainer calls). ``reseed_each_epoch=False`` ties them to ``seed`` and
the worker id only (workers that restart every epoch then repeat their masks: use ``persistent_workers``).

Why it lives in ``meta``: it loads and saves policy folders (:mod:`.learning.artifacts`) and builds
policies from config files (:mod:`.config`), and ``tasks`` may not import ``meta``.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import get_worker_info

from maskpolicy.meta.config import build_policy, policy_file
from maskpolicy.meta.context import CachedStates, default_cache_dir, source_for
from maskpolicy.meta.learning.artifacts import (
    check_tokenizer,
    load_policy,
    load_word_counts,
    read_card,
    save_policy,
    tagger_settings,
)
from maskpolicy.meta.learning.policy_state import context_spec, feature_names, policy_parts
from maskpolicy.meta.tables import fit_tables
from maskpolicy.policies import FitsCorpus, MaskingPolicy, PolicyError, available, build
from maskpolicy.tasks.data.tagging import RuleTagger, SpacyTagger
from maskpolicy.tasks.text.collation import (
    OFFSETS_FIX,
    TRAINER_FIX,
    WORD_IDS_FIX,
    FeatureError,
    collation_rows,
    pad_collation_rows,
)
from maskpolicy.tasks.text.encoding import encode_documents, token_batch
from maskpolicy.tasks.text.features import FeatureSpec, word_counts
from maskpolicy.tasks.training.pretraining import EncoderCorruption, Seq2SeqCorruption

log = logging.getLogger(__name__)
TAGGERS = {"RuleTagger": RuleTagger, "SpacyTagger": SpacyTagger}  # what a saved collator may name
COUNTED = ("frequency", "rarity")  # word features that read corpus word counts
DEFAULT_STATES_CACHE = str(default_cache_dir())


class CollatorError(FeatureError):
    """A collator was configured with, or handed, something its policy cannot mask."""


class MaskingCollator:
    """Masks batches of tokenized examples with any maskpolicy policy (``collator(features) -> dict``).

    Args:
        tokenizer: the Hugging Face tokenizer the examples were made with (a fast one for word-level inputs).
        policy: a registry name (``"span"``; ``params`` are its constructor arguments), a policy object, a
            config node (a mapping with ``_target_``, as ``best_policy.yaml``, or ``name`` and ``params``), or a
            path: a YAML/JSON policy config or a saved policy folder.
        kind: ``"masked_lm"`` (80/10/10, ``mask_fraction`` / ``random_fraction``) or ``"seq2seq"`` (sentinels,
            ``target="spans"`` or ``"full"``).
        tagger: finds entity spans in each example's ``text`` (e.g. ``RuleTagger()``) when the features carry none.
        seed: seeds the mask generators (see the module docstring for workers and epochs).
        max_seq_length: the truncation length of :meth:`tokenize` and :meth:`fit` (default: the tokenizer's, at
            most 512).
        word_counts: corpus word counts for a learned policy's ``frequency`` / ``rarity`` features (else
            :meth:`fit` counts them).
        states_cache: where a learned policy's contextual states (a frozen encoder's, see
            :mod:`maskpolicy.meta.context`) are cached by content hash; ``None`` keeps them in memory only.
            :meth:`fit` computes them for your texts ahead of time; :meth:`prepare` reads them (computing
            those it has not seen).
        policy_params: the policy's constructor arguments whose names are also the collator's own (a learned
            scorer's ``seed``), with a name or config.
        **params: the policy's other constructor arguments, with a name or config.
    """

    def __init__(
        self,
        tokenizer: Any,
        policy: str | os.PathLike | MaskingPolicy | Mapping[str, Any] = "random",
        *,
        kind: Literal["masked_lm", "seq2seq"] = "masked_lm",
        target: Literal["spans", "full"] = "spans",
        mask_fraction: float = 0.8,
        random_fraction: float = 0.1,
        tagger: Any = None,
        seed: int = 0,
        max_seq_length: int | None = None,
        reseed_each_epoch: bool = True,
        word_counts: Mapping[str, int] | None = None,
        states_cache: str | os.PathLike | None = DEFAULT_STATES_CACHE,
        policy_params: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> None:
        if kind not in ("masked_lm", "seq2seq"):
            raise CollatorError(f"kind must be 'masked_lm' or 'seq2seq', got {kind!r}")
        self.tokenizer, self.kind, self.target, self.tagger, self.seed = tokenizer, kind, target, tagger, int(seed)
        self.mask_fraction, self.random_fraction = float(mask_fraction), float(random_fraction)
        self.reseed_each_epoch = bool(reseed_each_epoch)
        self.max_seq_length = int(max_seq_length or min(getattr(tokenizer, "model_max_length", 512) or 512, 512))
        self.policy, self.schedule = _resolve_policy(policy, {**params, **(policy_params or {})})
        self.feature_names = feature_names(self.policy)
        self.word_counts = None if word_counts is None else dict(word_counts)
        self.states_cache = None if states_cache is None else str(states_cache)
        self._check_tokenizer()
        self._states()  # finds and checks the policy's encoder now, so a missing or other one fails here
        self.corruption = (Seq2SeqCorruption(tokenizer, target) if kind == "seq2seq"
                           else EncoderCorruption(tokenizer, self.mask_fraction, self.random_fraction))
        special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
        self._special_ids = torch.tensor(sorted(special), dtype=torch.long)
        self._generators: dict[tuple, torch.Generator] = {}

    # ------------------------------------------------------------------ building

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, tokenizer: Any, *, texts: Iterable[str] | None = None,
                        **overrides: Any) -> MaskingCollator:
        """A collator for a saved policy folder (``save_pretrained``, ``save_policy``, ``maskpolicy-learn``,
        ``maskpolicy-search``'s ``best_policy/``). Its saved collator settings are the defaults; ``overrides`` are
        collator arguments or policy parameters (``rate=0.3``). ``texts`` refits corpus tables on your corpus
        (needed when the tables were built with another tokenizer)."""
        card = read_card(path)
        own = set(inspect.signature(cls).parameters) - {"tokenizer", "policy", "params", "policy_params"}
        saved = dict(card.get("collator") or {})
        tagger = _saved_tagger(saved.pop("tagger", None) or _training_tagger(card), path)
        settings = {key: value for key, value in saved.items() if key in own}  # a newer release's extra keys: ignored
        policy_overrides = {key: value for key, value in overrides.items() if key not in own}
        policy_overrides.update(policy_overrides.pop("policy_params", None) or {})
        settings.update({key: value for key, value in overrides.items() if key in own})
        settings.setdefault("tagger", tagger)
        settings.setdefault("word_counts", load_word_counts(path, card))
        if texts is None:
            check_tokenizer(card, tokenizer, path)
        collator = cls(tokenizer, load_policy(path, **policy_overrides), **settings)
        return collator.fit(texts) if texts is not None else collator

    def fit(self, texts: Iterable[str]) -> MaskingCollator:
        """Builds what the policy reads from your corpus: pmi / informative tables (from ``texts`` tokenized by
        this collator's tokenizer, as the pre-training pipeline builds them) and, for a learned policy's
        ``frequency`` / ``rarity`` features, the word counts. Returns the collator."""
        texts = list(texts)
        if not texts:
            raise CollatorError("fit needs the texts of your corpus; got none")
        if any(isinstance(part, FitsCorpus) for part in policy_parts(self.policy)):
            rows = encode_documents(texts, [()] * len(texts), self.tokenizer, self.max_seq_length, "chunk")
            fit_tables(self.policy, rows, self.tokenizer.pad_token_id, cache_dir=None)
        if any(name in COUNTED for name in self.feature_names):
            self.word_counts = dict(word_counts(texts))
        states = self._states()
        if states is not None:  # each text encoded once now; prepare() then finds its states in the cache
            states.states(texts)
        return self

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Writes the policy folder (card, tensors) with this collator's settings and fitted word counts."""
        return save_policy(self.policy, path, tokenizer=self.tokenizer, collator=self.settings(),
                           word_counts=self.word_counts)

    def settings(self) -> dict[str, Any]:
        """The collator's own arguments as JSON (its tagger by class and settings)."""
        tagger = None if self.tagger is None else {"class": type(self.tagger).__name__,
                                                   "config": tagger_settings(self.tagger)}
        return {"kind": self.kind, "target": self.target, "mask_fraction": self.mask_fraction,
                "random_fraction": self.random_fraction, "seed": self.seed,
                "max_seq_length": self.max_seq_length,
                "reseed_each_epoch": self.reseed_each_epoch, "tagger": tagger}

    # ------------------------------------------------------------------ the contract

    def __call__(self, features: Sequence[Mapping[str, Any]] | Mapping[str, Sequence]) -> dict[str, Tensor]:
        """``features`` (a list of examples, or one dict of columns) → the model's inputs and labels."""
        return self.mask(self.prepare(features))

    def tokenize(self, texts: Sequence[str] | str, entity_spans: Sequence[Sequence[Sequence[int]]] | None = None
                 ) -> list[dict[str, Any]]:
        """Examples in the feature contract: ``input_ids``, ``special_tokens_mask`` and, from a fast tokenizer,
        ``word_ids``, ``offset_mapping`` and ``text`` (and ``entity_spans`` when given), truncated at
        ``max_seq_length``. Works as ``dataset.map(lambda b: collator.tokenize(b["text"]), batched=True)`` via
        :func:`columns`, or on a plain list."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        fast = bool(getattr(self.tokenizer, "is_fast", False))
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length,
                                 return_special_tokens_mask=True,
                                 return_offsets_mapping=fast)
        examples = []
        for i, text in enumerate(texts):
            example = {"input_ids": encoded["input_ids"][i], "special_tokens_mask": encoded["special_tokens_mask"][i],
                       "text": text}
            if fast:
                example["word_ids"] = encoded.word_ids(i)
                example["offset_mapping"] = [list(pair) for pair in encoded["offset_mapping"][i]]
            if entity_spans is not None:
                example["entity_spans"] = [list(span) for span in entity_spans[i]]
            examples.append(example)
        return examples

    def prepare(self, features: Sequence[Mapping[str, Any]] | Mapping[str, Sequence]) -> dict[str, Tensor]:
        """The unmasked, padded batch (CPU; tensors only, so ``.to(device)`` moves it): ``input_ids``,
        ``attention_mask``, ``maskable`` and, as the features allow, ``word_ids``, ``entity_ids``, ``features``,
        ``token_type_ids``."""
        if isinstance(features, Mapping):
            features = [dict(zip(features, values, strict=True)) for values in zip(*features.values(), strict=True)]
        spec = None
        if self.feature_names:
            if any(name in COUNTED for name in self.feature_names) and self.word_counts is None:
                raise CollatorError(
                    f"the learned policy reads the {'/'.join(n for n in COUNTED if n in self.feature_names)} "
                    "feature, which counts words of your corpus: call collator.fit(texts) first (or pass "
                    "word_counts=)")
            spec = FeatureSpec(self.feature_names, self.word_counts)
        rows = collation_rows(features, self._special_ids, tagger=self.tagger, spec=spec,
                              total=sum(self.word_counts.values()) if self.word_counts else None,
                              needs_entities="entity" in self.feature_names, slow_tokenizer=self._slow_name(),
                              context=self._states())
        batch = pad_collation_rows(rows, self.tokenizer.pad_token_id)
        batch.pop("feature_names", None)
        return batch

    def select(self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """``Bool[B, L]``: the positions the policy masks in a prepared batch (on its device)."""
        view = token_batch({**batch, "feature_names": self.feature_names if "features" in batch else ()})
        generator = generator or self._generator(view.input_ids.device)
        try:
            return self.policy.select(view, generator)
        except PolicyError as error:
            hints = self._missing_inputs(view)
            if not hints:
                raise
            raise CollatorError(f"{error}. {' '.join(hints)}") from error

    def mask(self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Selection + corruption of a prepared batch wherever it is (e.g. already on the GPU): the model's
        inputs and labels. ``generator`` defaults to the collator's own for the batch's device."""
        generator = generator or self._generator(batch["input_ids"].device)
        selection = self.select(batch, generator)
        inputs = self.corruption(batch, selection, generator)
        if self.kind == "masked_lm" and "token_type_ids" in batch:
            inputs["token_type_ids"] = batch["token_type_ids"]
        return inputs

    # ------------------------------------------------------------------ internals

    def _states(self) -> CachedStates | None:
        """The policy's contextual states (one encoder per process, shared by the collators in it), or None."""
        spec = context_spec(self.policy)
        return None if spec is None else source_for(spec, self.states_cache)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its generators: each process (a DataLoader worker) seeds its own."""
        return {**self.__dict__, "_generators": {}}

    def _generator(self, device: torch.device) -> torch.Generator:
        info = get_worker_info()
        worker = ("main",) if info is None else ("worker", info.id, info.seed if self.reseed_each_epoch else None)
        key = (str(device), *worker)
        if key not in self._generators:
            digest = hashlib.sha256(repr((self.seed, *key)).encode()).digest()
            generator = torch.Generator(device=device)
            generator.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
            self._generators[key] = generator
        return self._generators[key]

    def _slow_name(self) -> str | None:
        if getattr(self.tokenizer, "is_fast", False):
            return None
        return str(getattr(self.tokenizer, "name_or_path", "") or type(self.tokenizer).__name__)

    def _missing_inputs(self, view) -> list[str]:
        hints = []
        slow = self._slow_name()
        slow_hint = "" if slow is None else (f" Tokenizer {slow!r} is a slow one, which gives neither word ids nor "
                                             "offsets: load a fast one (AutoTokenizer.from_pretrained(name, "
                                             "use_fast=True)).")
        if view.word_ids is None:
            hints.append(f"The features carry no 'word_ids': {WORD_IDS_FIX}.{slow_hint}")
        if view.entity_ids is None:
            hints.append(f"The features carry no entity spans: add 'entity_spans' (character [start, end) pairs) with "
                         f"'offset_mapping' ({OFFSETS_FIX}), or 'entity_ids', or give the collator a tagger "
                         "(tagger=RuleTagger()) and keep 'text'.")
        if hints:
            hints.append(f"And {TRAINER_FIX}.")
        return hints

    def _check_tokenizer(self) -> None:
        name = str(getattr(self.tokenizer, "name_or_path", "") or type(self.tokenizer).__name__)
        if self.tokenizer.pad_token_id is None:
            raise CollatorError(f"tokenizer {name!r} has no padding token; add one: "
                                "tokenizer.add_special_tokens({'pad_token': '[PAD]'})")
        if self.kind == "masked_lm" and self.tokenizer.mask_token_id is None:
            raise CollatorError(f"tokenizer {name!r} has no mask token, which 80/10/10 masking writes; add one "
                                "(tokenizer.add_special_tokens({'mask_token': '[MASK]'})) or use kind='seq2seq'")
        sentinels = [t for t in self.tokenizer.all_special_tokens if t.startswith("<extra_id_")]
        if self.kind == "seq2seq" and not sentinels and self.tokenizer.mask_token_id is None:
            raise CollatorError(f"tokenizer {name!r} has neither sentinel tokens (<extra_id_0>, …) nor a mask token "
                                "to stand for masked spans; add one (tokenizer.add_special_tokens({'mask_token': "
                                "'<mask>'}))")
        needs = [what for what, needed in (
            (f"the learned policy's word features ({', '.join(self.feature_names)})", bool(self.feature_names)),
            ("the tagger's entity spans", self.tagger is not None),
            ("the learned policy's contextual states", context_spec(self.policy) is not None),
            ("corpus tables (pmi, informative), which read words",
             any(isinstance(part, FitsCorpus) for part in policy_parts(self.policy)))) if needed]
        if not needs:
            return
        if self._slow_name() is not None:
            raise CollatorError(
                f"{'; '.join(needs)} need character offsets and word ids, which only a fast tokenizer gives, and "
                f"tokenizer {name!r} is a slow one: load a fast one (AutoTokenizer.from_pretrained(name, "
                "use_fast=True), a PreTrainedTokenizerFast)")
        probe = "alpha beta, gamma"
        encoded = self.tokenizer(probe, return_offsets_mapping=True, add_special_tokens=False)
        words = {w for w in encoded.word_ids() if w is not None}
        if len(words) < 3:
            raise CollatorError(
                f"tokenizer {name!r} cannot produce {needs[0]}: it splits {probe!r} into {len(words)} word(s), so "
                "its word ids do not mark words; use a tokenizer with a pre-tokenizer that splits on spaces and "
                "punctuation (WordPiece, byte-level BPE, Metaspace)")


def columns(examples: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """A list of examples as one dict of columns (what ``datasets.Dataset.map(..., batched=True)`` returns)."""
    keys = list(examples[0]) if examples else []
    return {key: [example[key] for example in examples] for key in keys}


def _resolve_policy(policy: Any, params: dict[str, Any]) -> tuple[MaskingPolicy, Any]:
    """The policy (and its rate schedule, if its config has one) from any of the accepted forms."""
    if isinstance(policy, str) and policy in available():
        return build(policy, **params), None
    if isinstance(policy, MaskingPolicy) and not isinstance(policy, str | os.PathLike):
        if params:
            raise CollatorError(f"policy parameters {sorted(params)} go with a policy name, not a policy object")
        return policy, None
    if isinstance(policy, str | os.PathLike):
        path = Path(policy).expanduser()
        if path.is_dir():
            return load_policy(path, **params), None
        if not path.is_file():
            raise CollatorError(f"policy {str(policy)!r} is neither a registered name ({', '.join(available())}) nor "
                                "a policy config file or saved policy folder")
        node = policy_file(path)
    else:
        node = dict(policy)
    if not isinstance(node, dict):
        raise CollatorError(f"a policy config must be a mapping, got {type(node).__name__}")
    if "_target_" not in node:
        if "name" not in node:
            raise CollatorError("a policy config needs _target_ (as best_policy.yaml has) or name and params")
        return build(node["name"], **{**(node.get("params") or {}), **params}), None
    built, schedule = build_policy({**node, **params})
    if schedule is not None:
        log.warning("the policy's rate schedule (%s) is not followed by the collator, which masks at the base rate; "
                    "set it yourself with maskpolicy.policies.set_rate(collator.policy, rate)", schedule.kind)
    return built, schedule


def _saved_tagger(saved: Mapping[str, Any] | None, path: Any) -> Any:
    if not saved:
        return None
    factory = TAGGERS.get(saved.get("class"))
    if factory is None:
        log.warning("%s: the saved collator used tagger %s, which cannot be rebuilt from a file; pass tagger=",
                    path, saved.get("class"))
        return None
    return factory(**(saved.get("config") or {}))


def _training_tagger(card: Mapping[str, Any]) -> dict[str, Any] | None:
    """The tagger a learned policy was trained with (its card's entity source), as a saved collator names one."""
    source = (card.get("training") or {}).get("tagger") or {}
    return {"class": source.get("class"), "config": source.get("config")} if source.get("kind") == "tagger" else None
