"""Informativeness masking (after InforMask, Sadeq et al. 2022): the most informative words first.

A word occurrence's informativeness is the sum of its PMI with the words around it (within
``window`` words on either side, in the same row); a word's score is the mean over its
occurrences in the corpus, as InforMask's token-specific rates precompute it. :meth:`fit`
builds that table once; :meth:`select` reads it and masks whole words in order of
``score / temperature + Gumbel noise``, so the most informative words are masked most often
while masks still vary between epochs. :meth:`InformativePolicy.remember_rows` looks up the words
of the corpus pre-training draws from once (a :class:`~.memo.RowMemo`); ``select`` then only draws.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import PolicyError, TokenBatch, check_rate
from .memo import RowMemo
from .ops import budget, select_groups
from .words import KeyTable, count_keys, lookup, ngram_keys, words_of

ROWS_PER_CHUNK = 512  # context pairs are counted this many rows at a time: 2·window keys per word occurrence


class InformativePolicy:
    """Masks whole words, the ones with the highest corpus informativeness most often.

    Args:
        rate: fraction of maskable tokens to mask, in (0, 1].
        window: words on each side that count as a word's context.
        temperature: > 0; scores are standardised over the corpus's words, so at 1 a word one
            standard deviation above another is chosen first e (≈ 2.7) times as often; small
            values approach a fixed top-k, large ones whole-word masking.
    """

    def __init__(self, rate: float = 0.15, window: int = 10, temperature: float = 0.5) -> None:
        self.rate = check_rate(rate)
        if int(window) < 1:
            raise PolicyError(f"informative window must be ≥ 1 word, got {window}")
        if not float(temperature) > 0:
            raise PolicyError(f"informative temperature must be > 0, got {temperature}")
        self.window, self.temperature = int(window), float(temperature)
        self.tables: dict[str, Tensor] | None = None
        self._memo: RowMemo | None = None

    @property
    def table_parameters(self) -> dict[str, int | str]:
        """What decides the table besides the corpus (part of its cache key)."""
        return {"kind": "informative", "window": self.window}

    def fit(self, corpus: TokenBatch) -> dict[str, Tensor]:
        """Scores every corpus word; returns and keeps the table (``keys`` sorted, standardised ``scores``)."""
        words = words_of(corpus, "informative")
        keys, valid = ngram_keys(words, 1)
        distinct, counts = count_keys(keys, valid)
        if distinct.numel() < 2:
            raise PolicyError("the corpus is too small to score informativeness: it needs at least two distinct "
                              "words; use a larger corpus")
        log_p = torch.log(counts.double()) - math.log(int(valid.sum()))
        chunks = [slice(start, start + ROWS_PER_CHUNK) for start in range(0, keys.shape[0], ROWS_PER_CHUNK)]
        pair_keys, pair_counts = _merge_counts([count_keys(*_context_pairs(keys[rows], valid[rows], self.window)[:2])
                                                for rows in chunks])
        pair_log_p = torch.log(pair_counts.double()) - math.log(int(pair_counts.sum()))
        occurrence = torch.cat([self._context_pmi(keys[rows], valid[rows], (distinct, log_p), (pair_keys, pair_log_p))
                                for rows in chunks])
        index = torch.searchsorted(distinct, keys[valid])
        mean = torch.zeros_like(log_p).scatter_add_(0, index, occurrence[valid]) / counts
        scores = ((mean - mean.mean()) / mean.std().clamp(min=1e-12)).float()
        tables = {"keys": distinct, "scores": scores}
        self.load_tables(tables)
        return tables

    def _context_pmi(self, keys: Tensor, valid: Tensor, words: tuple[Tensor, Tensor], pairs: tuple[Tensor, Tensor]
                     ) -> Tensor:
        """``Float64[B, W]``: each word occurrence's summed PMI with its context words."""
        context, context_valid, offsets = _context_pairs(keys, valid, self.window)
        own = lookup(*words, keys, 0.0)
        total = torch.zeros(keys.shape, dtype=torch.float64)
        for channel, d in enumerate(offsets):
            pmi = lookup(*pairs, context[..., channel], 0.0) - own - lookup(*words, keys.roll(-d, dims=1), 0.0)
            total += torch.where(context_valid[..., channel], pmi, 0.0)
        return total

    def load_tables(self, tables: dict[str, Tensor]) -> None:
        """Uses a table made by :meth:`fit` (e.g. read back from a cache)."""
        if set(tables) != {"keys", "scores"}:
            raise PolicyError(f"informative tables need keys and scores, got {sorted(tables)}: refit")
        self.tables = dict(tables)
        self._lookup = KeyTable(tables["keys"], tables["scores"])
        self._memo = None  # scores from another table

    def remember_rows(self, corpus: TokenBatch) -> None:
        """Finds the words of every ``corpus`` row and their scores once, for ``select`` to read back."""
        self._require_tables()
        self._memo = RowMemo.build(corpus, self._word_scores, {"groups": -1, "scores": 0.0})

    def select(self, batch: TokenBatch, generator: torch.Generator) -> Tensor:
        self._require_tables()
        found = self._word_scores(batch) if self._memo is None else self._memo.get(batch, self._word_scores)
        groups = found["groups"]
        score = found["scores"][:, : int(groups.max()) + 1 if groups.numel() else 0]  # one slot per word
        uniform = torch.rand(score.shape, generator=generator, device=score.device).clamp(1e-12, 1 - 1e-7)
        gumbel = -torch.log(-torch.log(uniform))
        order = -(score / self.temperature + gumbel)  # ascending order = the words to mask first
        by_group = torch.nn.functional.pad(order, (0, groups.shape[1] - order.shape[1]), value=float("inf"))
        return select_groups(groups, budget(batch.maskable, self.rate), generator, group_keys=by_group)

    def _require_tables(self) -> None:
        if self.tables is None:
            raise PolicyError("the informative policy has no word scores yet: call policy.fit(corpus) on the "
                              "pre-training corpus first (maskpolicy-pretrain does), or load_tables(...)")

    def _word_scores(self, batch: TokenBatch) -> dict[str, Tensor]:
        """``groups`` ``Long[B, L]``, each token's word (``-1``: none), and ``scores`` ``Float[B, W]``, each word's."""
        words = words_of(batch, "informative")
        keys, _ = ngram_keys(words, 1)
        return {"groups": words.groups, "scores": self._lookup.to(keys.device).get(keys, 0.0)}


def _merge_counts(parts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Distinct keys (sorted) and their total counts from per-chunk ``(keys, counts)``."""
    keys, inverse = torch.unique(torch.cat([k for k, _ in parts]), sorted=True, return_inverse=True)
    return keys, torch.zeros_like(keys).scatter_add_(0, inverse, torch.cat([c for _, c in parts]))


def _context_pairs(keys: Tensor, valid: Tensor, window: int) -> tuple[Tensor, Tensor, list[int]]:
    """Keys of (word, neighbour at offset d) pairs for d in ±1..window: ``Long[B, W, 2·window]``, their validity,
    and the offsets in channel order."""
    offsets = [d for d in range(-window, window + 1) if d]
    width = keys.shape[1]
    pairs, pair_valid = [], []
    for d in offsets:
        inside = (torch.arange(width) + d >= 0) & (torch.arange(width) + d < width)
        neighbour, neighbour_valid = keys.roll(-d, dims=1), valid.roll(-d, dims=1) & inside
        pairs.append(_pair_key(keys, neighbour))
        pair_valid.append(valid & neighbour_valid)
    return torch.stack(pairs, -1), torch.stack(pair_valid, -1), offsets


def _pair_key(first: Tensor, second: Tensor) -> Tensor:
    """An order-free key of two word keys (PMI is symmetric)."""
    low, high = torch.minimum(first, second), torch.maximum(first, second)
    return (low * 1_000_003 + high) & (2**62 - 1)
