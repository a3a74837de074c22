"""From documents to token batches: tokenisation with word and entity ids, padding.

Encoding happens once, before training; a batch is then a cheap pad-and-stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from maskpolicy.policies import TokenBatch

from .base import CharSpan, TaskError

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
) -> list[Row]:
    """Tokenises documents into rows of at most ``max_length`` tokens.

    ``overflow`` decides what happens to longer documents: ``"chunk"`` splits them
    into consecutive windows (nothing is lost), ``"truncate"`` keeps the first
    window, ``"error"`` refuses. Each row holds ``input_ids``, ``special`` (bool),
    ``word_ids`` and ``entity_ids`` (``-1`` where none).
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
    sources = encoded.get("overflow_to_sample_mapping", list(range(len(texts))))
    if overflow == "error" and len(sources) > len(texts):
        longest = max(len(tokenizer(t)["input_ids"]) for t in texts)
        raise TaskError(
            f"a document has {longest} tokens but model.max_length is {max_length}; set "
            "model.overflow=chunk (split into windows) or model.overflow=truncate"
        )
    rows = []
    for i, source in enumerate(sources):
        special = np.asarray(encoded["special_tokens_mask"][i], dtype=bool)
        offsets = np.asarray(encoded["offset_mapping"][i], dtype=np.int64).reshape(-1, 2)
        words = np.asarray([-1 if w is None else w for w in encoded.word_ids(i)], dtype=np.int64)
        rows.append({
            "input_ids": torch.tensor(encoded["input_ids"][i]),
            "special": torch.from_numpy(special),
            "word_ids": torch.from_numpy(words),
            "entity_ids": torch.from_numpy(token_entity_ids(offsets, entity_spans[source], special)),
        })
    return rows


def pad_rows(rows: Sequence[dict], pad_token_id: int) -> dict:
    """Pads rows to a batch: each tensor field ``[B, L]``, plus ``attention_mask`` and,
    when rows carry ``special``, ``maskable``. Non-tensor fields become lists."""
    fill = {"input_ids": pad_token_id, "special": True, "word_ids": -1, "entity_ids": -1, "labels": -100}
    batch = {
        key: torch.nn.utils.rnn.pad_sequence([row[key] for row in rows], batch_first=True, padding_value=fill[key])
        if isinstance(rows[0][key], Tensor)
        else [row[key] for row in rows]
        for key in rows[0]
    }
    lengths = torch.tensor([len(row["input_ids"]) for row in rows])
    batch["attention_mask"] = (torch.arange(batch["input_ids"].shape[1]) < lengths[:, None]).long()
    if "special" in batch:
        batch["maskable"] = ~batch.pop("special") & batch["attention_mask"].bool()
    return batch


def token_batch(batch: dict[str, Tensor]) -> TokenBatch:
    """The view of a padded batch that a masking policy sees."""
    return TokenBatch(batch["input_ids"], batch["maskable"], batch.get("word_ids"), batch.get("entity_ids"))
