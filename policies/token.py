"""Uniform random token masking (BERT)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import TokenBatch, check_rate
from .ops import budget, select_count_nonnegative


class RandomPolicy:
    """Masks maskable tokens uniformly at random.

    Args:
        rate: fraction of maskable tokens to mask, in (0, 1].
        exact: mask exactly round(rate · n) tokens per sequence; otherwise mask each
            token independently with probability ``rate`` (BERT / Hugging Face style).
    """

    def __init__(self, rate: float = 0.15, exact: bool = True) -> None:
        self.rate = check_rate(rate)
        self.exact = exact

    def select(self, batch: TokenBatch, generator: torch.Generator) -> Tensor:
        keys = torch.rand(batch.input_ids.shape, generator=generator, device=batch.input_ids.device)
        if not self.exact:
            return (keys < self.rate) & batch.maskable
        return select_count_nonnegative(keys, batch.maskable, budget(batch.maskable, self.rate))
