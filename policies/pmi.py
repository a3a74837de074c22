"""PMI-Masking (Levine et al., ICLR 2021): correlated word n-grams are masked as units.

:meth:`PMIPolicy.fit` scores every word n-gram of the pre-training corpus (n = 2..``max_n``,
seen at least ``min_count`` times) by the paper's generalised PMI, the log-ratio of the
n-gram's probability to the most probable way of splitting it into contiguous parts::

    PMI_n(w1..wn) = log p(w1..wn) − max over segmentations σ (≥ 2 parts) of Σ_{s∈σ} log p(s)

(for n = 2 this is the usual PMI), and keeps the ``top_k`` best of each order with positive
PMI. :meth:`PMIPolicy.select` finds those n-grams in a batch, keeps a non-overlapping set
(an n-gram survives when it beats every n-gram overlapping it: higher PMI, then longer, then
earlier), treats every other word as a unit of its own, and masks units in random order up
to the budget, as whole-word masking does. A row's units depend on the row and the tables only:
:meth:`PMIPolicy.remember_rows` works them out once for the corpus pre-training draws from (a
:class:`~.memo.RowMemo`), and ``select`` then only orders them.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from .base import PolicyError, TokenBatch, check_rate
from .memo import RowMemo
from .ops import budget, dense_groups, select_groups
from .words import KeyTable, Words, count_keys, lookup, ngram_orders, shifted, words_of

NOT_FOUND = float("-inf")


class PMIPolicy:
    """Masks high-PMI word n-grams as units, the other words whole.

    Args:
        rate: fraction of maskable tokens to mask, in (0, 1].
        max_n: longest n-gram, in words (2..5 in the paper).
        min_count: an n-gram seen fewer times in the corpus is not scored.
        top_k: n-grams kept per order, the highest PMI first.

    The n-gram tables come from :meth:`fit` (the pre-training pipeline fits the policy on its
    corpus and caches the tables) or :meth:`load_tables`.
    """

    def __init__(self, rate: float = 0.15, max_n: int = 5, min_count: int = 5, top_k: int = 2000) -> None:
        self.rate = check_rate(rate)
        if int(max_n) < 2:
            raise PolicyError(f"pmi max_n is the longest n-gram and must be ≥ 2 (a unigram has no PMI), got {max_n}")
        if int(min_count) < 1 or int(top_k) < 1:
            raise PolicyError(f"pmi min_count and top_k must be ≥ 1, got min_count={min_count}, top_k={top_k}")
        self.max_n, self.min_count, self.top_k = int(max_n), int(min_count), int(top_k)
        self.tables: dict[str, Tensor] | None = None
        self._memo: RowMemo | None = None

    @property
    def table_parameters(self) -> dict[str, int | str]:
        """What decides the tables besides the corpus (part of their cache key)."""
        return {"kind": "pmi", "max_n": self.max_n, "min_count": self.min_count, "top_k": self.top_k}

    def fit(self, corpus: TokenBatch) -> dict[str, Tensor]:
        """Scores the corpus's n-grams and keeps the tables; returns them (``keys_n``, ``scores_n`` per order)."""
        words = words_of(corpus, "pmi")
        grams = ngram_orders(words, self.max_n)
        log_p = {n: _log_probabilities(*grams[n]) for n in grams}
        tables = {}
        for n in range(2, self.max_n + 1):
            keys, scores = self._score_order(n, words, grams, log_p)
            tables[f"keys_{n}"], tables[f"scores_{n}"] = keys, scores
        if not any(t.numel() for name, t in tables.items() if name.startswith("keys_")):
            raise PolicyError(
                f"the corpus is too small to score any n-gram: none of 2..{self.max_n} words occurs "
                f"min_count={self.min_count} times with positive PMI; lower policy.min_count or use a larger corpus"
            )
        self.load_tables(tables)
        return tables

    def load_tables(self, tables: dict[str, Tensor]) -> None:
        """Uses n-gram tables made by :meth:`fit` (e.g. read back from a cache)."""
        missing = [f"{kind}_{n}" for n in range(2, self.max_n + 1) for kind in ("keys", "scores")
                   if f"{kind}_{n}" not in tables]
        if missing:
            raise PolicyError(f"pmi tables lack {', '.join(missing)}; they were made with another max_n: refit")
        self.tables = dict(tables)
        self._lookups = {n: KeyTable(tables[f"keys_{n}"], tables[f"scores_{n}"]) for n in range(2, self.max_n + 1)}
        self._memo = None  # units found with other tables

    def remember_rows(self, corpus: TokenBatch) -> None:
        """Works out the masking units of every ``corpus`` row once, for ``select`` to read back."""
        self._require_tables()
        self._memo = RowMemo.build(corpus, self._groups, {"groups": -1})

    def select(self, batch: TokenBatch, generator: torch.Generator) -> Tensor:
        self._require_tables()
        groups = (self._groups(batch) if self._memo is None else self._memo.get(batch, self._groups))["groups"]
        return select_groups(groups, budget(batch.maskable, self.rate), generator)

    def _require_tables(self) -> None:
        if self.tables is None:
            raise PolicyError("the pmi policy has no n-gram tables yet: call policy.fit(corpus) on the pre-training "
                              "corpus first (maskpolicy-pretrain does), or load_tables(...)")

    def _groups(self, batch: TokenBatch) -> dict[str, Tensor]:
        """``{"groups": Long[B, L]}``: each token's masking unit, numbered per row (``-1``: none)."""
        words = words_of(batch, "pmi")
        score, length = self._best_ngrams(words)
        kept = _non_overlapping(score, length, self.max_n)
        return {"groups": dense_groups(_units(words, kept, length, self.max_n), batch.maskable)}

    def _score_order(self, n: int, words: Words, grams: dict, log_p: dict) -> tuple[Tensor, Tensor]:
        """The kept n-grams of order ``n``: sorted keys and their generalised PMI."""
        keys, valid = grams[n]
        distinct, inverse, counts = torch.unique(keys[valid], sorted=True, return_inverse=True, return_counts=True)
        frequent = counts >= self.min_count
        if not bool(frequent.any()):
            return distinct[:0], torch.zeros(0)
        rows, starts = valid.nonzero(as_tuple=True)
        first = torch.full_like(distinct, len(rows)).scatter_reduce(0, inverse, torch.arange(len(rows)), "amin")
        rows, starts = rows[first[frequent]], starts[first[frequent]]
        whole = log_p[n][1][frequent]  # _log_probabilities ran torch.unique on the same keys: same order
        best_split = torch.full_like(whole, NOT_FOUND)
        for parts in _segmentations(n):
            total, offset = torch.zeros_like(whole), 0
            for size in parts:
                part_keys = grams[size][0][rows, starts + offset]
                total += lookup(*log_p[size], part_keys, NOT_FOUND)
                offset += size
            best_split = torch.maximum(best_split, total)
        pmi = whole - best_split
        order = torch.argsort(pmi, descending=True, stable=True)
        chosen = order[pmi[order] > 0][: self.top_k]
        chosen = chosen[torch.argsort(distinct[frequent][chosen])]
        return distinct[frequent][chosen], pmi[chosen].float()

    def _best_ngrams(self, words: Words) -> tuple[Tensor, Tensor]:
        """Per word, the highest-PMI table n-gram starting there: ``(Float[B, W] score, Long[B, W] length)``;
        ``-inf`` and 0 where none (a longer n-gram wins a tie)."""
        score = torch.full(words.present.shape, NOT_FOUND, device=words.present.device)
        length = torch.zeros(words.present.shape, dtype=torch.long, device=words.present.device)
        for n, (keys, valid) in sorted(ngram_orders(words, self.max_n, 2).items(), reverse=True):
            found = self._lookups[n].to(keys.device).get(keys, NOT_FOUND)
            better = valid & (found > score)
            score, length = torch.where(better, found, score), torch.where(better, n, length)
        return score, length


def _log_probabilities(keys: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Distinct keys (sorted) and the log of their share of the valid positions."""
    distinct, counts = count_keys(keys, valid)
    return distinct, torch.log(counts.double()) - math.log(max(int(valid.sum()), 1))


def _segmentations(n: int) -> list[tuple[int, ...]]:
    """The ways to cut n words into ≥ 2 contiguous parts, as part sizes (2^(n-1) - 1 of them)."""
    cuts = range(1, n)
    return [tuple(b - a for a, b in itertools.pairwise((0, *chosen, n)))
            for size in range(1, n) for chosen in itertools.combinations(cuts, size)]


def _non_overlapping(score: Tensor, length: Tensor, max_n: int) -> Tensor:
    """``Bool[B, W]``: the n-grams that beat every n-gram overlapping them (higher score, then longer, then
    earlier). Two kept n-grams never overlap: of any overlapping pair, one beats the other."""
    exists = length > 0
    lost = torch.zeros_like(exists)
    for d in range(1, max_n):
        later_score, later_length = shifted(score, d, NOT_FOUND), shifted(length, d, 0)
        later_wins = (later_length > 0) & (length > d) & (
            (later_score > score) | ((later_score == score) & (later_length > length)))
        earlier_score, earlier_length = shifted(score, -d, NOT_FOUND), shifted(length, -d, 0)
        earlier_wins = (earlier_length > d) & (
            (earlier_score > score) | ((earlier_score == score) & (earlier_length >= length)))
        lost |= later_wins | earlier_wins
    return exists & ~lost


def _units(words: Words, kept: Tensor, length: Tensor, max_n: int) -> Tensor:
    """``Long[B, L]`` unit id per token: the first word of the kept n-gram covering its word, else its own word."""
    position = torch.arange(kept.shape[1], device=kept.device).expand_as(kept)
    unit = position
    for d in range(1, max_n):
        covers = shifted(kept, -d, False) & (shifted(length, -d, 0) > d)
        unit = torch.where(covers, position - d, unit)
    if unit.shape[1] == 0:  # no words at all: nothing to gather from
        return words.groups
    return torch.where(words.groups >= 0, unit.gather(1, words.groups.clamp(min=0)), -1)

