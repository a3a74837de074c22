"""Contextual states for the policies that read them: one frozen encoder per process, states cached by content hash.

A learned policy with a ``context`` (:class:`~maskpolicy.policies.context.ContextSpec`) reads a frozen
encoder's states. :func:`state_source` finds that encoder (loaded once per process), checks it is the one the
policy was trained with (the SHA-256 of its weight files) and puts a :class:`CachedStates` in front of it:
each document's states are kept in memory and, with a cache folder, as one safetensors file named by a SHA-256
of the encoder's weights, its settings and the document's text, so a second run (another seed, a search trial,
a collator's next epoch) reads them instead of running the encoder. Give the source to encoding as
``FeatureSpec(context=...)``; rows then carry ``states``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from maskpolicy.meta.learning.policy_state import context_spec, policy_parts
from maskpolicy.meta.results.files import write_atomic
from maskpolicy.policies import MaskingPolicy, PolicyError
from maskpolicy.policies.context import ContextSpec
from maskpolicy.tasks.base import TaskError
from maskpolicy.tasks.text.context import DocumentStates, FrozenEncoder

log = logging.getLogger(__name__)
STATES_VERSION = 1  # bump when the states of a document change meaning (pooling, windows), so old files are not read
MEMORY_DOCUMENTS = 4096  # documents kept in memory per source


def default_cache_dir() -> Path:
    """``$MASKPOLICY_CACHE/states`` (``~/.cache/maskpolicy/states`` by default), as the configs' ``states_cache``."""
    return Path(os.environ.get("MASKPOLICY_CACHE", "~/.cache/maskpolicy")).expanduser() / "states"


class ContextError(PolicyError):
    """A policy's contextual states cannot be had: its encoder is missing, differs, or does not fit."""


@dataclasses.dataclass
class CacheStats:
    """What a source did: documents served from memory, from disk, computed by the encoder, and the seconds spent."""

    memory: int = 0
    disk: int = 0
    computed: int = 0
    encode_seconds: float = 0.0
    tokens: int = 0  # encoder tokens of the computed documents

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class CachedStates:
    """A :class:`~maskpolicy.tasks.text.context.StateSource` with a memory and (``cache_dir``) disk cache."""

    def __init__(self, encoder: FrozenEncoder, cache_dir: str | os.PathLike | None = None) -> None:
        self.encoder = encoder
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        self.dim, self.unit = encoder.dim, encoder.unit
        self.stats = CacheStats()
        self._memory: OrderedDict[str, DocumentStates] = OrderedDict()
        self._salt = json.dumps({"version": STATES_VERSION, "weights": encoder.weights_sha256, "layers":
                                 list(encoder.layers), "window": encoder.max_length, "stride": encoder.stride})

    @property
    def weights_sha256(self) -> str:
        return self.encoder.weights_sha256

    def key(self, text: str) -> str:
        """The cache key of one document: SHA-256 of the encoder's weights and settings and the text."""
        return hashlib.sha256(f"{self._salt}\0{text}".encode()).hexdigest()

    def states(self, texts: Sequence[str]) -> list[DocumentStates]:
        keys = [self.key(text) for text in texts]
        found: dict[str, DocumentStates] = {}
        for key in dict.fromkeys(keys):
            if key in self._memory:
                self._memory.move_to_end(key)
                found[key] = self._memory[key]
                self.stats.memory += 1
            elif (states := self._read(key)) is not None:
                found[key] = states
                self.stats.disk += 1
        missing = {key: text for key, text in zip(keys, texts, strict=True) if key not in found}
        if missing:
            started = time.perf_counter()
            computed = self.encoder.states(list(missing.values()))
            self.stats.encode_seconds += time.perf_counter() - started
            self.stats.computed += len(computed)
            self.stats.tokens += sum(len(states.offsets) for states in computed)
            for key, states in zip(missing, computed, strict=True):
                found[key] = states
                self._write(key, states)
        for key, states in found.items():
            self._remember(key, states)
        return [found[key] for key in keys]

    def _remember(self, key: str, states: DocumentStates) -> None:
        self._memory[key] = states
        self._memory.move_to_end(key)
        while len(self._memory) > MEMORY_DOCUMENTS:
            self._memory.popitem(last=False)

    def _path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / key[:2] / f"{key}.safetensors"

    def _read(self, key: str) -> DocumentStates | None:
        path = self._path(key)
        if path is None or not path.exists():
            return None
        try:
            tensors = safetensors.numpy.load_file(path)
            states = DocumentStates(tensors["offsets"], tensors["states"])
        except Exception as error:  # noqa: BLE001 - an unreadable cache file is rebuilt, whatever broke it
            log.warning("contextual-state cache file %s is unreadable (%s); computing it again", path, error)
            return None
        if states.states.shape != (len(states.offsets), self.dim):
            log.warning("contextual-state cache file %s has shape %s, not (tokens, %d); computing it again", path,
                        states.states.shape, self.dim)
            return None
        return states

    def _write(self, key: str, states: DocumentStates) -> None:
        path = self._path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = safetensors.numpy.save({"offsets": np.ascontiguousarray(states.offsets),
                                          "states": np.ascontiguousarray(states.states)})
        write_atomic(path, lambda handle: handle.write(payload), binary=True)


@lru_cache(maxsize=4)
def frozen_encoder(name: str, layers: tuple[int, ...], unit: str) -> FrozenEncoder:
    """The encoder ``name`` at ``layers``, loaded once per process."""
    return FrozenEncoder(name, layers, unit)


_SOURCES: dict[tuple, CachedStates] = {}  # every source of this process, for source_stats()


@lru_cache(maxsize=16)
def _sources(name: str, layers: tuple[int, ...], unit: str, cache_dir: str | None) -> CachedStates:
    source = CachedStates(frozen_encoder(name, layers, unit), cache_dir)
    _SOURCES[(name, layers, unit, cache_dir)] = source
    return source


def source_stats() -> list[dict[str, Any]]:
    """What every contextual-state source of this process did: encoder, layers, cache folder, documents served
    from memory / disk / computed, encoder seconds and seconds per 1,000 encoder tokens computed."""
    out = []
    for (name, layers, unit, cache_dir), source in _SOURCES.items():
        stats = source.stats
        per_1000 = 1000 * stats.encode_seconds / stats.tokens if stats.tokens else None
        out.append({"encoder": name, "layers": list(layers), "unit": unit, "cache_dir": cache_dir,
                    **stats.as_dict(), "encode_seconds": round(stats.encode_seconds, 2),
                    "seconds_per_1000_tokens": None if per_1000 is None else round(per_1000, 3)})
    return out


def source_for(spec: ContextSpec, cache_dir: str | os.PathLike | None = None) -> CachedStates:
    """The cached states ``spec`` describes (one source per encoder, settings and cache folder in a process), its
    dimension checked against ``spec.dim`` and its weights against ``spec.weights_sha256``."""
    try:
        source = _sources(spec.encoder, tuple(spec.layers), spec.unit,
                          None if cache_dir is None else str(Path(cache_dir).expanduser()))
    except TaskError as error:  # AssetMissing included: the encoder cannot be loaded
        raise ContextError(f"the learned policy reads contextual states of encoder {spec.encoder!r}, which cannot "
                           f"be loaded: {error}") from error
    if source.dim != spec.dim:
        raise ContextError(f"encoder {spec.encoder!r} gives {source.dim} channels per token at layers "
                           f"{list(spec.layers)}, but policy.context.dim is {spec.dim}; set policy.context.dim="
                           f"{source.dim}")
    if spec.weights_sha256 is not None and spec.weights_sha256 != source.weights_sha256:
        raise ContextError(
            f"the learned policy was trained on states of encoder {spec.encoder!r} with weights sha256 "
            f"{spec.weights_sha256[:12]}…, but the encoder found at {source.encoder.location} has weights "
            f"{source.weights_sha256[:12]}…: its states mean other things to the scorer. Point policy.context.encoder "
            "at the encoder it was trained with, or retrain the policy with this one")
    return source


def state_source(policy: MaskingPolicy, cache_dir: str | os.PathLike | None = None) -> CachedStates | None:
    """The cached states of the first part of ``policy`` that reads them; None for a policy that reads none."""
    spec = context_spec(policy)
    return None if spec is None else source_for(spec, cache_dir)


RUN_MODEL = "model"  # context.encoder naming the run's own model (model.pretrained) rather than a fixed encoder


def resolve_run_model(policy: MaskingPolicy, pretrained: str | os.PathLike | None) -> None:
    """A context whose encoder is ``model`` reads the run's own pre-trained model: points it at ``pretrained``
    (the run's ``model.pretrained``), so the card records that folder and its weights."""
    for part in _context_parts(policy):
        if part.context.encoder != RUN_MODEL:
            continue
        if not pretrained:
            raise ContextError("policy.context.encoder=model reads the run's own pre-trained model, but this run's "
                               "model.pretrained is null (a model built from scratch has no states to give before it "
                               "is trained); set model.pretrained, or name an encoder (minilm, a folder)")
        part.context = dataclasses.replace(part.context, encoder=str(pretrained))


def bind_encoder(policy: MaskingPolicy, source: CachedStates) -> None:
    """Records on a policy about to be trained which encoder's weights its states come from (its card keeps it)."""
    for part in _context_parts(policy):
        part.context = dataclasses.replace(part.context, weights_sha256=source.weights_sha256)


def _context_parts(policy: MaskingPolicy) -> list[Any]:
    return [part for part in policy_parts(policy) if getattr(part, "context", None) is not None]
