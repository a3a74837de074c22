"""Cumulative masked-prediction estimators of the log marginal likelihood: which masks to score.

For a sequence x of D scored positions (Moreno-Muñoz et al., NeurIPS 2023)::

    S_m(x)   = E_{|M|=m} [ (1/m) Σ_{j∈M} log p(x_j | x_{not M}) ]
    log p(x) = Σ_{m=1..D} S_m(x)

The identity is exact when the conditionals come from one joint (PPCA, HMM); for a
masked LM the sum is an estimate. Every estimator here is one *design*: per sequence,
a set of masks grouped in strata of rates. A stratum covering ``n_h`` rates
contributes ``n_h`` × (mean over its masks of the per-mask average log-probability),
which is unbiased for Σ_{m in stratum} S_m when the stratum's rate is uniform.
:func:`maskpolicy.meta.scoring.estimate.estimate_mll` runs a design through a predictor.

Estimators (chosen by config, ``conf/score/estimator/<name>.yaml``):

* ``exhaustive``  every non-empty mask (2^D − 1 passes), exact; small D only.
* ``rates``       ``passes // D`` random masks at every rate m = 1..D.
* ``stratified``  the one-sample form D·(1/m)Σ log p with m uniform, stratified over
  contiguous blocks of rates (≥ 2 draws per block, so a standard error exists);
  works with fewer passes than D.
* ``fixed_rate``  D·S_m at one rate (biased by Σ_k (S_m − S_k)); all C(D, m) masks
  when that fits the budget, so the per-rate value is then exact.
* ``pll``         pseudo-log-likelihood, D·S_1 over the D single-position masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

from maskpolicy.policies.ops import select_count

MAX_EXHAUSTIVE_LENGTH = 20


class MLLError(ValueError):
    """Bad input to the marginal-likelihood estimator or a bad predictor output."""


# -- designs: which masks, grouped in strata ------------------------------------------


@dataclass(frozen=True)
class Design:
    """The masks of C sequences of the same D scored positions, drawn independently.

    ``masks`` ``Bool[C, N, D]``; ``stratum`` ``Long[N]`` indexes ``width`` ``Float[H]``
    (number of rates each stratum covers); ``exact`` ``Bool[H]`` marks strata whose
    masks are the whole population (their mean has no sampling error).
    """

    masks: Tensor
    stratum: Tensor
    width: Tensor
    exact: Tensor


@runtime_checkable
class Estimator(Protocol):
    """Chooses the masks of sequences of D scored positions; ``name`` labels its results."""

    name: str

    def design(self, length: int, copies: int, generator: torch.Generator) -> Design:
        """The masks of ``copies`` sequences of ``length`` scored positions, drawn independently."""
        ...


def random_masks(length: int, sizes: Tensor, copies: int, generator: torch.Generator) -> Tensor:
    """``Bool[copies, N, length]`` masks, ``[c, i]`` a uniform subset of ``sizes[..., i]`` positions.

    ``sizes`` is ``Long[N]`` or ``Long[copies, N]``, each in ``0..length``.
    """
    keys = torch.rand(copies, sizes.shape[-1], length, generator=generator)
    rows = keys.flatten(0, 1)
    chosen = select_count(rows, torch.ones_like(rows, dtype=torch.bool), sizes.expand(copies, -1).flatten())
    return chosen.view_as(keys)


def all_masks(length: int) -> Tensor:
    """Every non-empty subset of ``length`` positions, ``Bool[2^length − 1, length]``."""
    codes = torch.arange(1, 2**length, dtype=torch.int64)
    return (codes[:, None] >> torch.arange(length)) & 1 == 1


def masks_of_size(length: int, size: int) -> Tensor:
    """All C(length, size) masks of ``size`` positions."""
    if length <= MAX_EXHAUSTIVE_LENGTH:
        masks = all_masks(length)
        return masks[masks.sum(1) == size]
    if size > length // 2:  # torch.combinations builds length**size candidates; take complements instead
        return ~masks_of_size(length, length - size) if size < length else torch.ones(1, length, dtype=torch.bool)
    chosen = torch.combinations(torch.arange(length), r=size)
    masks = torch.zeros(len(chosen), length, dtype=torch.bool)
    return masks.scatter_(1, chosen, True)


def _check_passes(passes: int, least: int, estimator: str) -> None:
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < least:
        raise MLLError(f"score.passes must be ≥ {least} masked forward passes per sequence for "
                       f"score/estimator={estimator}, got {passes!r}; raise score.passes")


# -- the estimators -----------------------------------------------------------------


@dataclass(frozen=True)
class Exhaustive:
    """All 2^D − 1 masks: the exact cumulative sum (no sampling error)."""

    name: ClassVar[str] = "exhaustive"

    def design(self, length: int, copies: int, generator: torch.Generator) -> Design:
        if length > MAX_EXHAUSTIVE_LENGTH:
            raise MLLError(
                f"exhaustive scoring needs 2^D − 1 passes and D={length} > {MAX_EXHAUSTIVE_LENGTH}; "
                "use score/estimator=stratified or rates for longer sequences"
            )
        masks = all_masks(length)
        rates = torch.ones(length)
        return Design(masks.expand(copies, -1, -1), masks.sum(1) - 1, rates, rates.bool())


@dataclass(frozen=True)
class Rates:
    """``passes // D`` uniformly random masks at each rate m = 1..D."""

    passes: int = 200
    name: ClassVar[str] = "rates"

    def __post_init__(self) -> None:
        _check_passes(self.passes, 1, self.name)

    def design(self, length: int, copies: int, generator: torch.Generator) -> Design:
        per_rate = self.passes // length
        if per_rate < 1:
            raise MLLError(
                f"estimator 'rates' needs at least one pass per rate: score.passes={self.passes} < D={length}; "
                f"raise score.passes to ≥ {length} or use score/estimator=stratified"
            )
        sizes = torch.arange(1, length + 1).repeat_interleave(per_rate)
        return Design(random_masks(length, sizes, copies, generator), sizes - 1, torch.ones(length),
                      torch.zeros(length, dtype=torch.bool))


@dataclass(frozen=True)
class Stratified:
    """The unbiased one-sample form with m uniform, stratified over blocks of rates.

    Rates 1..D are cut into H = min(D, passes // 2) contiguous blocks; each block gets
    draws in proportion to its size (at least two, so its variance can be estimated)
    and each draw takes a uniform rate within its block.
    """

    passes: int = 200
    name: ClassVar[str] = "stratified"

    def __post_init__(self) -> None:
        _check_passes(self.passes, 2, self.name)

    def design(self, length: int, copies: int, generator: torch.Generator) -> Design:
        blocks = min(length, self.passes // 2)
        edges = torch.linspace(0, length, blocks + 1).round().long()
        width = edges.diff()
        draws = _allocate(self.passes, width)
        stratum = torch.repeat_interleave(torch.arange(blocks), draws)
        offset = (torch.rand(copies, len(stratum), generator=generator) * width[stratum]).long()
        sizes = edges[stratum] + offset + 1
        return Design(random_masks(length, sizes, copies, generator), stratum, width.double(),
                      torch.zeros(blocks, dtype=torch.bool))


def _allocate(total: int, width: Tensor) -> Tensor:
    """Splits exactly ``total`` draws over strata: two each, the rest in proportion to ``width``."""
    share = (total - 2 * len(width)) * width.double() / width.sum()
    draws = share.floor().long()
    order = (share - draws).argsort(descending=True)
    draws[order[: total - 2 * len(width) - int(draws.sum())]] += 1
    return draws + 2


@dataclass(frozen=True)
class FixedRate:
    """D · S_m at one rate m = round(rate · D) (or ``size``); biased unless S is flat.

    Uses all C(D, m) masks when they fit in ``passes`` (then S_m is exact), else
    ``passes`` random masks of size m.
    """

    rate: float = 0.15
    passes: int = 200
    size: int | None = None
    name: ClassVar[str] = "fixed_rate"

    def __post_init__(self) -> None:
        _check_passes(self.passes, 1, self.name)
        if self.size is None and not 0.0 < self.rate <= 1.0:
            raise MLLError(f"score.rate (and each of score.fixed_rates) must be in (0, 1], got {self.rate}")
        if self.size is not None and self.size < 1:
            raise MLLError(f"a fixed mask size must be ≥ 1 position, got {self.size}")

    def masked_count(self, length: int) -> int:
        count = self.size if self.size is not None else round(self.rate * length)
        return min(max(count, 1), length)

    def design(self, length: int, copies: int, generator: torch.Generator) -> Design:
        size = self.masked_count(length)
        exact = math.comb(length, size) <= self.passes
        if exact:
            masks = masks_of_size(length, size).expand(copies, -1, -1)
        else:
            masks = random_masks(length, torch.full((self.passes,), size), copies, generator)
        return Design(masks, torch.zeros(masks.shape[1], dtype=torch.long), torch.tensor([float(length)]),
                      torch.tensor([exact]))


@dataclass(frozen=True)
class PseudoLogLikelihood:
    """Pseudo-log-likelihood (Salazar et al. 2020): D·S_1, every single-position mask when D ≤ ``passes``."""

    passes: int = 200
    name: ClassVar[str] = "pll"

    def __post_init__(self) -> None:
        _check_passes(self.passes, 1, self.name)

    def design(self, length: int, copies: int, generator: torch.Generator) -> Design:
        return FixedRate(passes=self.passes, size=1).design(length, copies, generator)
