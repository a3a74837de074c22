"""Cumulative masked-prediction estimates of the log marginal likelihood.

For a sequence x of D scored positions (Moreno-Muñoz et al., NeurIPS 2023)::

    S_m(x)   = E_{|M|=m} [ (1/m) Σ_{j∈M} log p(x_j | x_{not M}) ]
    log p(x) = Σ_{m=1..D} S_m(x)

The identity is exact when the conditionals come from one joint (PPCA, HMM); for a
masked LM the sum is an estimate. Every estimator here is one *design*: per sequence,
a set of masks grouped in strata of rates. A stratum covering ``n_h`` rates
contributes ``n_h`` × (mean over its masks of the per-mask average log-probability),
which is unbiased for Σ_{m in stratum} S_m when the stratum's rate is uniform.

Estimators:

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

ESTIMATORS = ("exhaustive", "rates", "stratified", "fixed_rate", "pll")
MAX_EXHAUSTIVE_LENGTH = 20
Reduction = Literal["sum", "mean"]


class MLLError(ValueError):
    """Bad input to the marginal-likelihood estimator or a bad predictor output."""


class MaskedPredictor(Protocol):
    """Anything that scores masked positions given the unmasked ones.

    Called with ``inputs`` ``[N, L, ...]`` (one row per mask; repeated rows of the same
    sequence) and ``masks`` ``Bool[N, L]``; returns ``Float[N, L]`` holding
    ``log p(x_j | x_{not M})`` at every masked position ``j`` (other entries are ignored).
    Each masked position is scored on its own given the same observed set.
    """

    def __call__(self, inputs: Tensor, masks: Tensor) -> Tensor: ...


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


def random_masks(length: int, sizes: Tensor, copies: int, generator: torch.Generator) -> Tensor:
    """``Bool[copies, N, length]`` masks, ``[c, i]`` a uniform subset of ``sizes[..., i]`` positions.

    ``sizes`` is ``Long[N]`` or ``Long[copies, N]``.
    """
    keys = torch.rand(copies, sizes.shape[-1], length, generator=generator)
    ranks = keys.argsort(dim=2).argsort(dim=2)
    return ranks < sizes[..., None]


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


@dataclass(frozen=True)
class Exhaustive:
    """All 2^D − 1 masks: the exact cumulative sum (no sampling error)."""

    name = "exhaustive"

    def design(self, length: int, copies: int, generator: torch.Generator) -> Design:
        if length > MAX_EXHAUSTIVE_LENGTH:
            raise MLLError(
                f"exhaustive scoring needs 2^D − 1 passes and D={length} > {MAX_EXHAUSTIVE_LENGTH}; "
                "use score.estimator=stratified or rates for longer sequences"
            )
        masks = all_masks(length)
        rates = torch.ones(length)
        return Design(masks.expand(copies, -1, -1), masks.sum(1) - 1, rates, rates.bool())


@dataclass(frozen=True)
class Rates:
    """``passes // D`` uniformly random masks at each rate m = 1..D."""

    passes: int = 200
    name = "rates"

    def design(self, length: int, copies: int, generator: torch.Generator) -> Design:
        per_rate = self.passes // length
        if per_rate < 1:
            raise MLLError(
                f"estimator 'rates' needs at least one pass per rate: score.passes={self.passes} < D={length}; "
                f"raise score.passes to ≥ {length} or use score.estimator=stratified"
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
    name = "stratified"

    def design(self, length: int, copies: int, generator: torch.Generator) -> Design:
        if self.passes < 2:
            raise MLLError(f"estimator 'stratified' needs score.passes ≥ 2 per sequence, got {self.passes}")
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
    name = "fixed_rate"

    def __post_init__(self) -> None:
        if self.size is None and not 0.0 < self.rate <= 1.0:
            raise MLLError(f"score.rate must be in (0, 1], got {self.rate}")

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


def build_estimator(name: str, passes: int = 200, rate: float = 0.15):
    """The estimator called ``name`` with its budget (masks per sequence) and rate."""
    if passes < 1:
        raise MLLError(f"score.passes must be ≥ 1 masked forward pass per sequence, got {passes}")
    factories: dict[str, Callable[[], object]] = {
        "exhaustive": Exhaustive,
        "rates": lambda: Rates(passes),
        "stratified": lambda: Stratified(passes),
        "fixed_rate": lambda: FixedRate(rate, passes),
        "pll": lambda: FixedRate(passes=passes, size=1, rate=1.0),
    }
    if name not in factories:
        raise MLLError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
    return factories[name]()


# -- running a design through a predictor ---------------------------------------------


@dataclass(frozen=True)
class RateCurve:
    """S_m in nats per token against the masking rate m / D (NaN where not sampled)."""

    rates: list[float]
    values: list[float]
    sizes: list[int] | None = None  # m, when every sequence has the same D


@dataclass(frozen=True)
class MLLEstimate:
    """The estimate over a set of sequences.

    ``per_sequence`` keeps autograd history when the predictor has one, so an
    estimate can be an objective. ``variance`` is NaN for a sequence whose design
    gave a stratum fewer than two random draws.
    """

    estimator: str
    per_sequence: Tensor
    variance: Tensor
    lengths: Tensor
    forward_passes: int
    curve: RateCurve

    @property
    def total(self) -> float:
        return float(self.per_sequence.detach().sum())

    @property
    def total_stderr(self) -> float:
        return float(self.variance.sum().sqrt())

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def nats_per_token(self) -> float:
        return self.total / self.tokens

    @property
    def bits_per_token(self) -> float:
        return self.nats_per_token / math.log(2)

    def summary(self, reduction: Reduction = "sum") -> dict:
        """JSON-ready numbers; ``reduction`` says whether values are totals or per-sequence means."""
        if reduction not in ("sum", "mean"):
            raise MLLError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        n = len(self.lengths)
        scale = 1.0 if reduction == "sum" else 1.0 / n
        stderr = self.total_stderr * scale
        return {
            "estimator": self.estimator,
            "estimate": self.total * scale,
            "stderr": None if math.isnan(stderr) else stderr,
            "reduction": reduction,
            "nats_per_token": self.nats_per_token,
            "bits_per_token": self.bits_per_token,
            "sequences": n,
            "tokens": self.tokens,
            "forward_passes": self.forward_passes,
            "forward_passes_per_sequence": self.forward_passes / n,
            "per_rate": {"rate": self.curve.rates, "S": [None if math.isnan(v) else v for v in self.curve.values],
                         "m": self.curve.sizes},
        }


def estimate_mll(
    predictor: MaskedPredictor,
    inputs: Tensor,
    scored: Tensor | None = None,
    estimator: str | object = "stratified",
    passes: int = 200,
    rate: float = 0.15,
    generator: torch.Generator | None = None,
    batch_size: int = 1024,
    curve_bins: int = 20,
) -> MLLEstimate:
    """Estimates Σ_m S_m(x) for every row of ``inputs`` with one predictor.

    Args:
        predictor: see :class:`MaskedPredictor`.
        inputs: ``[B, L, ...]`` sequences (token ids, or real vectors with ``L`` = D).
        scored: ``Bool[B, L]`` positions that count (not padding or special tokens);
            all positions when ``None``. Each row's D is its number of scored positions.
        estimator: a name from :data:`ESTIMATORS` or an object with ``name`` and ``design(D, copies, generator)``.
        passes: masked forward passes per sequence (not used by ``exhaustive``).
        rate: the rate of ``fixed_rate``.
        generator: seeds the masks; a fresh seed-0 generator when ``None``.
        batch_size: masked rows per predictor call; masks of several sequences share calls.
        curve_bins: when rows differ in D, the S_m curve is averaged in this many rate bins.
    """
    method = build_estimator(estimator, passes, rate) if isinstance(estimator, str) else estimator
    scored = _check_inputs(inputs, scored)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    lengths = scored.sum(1)
    layout = _lay_out(method, scored, lengths, generator)
    values = _masked_means(predictor, inputs, layout.rows, layout.masks, batch_size)
    per_sequence, variance = _combine(values, layout, len(inputs))
    curve = _curve(values.detach(), layout.masks.sum(1), layout.rows, lengths, curve_bins)
    return MLLEstimate(method.name, per_sequence, variance, lengths, len(layout.rows), curve)


def _check_inputs(inputs: Tensor, scored: Tensor | None) -> Tensor:
    if inputs.dim() < 2 or inputs.shape[0] == 0:
        shape = tuple(inputs.shape)
        raise MLLError(f"inputs must be [batch, length, ...] with at least one sequence, got shape {shape}")
    if scored is None:
        scored = torch.ones(inputs.shape[:2], dtype=torch.bool)
    if scored.shape != inputs.shape[:2] or scored.dtype != torch.bool:
        raise MLLError(f"scored must be Bool{list(inputs.shape[:2])}, got {scored.dtype} {list(scored.shape)}")
    empty = (scored.sum(1) == 0).nonzero().flatten()
    if len(empty):
        raise MLLError(
            f"sequence {int(empty[0])} has no positions to score (D = 0); drop empty sequences "
            "or check the special-token and padding masks"
        )
    return scored


@dataclass(frozen=True)
class _Layout:
    """Every mask of every sequence as a full-length row; strata numbered globally."""

    rows: Tensor  # Long[N_total]: the sequence of each mask
    masks: Tensor  # Bool[N_total, L]
    stratum: Tensor  # Long[N_total]
    owner: Tensor  # Long[H_total]: the sequence of each stratum
    width: Tensor  # Float64[H_total]
    exact: Tensor  # Bool[H_total]


def _lay_out(method, scored: Tensor, lengths: Tensor, generator: torch.Generator) -> _Layout:
    """One design per distinct D, shared by the sequences of that length (masks drawn independently)."""
    rows, masks, strata, owners, widths, exacts = [], [], [], [], [], []
    offset = 0
    for length in lengths.unique().tolist():
        members = (lengths == length).nonzero().flatten()
        design = method.design(length, len(members), generator)
        copies, per_sequence, _ = design.masks.shape
        positions = scored[members].nonzero()[:, 1].view(copies, 1, length).expand(-1, per_sequence, -1)
        full = torch.zeros(copies, per_sequence, scored.shape[1], dtype=torch.bool)
        full.scatter_(2, positions, design.masks)
        blocks = len(design.width)
        rows.append(members.repeat_interleave(per_sequence))
        masks.append(full.flatten(0, 1))
        strata.append((offset + torch.arange(copies)[:, None] * blocks + design.stratum).flatten())
        owners.append(members.repeat_interleave(blocks))
        widths.append(design.width.double().repeat(copies))
        exacts.append(design.exact.repeat(copies))
        offset += copies * blocks
    return _Layout(*(torch.cat(parts) for parts in (rows, masks, strata, owners, widths, exacts)))


def _masked_means(predictor: MaskedPredictor, inputs: Tensor, rows: Tensor, masks: Tensor, batch_size: int) -> Tensor:
    """Per mask, the average log-probability of its masked positions (float64)."""
    means = []
    for start in range(0, len(rows), batch_size):
        chunk_rows, chunk_masks = rows[start:start + batch_size], masks[start:start + batch_size]
        log_probs = predictor(inputs[chunk_rows], chunk_masks)
        _check_log_probs(log_probs, chunk_masks)
        total = torch.where(chunk_masks, log_probs.double(), 0.0).sum(1)
        means.append(total / chunk_masks.sum(1))
    return torch.cat(means)


def _check_log_probs(log_probs: Tensor, masks: Tensor) -> None:
    if not isinstance(log_probs, Tensor) or log_probs.shape != masks.shape:
        shape = tuple(log_probs.shape) if isinstance(log_probs, Tensor) else type(log_probs).__name__
        raise MLLError(
            f"the predictor returned {shape} for masks of shape {tuple(masks.shape)}; it must return one "
            "log-probability per position, Float[N, L]"
        )
    picked = log_probs.detach()[masks]
    if torch.isnan(picked).any() or torch.isposinf(picked).any():
        kind = "NaN" if torch.isnan(picked).any() else "+inf"
        raise MLLError(f"the predictor returned {kind} log-probabilities at masked positions; check the model outputs")


def _combine(values: Tensor, layout: _Layout, n: int) -> tuple[Tensor, Tensor]:
    """Per sequence: Σ_h width_h · mean_h and its sampling variance Σ_h width_h² s_h² / k_h."""
    strata, width, exact = len(layout.width), layout.width, layout.exact
    count = torch.zeros(strata, dtype=torch.float64).index_add_(0, layout.stratum, torch.ones_like(values.detach()))
    mean = torch.zeros(strata, dtype=values.dtype).index_add(0, layout.stratum, values) / count
    deviation = (values.detach() - mean.detach()[layout.stratum]) ** 2
    squares = torch.zeros(strata, dtype=torch.float64).index_add_(0, layout.stratum, deviation)
    sample_variance = squares / (count - 1)  # NaN or inf where a stratum has a single draw
    stratum_variance = torch.where(exact, 0.0, width**2 * sample_variance / count)
    stratum_variance = torch.where(~exact & (count < 2), math.nan, stratum_variance)
    per_sequence = torch.zeros(n, dtype=values.dtype).index_add(0, layout.owner, width * mean)
    variance = torch.zeros(n, dtype=torch.float64).index_add_(0, layout.owner, stratum_variance)
    return per_sequence, variance


def _curve(values: Tensor, sizes: Tensor, rows: Tensor, lengths: Tensor, bins: int) -> RateCurve:
    """S_m averaged over sequences: by m when every D is equal, else in rate bins."""
    if bool((lengths == lengths[0]).all()):
        length = int(lengths[0])
        # per (sequence, m) means first, so a sequence with more draws at m does not weigh more
        keys = rows * length + sizes - 1
        pair_sum = torch.zeros(len(lengths) * length, dtype=torch.float64).index_add_(0, keys, values)
        pair_count = torch.zeros_like(pair_sum).index_add_(0, keys, torch.ones_like(values))
        pair_mean = (pair_sum / pair_count).view(len(lengths), length)
        seen = pair_count.view(len(lengths), length) > 0
        curve = torch.where(seen, pair_mean, 0.0).sum(0) / seen.sum(0)
        return RateCurve([m / length for m in range(1, length + 1)], curve.tolist(), list(range(1, length + 1)))
    fraction = sizes.double() / lengths[rows].double()
    bin_of = ((fraction * bins).ceil().long() - 1).clamp(0, bins - 1)
    sums = torch.zeros(bins, dtype=torch.float64).index_add_(0, bin_of, values)
    counts = torch.zeros(bins, dtype=torch.float64).index_add_(0, bin_of, torch.ones_like(values))
    return RateCurve([(b + 1) / bins for b in range(bins)], (sums / counts).tolist())
