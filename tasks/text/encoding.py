"""From documents to token batches: tokenisation with word and entity ids, padding.

Encoding happens once, before training; a batch is then a cheap pad-and-stack.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from transformers import BatchEncoding, PreTrainedTokenizerBase

from maskpolicy.policies import TokenBatch
from maskpolicy.tasks.base import CharSpan, TaskError
from maskpolicy.tasks.text.context import StateSource, as_tensor, pool_states
from maskpolicy.tasks.text.features import FeatureSpec, document_features, word_counts

Overflow = Literal["chunk", "truncate", "error"]
Row = dict[str, Tensor]


def token_entity_ids(offsets: np.ndarray, spans: Sequence[CharSpan], special: np.ndarray) -> np.ndarray:
    """Index of the entity span each token overlaps, ``-1`` if none.

    Args: offsets ``[T, 2]`` token character offsets; spans sorted, non-overlapping
    ``[start, end)``; special ``Bool[T]``.
    """
    if not spans:
        return np.full(len(offsets), -1, dtype=np.int64)
    starts, ends = np.asarray(spans, dtype=np.int64).T
    candidate = np.searchsorted(ends, offsets[:, 0], side="right")
    inside = candidate < len(spans)
    overlaps = inside & (starts[np.minimum(candidate, len(spans) - 1)] < offsets[:, 1]) & ~special
    return np.where(overlaps, candidate, -1)


def encode_documents(
    texts: Sequence[str],
    entity_spans: Sequence[Sequence[CharSpan]],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    overflow: Overflow = "chunk",
    *,
    features: FeatureSpec | None = None,
) -> list[Row]:
    """Tokenises documents into rows of at most ``max_length`` tokens.

    ``overflow`` decides what happens to longer documents: ``"chunk"`` splits them
    into consecutive windows (nothing is lost), ``"truncate"`` keeps the first
    window, ``"error"`` refuses. Each row holds ``input_ids``, ``special`` (bool),
    ``word_ids`` and ``entity_ids`` (``-1`` where none). With ``features``, rows also
    hold ``features`` ``Long[T, F]`` (see :mod:`.features`; computed over the whole
    document, so a window's words keep their sentence positions) and
    ``feature_names``, the tuple naming its ``F`` channels; when ``features.context`` is set, also ``states``
    ``Float16[T, D]``, the encoder's states pooled to these tokens (:mod:`.context`).
    """
    if not texts:
        raise TaskError("the pre-training corpus is empty; check the task's data path and size settings")
    encoded = tokenizer(
        list(texts),
        max_length=max_length,
        truncation=True,
        return_overflowing_tokens=overflow != "truncate",
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    sources = list(encoded.get("overflow_to_sample_mapping", range(len(texts))))
    if overflow == "error" and len(sources) > len(texts):
        longest = max(len(tokenizer(t)["input_ids"]) for t in texts)
        raise TaskError(
            f"a document has {longest} tokens but model.max_length is {max_length}; set "
            "model.overflow=chunk (split into windows) or model.overflow=truncate"
        )
    windows = [_window(encoded, i, entity_spans[source]) for i, source in enumerate(sources)]
    rows = [
        {"input_ids": torch.tensor(encoded["input_ids"][i]), "special": torch.from_numpy(window["special"]),
         "word_ids": torch.from_numpy(window["word_ids"]), "entity_ids": torch.from_numpy(window["entity_ids"])}
        for i, window in enumerate(windows)
    ]
    if features is not None:
        for row, matrix in zip(rows, _window_features(texts, sources, windows, features), strict=True):
            row["features"], row["feature_names"] = torch.from_numpy(matrix), features.names
        if features.context is not None:
            for row, states in zip(rows, _window_states(texts, sources, windows, features.context), strict=True):
                row["states"] = as_tensor(states)
    return rows


def _window(encoded: BatchEncoding, i: int, spans: Sequence[CharSpan]) -> dict[str, np.ndarray]:
    """One encoded window as ``[T]`` arrays ``special``, ``word_ids``, ``entity_ids`` and ``offsets`` ``[T, 2]``."""
    special = np.asarray(encoded["special_tokens_mask"][i], dtype=bool)
    offsets = np.asarray(encoded["offset_mapping"][i], dtype=np.int64).reshape(-1, 2)
    words = np.asarray([-1 if w is None else w for w in encoded.word_ids(i)], dtype=np.int64)
    return {"special": special, "offsets": offsets, "word_ids": words,
            "entity_ids": token_entity_ids(offsets, spans, special)}


def _window_features(
    texts: Sequence[str], sources: Sequence[int], windows: Sequence[dict[str, np.ndarray]], spec: FeatureSpec
) -> list[np.ndarray]:
    """``Long[T, F]`` features per window, each document's windows computed together."""
    counts = spec.counts
    if counts is None and ("frequency" in spec.names or "rarity" in spec.names):
        counts = word_counts(texts)
    total = sum(counts.values()) if counts is not None else 0
    matrices: list[np.ndarray] = []
    for source, group in itertools.groupby(range(len(windows)), key=sources.__getitem__):
        parts = [windows[i] for i in group]
        joined = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        matrix = document_features(texts[source], joined["offsets"], joined["word_ids"], joined["entity_ids"],
                                   joined["special"], spec, counts, total)
        matrices += np.split(matrix, np.cumsum([len(part["word_ids"]) for part in parts])[:-1])
    return matrices


def _window_states(texts: Sequence[str], sources: Sequence[int], windows: Sequence[dict[str, np.ndarray]],
                   source: StateSource) -> list[np.ndarray]:
    """``Float16[T, D]`` contextual states per window: each document encoded once, whole, then pooled."""
    used = sorted(set(sources))
    documents = dict(zip(used, source.states([texts[i] for i in used]), strict=True))
    pooled = []
    for window, doc in zip(windows, sources, strict=True):
        content = ~window["special"] & (window["offsets"][:, 1] > window["offsets"][:, 0])
        pooled.append(pool_states(documents[doc], window["offsets"], content, window["word_ids"], source.unit))
    return pooled


def pad_rows(rows: Sequence[dict], pad_token_id: int) -> dict:
    """Pads rows to a batch: each tensor field ``[B, L]`` (``features`` ``[B, L, F]``, padded
    with 0), plus ``attention_mask`` and, when rows carry ``special``, ``maskable``.
    ``feature_names``, which every row shares, stays one tuple; other non-tensor fields become lists."""
    fill = {"input_ids": pad_token_id, "special": True, "word_ids": -1, "entity_ids": -1, "labels": -100,
            "features": 0, "states": 0.0}
    names = _shared_feature_names([row["feature_names"] for row in rows]) if "feature_names" in rows[0] else None
    batch = {
        key: torch.nn.utils.rnn.pad_sequence([row[key] for row in rows], batch_first=True, padding_value=fill[key])
        if isinstance(rows[0][key], Tensor)
        else [row[key] for row in rows]
        for key in rows[0]
    }
    if names is not None:
        batch["feature_names"] = names
    lengths = torch.tensor([len(row["input_ids"]) for row in rows])
    batch["attention_mask"] = (torch.arange(batch["input_ids"].shape[1]) < lengths[:, None]).long()
    if "special" in batch:
        batch["maskable"] = ~batch.pop("special") & batch["attention_mask"].bool()
    return batch


def _shared_feature_names(per_row: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """The one feature-name tuple of a batch's rows; rows encoded with different features cannot share a batch."""
    names = {tuple(row_names) for row_names in per_row}
    if len(names) != 1:
        raise TaskError(f"rows of one batch carry different feature names {sorted(names)}; encode them with "
                        "one FeatureSpec")
    return names.pop()


def token_batch(batch: dict) -> TokenBatch:
    """The view of a padded batch that a masking policy sees, features included when the rows carry them."""
    return TokenBatch(batch["input_ids"], batch["maskable"], batch.get("word_ids"), batch.get("entity_ids"),
                      batch.get("features"), tuple(batch.get("feature_names", ())), batch.get("states"))
