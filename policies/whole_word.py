"""Whole-word masking: all sub-word tokens of a chosen word are masked together."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import PolicyError, TokenBatch, check_rate
from .ops import budget, dense_groups, select_groups


def require_word_ids(batch: TokenBatch, policy: str) -> Tensor:
    if batch.word_ids is None:
        raise PolicyError(
            f"the {policy} policy needs word ids: build TokenBatch with word_ids "
            "(a fast tokenizer's BatchEncoding.word_ids()), or use policy=random"
        )
    return batch.word_ids


class WholeWordPolicy:
    """Masks whole words, in random order, until round(rate · n) tokens are covered.

    Word boundaries come from ``TokenBatch.word_ids`` (the tokenizer's own word
    ids), so no ``##`` continuation convention is assumed.
    """

    def __init__(self, rate: float = 0.15) -> None:
        self.rate = check_rate(rate)

    def select(self, batch: TokenBatch, generator: torch.Generator) -> Tensor:
        words = dense_groups(require_word_ids(batch, "whole_word"), batch.maskable)
        return select_groups(words, budget(batch.maskable, self.rate), generator)
