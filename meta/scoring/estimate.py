"""Running an estimator's design through a masked predictor: the estimate, its error and its per-rate curve.

Masks are drawn among each row's *scored* positions only; every other position stays visible to
the predictor. With a target set A of positions scored and the rest x_R visible, the chain rule
gives ``log p(x_A | x_R) = Σ_{m=1..|A|} S_m`` (S_m now conditions on x_R as well), exactly when
the conditionals come from one joint. A row with no scored position contributes an exact 0
(``log p(∅ | x) = 0``) and is counted in ``empty_sequences``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from maskpolicy.meta.console import progress
from maskpolicy.meta.results.schema import MLLScore, RateCurveRecord
from maskpolicy.meta.scoring.estimators import Estimator, MLLError, Stratified

Reduction = Literal["sum", "mean"]
DEFAULT_ESTIMATOR = Stratified()


class MaskedPredictor(Protocol):
    """Anything that scores masked positions given the unmasked ones.

    Called with ``inputs`` ``[N, L, ...]`` (one row per mask; repeated rows of the same
    sequence) and ``masks`` ``Bool[N, L]``; returns ``Float[N, L]`` holding
    ``log p(x_j | x_{not M})`` at every masked position ``j`` (other entries are ignored).
    Each masked position is scored on its own given the same observed set: every position
    outside ``M``, scored or not, is visible.
    """

    def __call__(self, inputs: Tensor, masks: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class RateCurve:
    """S_m in nats per token against the masking rate m / D (NaN where not sampled)."""

    rates: list[float]
    values: list[float]
    sizes: list[int] | None = None  # m, when every sequence has the same D

    def record(self) -> RateCurveRecord:
        """The JSON-ready form: NaN (a rate never drawn) becomes null."""
        return RateCurveRecord(self.rates, [None if math.isnan(v) else v for v in self.values], self.sizes)


@dataclass(frozen=True)
class MLLEstimate:
    """The estimate over a set of sequences.

    ``per_sequence`` keeps autograd history when the predictor has one, so an
    estimate can be an objective. ``variance`` is NaN for a sequence whose design
    gave a stratum fewer than two random draws. ``lengths`` is each row's number of
    scored (target) positions, 0 for a row that adds 0; ``target`` names those positions.
    """

    estimator: str
    per_sequence: Tensor
    variance: Tensor
    lengths: Tensor
    forward_passes: int
    curve: RateCurve
    target: str = "all"

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
    def empty_sequences(self) -> int:
        return int((self.lengths == 0).sum())

    @property
    def nats_per_token(self) -> float:
        """Per scored (target) token."""
        return self.total / self.tokens

    @property
    def bits_per_token(self) -> float:
        return self.nats_per_token / math.log(2)

    def summary(self, reduction: Reduction = "sum") -> dict[str, Any]:
        """JSON-ready numbers; ``reduction`` says whether values are totals or per-sequence means.

        The keys are the estimate's fields of :class:`~maskpolicy.meta.results.schema.ScoreResults`.
        """
        if reduction not in ("sum", "mean"):
            raise MLLError(f"score.reduction must be 'sum' or 'mean', got {reduction!r}")
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
            "per_rate": asdict(self.curve.record()),
            "target": self.target,
            "empty_sequences": self.empty_sequences,
        }

    def score(self, seconds: float | None = None) -> MLLScore:
        """The per-sequence mean as ``maskpolicy-pretrain`` records it; ``seconds`` is how long scoring took."""
        mean = self.summary("mean")
        return MLLScore(estimator=self.estimator, estimate=mean["estimate"], stderr=mean["stderr"],
                        nats_per_token=self.nats_per_token, bits_per_token=self.bits_per_token, reduction="mean",
                        forward_passes=self.forward_passes, sequences=mean["sequences"], tokens=self.tokens,
                        per_rate=self.curve.record(), seconds=seconds, target=self.target,
                        empty_sequences=self.empty_sequences)


def estimate_mll(
    predictor: MaskedPredictor,
    inputs: Tensor,
    scored: Tensor | None = None,
    estimator: Estimator = DEFAULT_ESTIMATOR,
    generator: torch.Generator | None = None,
    batch_size: int = 1024,
    curve_bins: int = 20,
    target: str = "all",
) -> MLLEstimate:
    """Estimates Σ_m S_m(x) for every row of ``inputs`` with one predictor.

    Args:
        predictor: see :class:`MaskedPredictor`.
        inputs: ``[B, L, ...]`` sequences (token ids, or real vectors with ``L`` = D).
        scored: ``Bool[B, L]`` positions that count (not padding or special tokens; a target
            set); all positions when ``None``. Each row's D is its number of scored positions.
            Masks never cover an unscored position, so those are always visible: the sum is
            then ``log p(x_scored | x_unscored)``. A row with D = 0 adds 0; some row needs D > 0.
        estimator: which masks, e.g. ``Stratified(passes=200)`` (see :mod:`.estimators`).
        generator: seeds the masks; a fresh seed-0 generator when ``None``.
        batch_size: masked rows per predictor call; masks of several sequences share calls.
        curve_bins: when rows differ in D, the S_m curve is averaged in this many rate bins.
        target: names the scored positions in the estimate and its errors (``score.target``).
    """
    _check_estimator(estimator)
    scored = _check_inputs(inputs, scored, target)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    lengths = scored.sum(1)
    layout = _lay_out(estimator, scored, lengths, generator)
    values = _masked_means(predictor, inputs, layout.rows, layout.masks, batch_size)
    per_sequence, variance = _combine(values, layout, len(inputs))
    curve = _curve(values.detach(), layout.masks.sum(1), layout.rows, lengths, curve_bins)
    return MLLEstimate(estimator.name, per_sequence, variance, lengths, len(layout.rows), curve, target)


def _check_estimator(estimator: Estimator) -> None:
    if isinstance(estimator, str):  # the spelling of earlier releases: names, and score.estimator=<name>
        raise MLLError(f"estimator {estimator!r} is a name; pass an Estimator object such as Stratified(passes=200), "
                       f"or choose it by config group: score/estimator={estimator}")
    if not isinstance(estimator, Estimator):
        raise MLLError(f"estimator must be an Estimator (a name and a design method), got {estimator!r}")


def _check_inputs(inputs: Tensor, scored: Tensor | None, target: str) -> Tensor:
    if inputs.dim() < 2 or inputs.shape[0] == 0:
        shape = tuple(inputs.shape)
        raise MLLError(f"inputs must be [batch, length, ...] with at least one sequence, got shape {shape}")
    if scored is None:
        scored = torch.ones(inputs.shape[:2], dtype=torch.bool)
    if scored.shape != inputs.shape[:2] or scored.dtype != torch.bool:
        raise MLLError(f"scored must be Bool{list(inputs.shape[:2])}, got {scored.dtype} {list(scored.shape)}")
    if not scored.any():
        raise MLLError(
            f"no sequence has a position to score for target {target!r} (D = 0 in all {len(scored)} rows); "
            "choose a target these sequences contain (score.target=all scores every ordinary token) "
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


def _lay_out(estimator: Estimator, scored: Tensor, lengths: Tensor, generator: torch.Generator) -> _Layout:
    """One design per distinct D > 0, shared by the sequences of that length (masks drawn independently).

    Rows with D = 0 get no masks, no strata, and so a per-sequence value of exactly 0.
    """
    rows, masks, strata, owners, widths, exacts = [], [], [], [], [], []
    offset = 0
    for length in lengths[lengths > 0].unique().tolist():
        members = (lengths == length).nonzero().flatten()
        design = estimator.design(length, len(members), generator)
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
    for start in progress(range(0, len(rows), batch_size), "scoring"):
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
    """S_m averaged over the non-empty sequences: by m when their D are equal, else in rate bins."""
    present = lengths[lengths > 0]
    if bool((present == present[0]).all()):
        length = int(present[0])
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
