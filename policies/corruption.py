"""Corruption: turning a selection mask into model inputs and labels.

Shared by every policy. Two formats:

* encoder (BERT-style masked LM): 80/10/10 replacement, labels ``-100`` elsewhere;
* seq2seq (BART/T5-style denoising): each masked span collapses to one sentinel
  in the encoder input; the target is either the masked spans only (each after
  its sentinel) or the full original sequence — the two output formats compared
  by Ye et al. (2021).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import PolicyError

IGNORE_INDEX = -100


def mlm_corrupt(
    input_ids: Tensor,
    mask: Tensor,
    *,
    mask_token_id: int,
    replacement_ids: Tensor,
    generator: torch.Generator,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """BERT corruption of the selected positions.

    Args:
        input_ids: ``Long[B, L]``.
        mask: ``Bool[B, L]``, the selected positions.
        replacement_ids: ``Long[V']`` ids a random replacement is drawn from
            (normally every non-special id of the vocabulary).
        mask_fraction: share of selected tokens replaced by the mask token.
        random_fraction: share replaced by a random token; the rest stay unchanged.
    Returns ``(inputs, labels)``, both ``Long[B, L]``; labels hold the original id
    at selected positions and ``-100`` elsewhere.
    """
    if mask_fraction < 0 or random_fraction < 0 or mask_fraction + random_fraction > 1:
        raise PolicyError(
            f"mask_fraction ({mask_fraction}) and random_fraction ({random_fraction}) must be ≥ 0 and sum to ≤ 1"
        )
    labels = input_ids.masked_fill(~mask, IGNORE_INDEX)
    u = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    draws = torch.randint(len(replacement_ids), input_ids.shape, generator=generator, device=input_ids.device)
    random_tokens = replacement_ids.to(input_ids.device)[draws]
    inputs = torch.where(mask & (u < mask_fraction + random_fraction), random_tokens, input_ids)
    inputs = torch.where(mask & (u < mask_fraction), mask_token_id, inputs)
    return inputs, labels


@dataclass(frozen=True)
class Seq2SeqBatch:
    """Encoder inputs and decoder labels for denoising.

    ``input_ids``/``attention_mask``: ``Long[B, L_in]``; ``labels``: ``Long[B, L_out]``
    with ``-100`` at padding.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor


def _compact(values: Tensor, keep: Tensor, pad_id: int) -> tuple[Tensor, Tensor]:
    """Moves the kept entries of each row to the front, in order, and trims.

    Returns ``(values, valid)`` shaped ``[B, max kept]``; ``valid`` marks real entries.
    """
    order = (~keep).to(torch.int8).argsort(dim=1, stable=True)
    width = int(keep.sum(dim=1).max()) if keep.numel() else 0
    order = order[:, :width]
    valid = keep.gather(1, order)
    return values.gather(1, order).masked_fill(~valid, pad_id), valid


def sentinel_corrupt(
    input_ids: Tensor,
    attention_mask: Tensor,
    mask: Tensor,
    *,
    sentinel_ids: Tensor,
    pad_token_id: int,
    target: Literal["spans", "full"] = "spans",
    eos_token_id: int | None = None,
) -> Seq2SeqBatch:
    """Seq2seq corruption: every masked span becomes one sentinel token.

    Args:
        input_ids: ``Long[B, L]``.
        attention_mask: ``[B, L]``.
        mask: ``Bool[B, L]``; never selects padding.
        sentinel_ids: ``Long[S]``. One id (BART's ``<mask>``) is shared by every span;
            several (T5's ``<extra_id_k>``) are used in order, span k gets id k.
        target: ``"spans"`` — each masked span after its sentinel, then ``eos``;
            ``"full"`` — the original sequence.
    """
    if target not in ("spans", "full"):
        raise PolicyError(f"seq2seq target must be 'spans' or 'full', got {target!r}")
    previous = F.pad(mask[:, :-1], (1, 0), value=False)
    span_start = mask & ~previous
    span_index = span_start.long().cumsum(dim=1) - 1
    sentinel_ids = sentinel_ids.to(input_ids.device)
    most_spans = int(span_start.sum(dim=1).max()) if span_start.numel() else 0
    if len(sentinel_ids) > 1 and most_spans > len(sentinel_ids):
        raise PolicyError(
            f"{most_spans} masked spans in one sequence but only {len(sentinel_ids)} sentinel "
            "tokens; lower the rate, use longer spans, or a tokenizer with more sentinels"
        )
    sentinels = sentinel_ids[span_index.clamp(0, len(sentinel_ids) - 1)]
    # Two slots per position, sentinel before token, so one stable compaction
    # inserts each sentinel in front of its span without a Python loop.
    interleaved = torch.stack([sentinels, input_ids], dim=2).flatten(1)
    real = attention_mask.bool()
    keep_input = torch.stack([span_start, real & ~mask], dim=2).flatten(1)
    enc_ids, enc_valid = _compact(interleaved, keep_input, pad_token_id)
    if target == "full":
        labels = input_ids.masked_fill(~real, IGNORE_INDEX)
    else:
        keep_target = torch.stack([span_start, mask], dim=2).flatten(1)
        labels, label_valid = _compact(interleaved, keep_target, IGNORE_INDEX)
        if eos_token_id is not None:
            labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)
            ends = label_valid.sum(dim=1, keepdim=True)
            labels = labels.scatter(1, ends, eos_token_id)
    return Seq2SeqBatch(enc_ids, enc_valid.long(), labels)
