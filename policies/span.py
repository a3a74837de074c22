"""SpanBERT-style contiguous span masking (Joshi et al., 2020)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .base import PolicyError, TokenBatch, check_rate
from .ops import budget, dense_groups, partition_into_segments, select_groups, truncated_geometric
from .whole_word import require_word_ids


class SpanPolicy:
    """Masks contiguous spans with geometric lengths until round(rate · n) tokens.

    Each sequence is cut into consecutive segments whose lengths are drawn from
    Geometric(p) truncated at ``max_length``; segments are then masked in random
    order up to the budget, the last one cut to end exactly at it (``unit="token"``). Masked spans
    therefore never overlap, their lengths follow the truncated geometric law (mean
    3.8 at SpanBERT's p=0.2, max 10) but for that one shortened span per row, and two
    chosen neighbours can touch, as in SpanBERT.

    Args:
        rate: fraction of maskable tokens to mask, in (0, 1].
        p: geometric parameter of the span length.
        max_length: longest span, in units.
        unit: ``"token"`` counts span lengths in tokens; ``"word"`` in whole words
            (needs word ids), as SpanBERT does.
    """

    def __init__(
        self, rate: float = 0.15, p: float = 0.2, max_length: int = 10, unit: Literal["token", "word"] = "token"
    ) -> None:
        self.rate = check_rate(rate)
        if not 0.0 < p <= 1.0:
            raise PolicyError(f"span length parameter p must be in (0, 1], got {p}")
        if max_length < 1:
            raise PolicyError(f"span max_length must be ≥ 1, got {max_length}")
        if unit not in ("token", "word"):
            raise PolicyError(f"span unit must be 'token' or 'word', got {unit!r}")
        self.p, self.max_length, self.unit = p, max_length, unit

    def select(self, batch: TokenBatch, generator: torch.Generator) -> Tensor:
        if self.unit == "word":
            units = dense_groups(require_word_ids(batch, "span (unit=word)"), batch.maskable)
        else:
            units = torch.where(batch.maskable, batch.maskable.long().cumsum(dim=1) - 1, -1)
        lengths = truncated_geometric(tuple(units.shape), self.p, self.max_length, generator, units.device)
        segments = partition_into_segments(units, lengths)
        spans = dense_groups(segments, batch.maskable)
        # Token spans: the one that crosses the budget is cut to fit, so every row masks round(rate · n) tokens
        # exactly, short rows included. Word spans are not cut (half a word is not a word).
        return select_groups(spans, budget(batch.maskable, self.rate), generator, truncate=self.unit == "token")
