"""Masked-prediction tasks on short HMM sequences, and a predictor with the optimal predictor's parametric form.

The setting of Liu, Hsu, Ravikumar & Risteski (NeurIPS 2022, "Masked Prediction: A Parameter
Identifiability View"). A hidden Markov model with K states emits either discrete symbols
or vectors ``x | h ~ N(mu_h, s² I)`` (:mod:`maskpolicy.tasks.tractable.hmm_models`). A
masked-prediction task (:class:`MaskedPredictionTask`) is a set of masking patterns, each
naming the positions the predictor sees and the positions it predicts jointly; the losses of
its patterns add. The optimal predictor of a pattern is the
posterior over the hidden states given the visible tokens followed by the emission model, and
:class:`HMMPredictor` has exactly that form with free parameters (initial distribution,
transition, emissions), so its parameters can be compared with the true ones.

Predictions enumerate the ``K^L`` hidden paths of the pattern's L positions (tiny K and L by
design: exact, vectorised, no recursion). Discrete tasks are scored by the cross-entropy of the
predicted tokens' joint, ``−log q(x_P | x_V)``; Gaussian tasks, as in the paper, by the squared
error of the predicted conditional mean of the tensor product of the predicted tokens,
``E[⊗_{t∈P} x_t | x_V]``. Every tensor carries a leading restart dimension R, so R
independently initialised predictors train as one batch (Adam is elementwise, so a batch of
restarts takes the same steps as R separate runs).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral

import torch
from torch import Tensor, nn

from maskpolicy.tasks.base import TaskError
from maskpolicy.tasks.tractable.hmm_models import HMM, HMMParameters, check_size, stationary_distribution

MAX_PATHS = 200_000        # K^L hidden paths enumerated per prediction
MAX_SEQUENCES = 1_000_000  # V^L sequences enumerated for a discrete model's exact population


# -- masking patterns and tasks -------------------------------------------------------


@dataclass(frozen=True)
class MaskingPattern:
    """Which positions (0-based) the predictor sees and which it predicts jointly."""

    visible: tuple[int, ...]
    predicted: tuple[int, ...]

    def __post_init__(self) -> None:
        for role in ("visible", "predicted"):
            positions = getattr(self, role)
            if isinstance(positions, str) or not isinstance(positions, Sequence) or not all(
                    isinstance(p, Integral) and not isinstance(p, bool) and p >= 0 for p in positions):
                raise TaskError(f"masking pattern {role} positions must be a list of 0-based integers, "
                                f"got {positions!r}")
            if len(set(positions)) != len(positions):
                raise TaskError(f"masking pattern {role} positions {list(positions)} repeat a position")
            object.__setattr__(self, role, tuple(int(p) for p in positions))
        if not self.predicted:
            raise TaskError(f"masking pattern with visible={list(self.visible)} predicts nothing: "
                            "give at least one predicted position")
        if not self.visible:
            raise TaskError(f"masking pattern predicting {list(self.predicted)} leaves nothing visible: the predictor "
                            "conditions on visible tokens (with none it only fits a marginal); give a visible position")
        shared = sorted(set(self.visible) & set(self.predicted))
        if shared:
            raise TaskError(f"masking pattern positions {shared} are both visible and predicted; a predicted token "
                            "must be masked")

    @property
    def length(self) -> int:
        """Positions of the sequence the pattern touches: one past its last position."""
        return max(self.visible + self.predicted) + 1

    @property
    def label(self) -> str:
        """The paper's notation, 1-based: ``x1 → x2⊗x3``."""
        def tokens(positions: tuple[int, ...]) -> str:
            return "⊗".join(f"x{p + 1}" for p in positions)
        return f"{tokens(self.visible)} → {tokens(self.predicted)}"


class MaskedPredictionTask:
    """A masking policy of the HMM task: one or more masking patterns whose losses add.

    Args:
        patterns: each a mapping ``{visible: [...], predicted: [...]}`` (or a :class:`MaskingPattern`).
        name: a short name for tables and plots (defaults to the patterns' labels).
    """

    def __init__(self, patterns: Sequence[Mapping | MaskingPattern], name: str | None = None) -> None:
        if isinstance(patterns, Mapping | MaskingPattern | str) or not isinstance(patterns, Sequence) or not patterns:
            raise TaskError(f"a masked-prediction task needs a non-empty list of patterns, got {patterns!r}")
        self.patterns = tuple(_pattern(p) for p in patterns)
        if len(set(self.patterns)) != len(self.patterns):
            raise TaskError(f"masked-prediction task repeats a pattern: {[p.label for p in self.patterns]}")
        self.name = name or self.label

    @property
    def label(self) -> str:
        return " & ".join(pattern.label for pattern in self.patterns)

    @property
    def length(self) -> int:
        return max(pattern.length for pattern in self.patterns)


def _pattern(pattern: Mapping | MaskingPattern) -> MaskingPattern:
    if isinstance(pattern, MaskingPattern):
        return pattern
    if not isinstance(pattern, Mapping) or set(pattern) != {"visible", "predicted"}:
        raise TaskError(f"a masking pattern is a mapping with keys visible and predicted, got {pattern!r}")
    return MaskingPattern(tuple(pattern["visible"]), tuple(pattern["predicted"]))


def hidden_paths(n_states: int, length: int) -> Tensor:
    """Every hidden path, ``Long[K^L, L]``, the last position varying fastest (the order of a state grid's cells)."""
    _check_paths(n_states, length)
    grids = torch.meshgrid(*[torch.arange(n_states)] * length, indexing="ij")
    return torch.stack([grid.reshape(-1) for grid in grids], dim=1)


def _check_paths(n_states: int, length: int) -> None:
    if n_states**length > MAX_PATHS:
        raise TaskError(f"{n_states} states over {length} positions make {n_states**length} hidden paths "
                        f"(the limit is {MAX_PATHS}); use fewer states or shorter patterns")


def state_grid(params: HMMParameters, log_lik: Tensor, positions: Sequence[int],
               evidence: Sequence[int] | None = None) -> Tensor:
    """``log p(h_t, t ∈ positions) + Σ_{t ∈ evidence} log p(x_t | h_t)`` on a grid of states, ``[R, N, K, …, K]``.

    One grid axis per position of ``positions`` (sorted), the hidden states between them summed out
    exactly: the chain goes from one to the next by the matrix power ``T^gap``, and starts at the first
    with ``initial · T^first``, both in log space (:func:`_log_product`). ``evidence`` (default: all
    of ``positions``) must be among them. ``log_lik`` ``[R, N, L, K]``
    (:meth:`HMMParameters.log_likelihoods`). Built from broadcast sums — no gathers over paths, no
    BLAS matrix products — so the result is bit-for-bit reproducible.
    """
    restarts, rows, _, k = log_lik.shape
    used = sorted(positions)
    evidence = used if evidence is None else evidence
    _check_paths(k, len(used))
    log_transition = params.log_transition
    grid = params.log_initial
    for _ in range(used[0]):
        grid = (grid[:, :, None] + log_transition).logsumexp(1)
    for i in range(1, len(used)):
        log_step = log_transition
        for _ in range(used[i] - used[i - 1] - 1):
            log_step = _log_product(log_step, log_transition)
        grid = grid[..., None] + log_step.view(restarts, *([1] * (i - 1)), k, k)
    grid = grid[:, None]
    for t in evidence:
        shape = [restarts, rows] + [1] * len(used)
        shape[2 + used.index(t)] = k
        grid = grid + log_lik[:, :, t].reshape(shape)
    return grid


def _log_product(log_a: Tensor, log_b: Tensor) -> Tensor:
    """``log(exp(log_a) @ exp(log_b))`` over the last two axes, in log space, as a broadcast logsumexp (no BLAS).

    In log space because a predictor can drive transition logits to −1000s: a power computed from
    probabilities then underflows to 0 along paths that the adjacent-position grid (which uses the
    log-probabilities directly) still counts, the predicted conditional no longer sums to 1, and
    training exploits it (a cross-entropy of −984 nats against the truth's 0.99 was measured).
    """
    return (log_a[..., :, :, None] + log_b[..., None, :, :]).logsumexp(-2)


def _log_lik(params: HMMParameters, pattern: MaskingPattern, values: Tensor, log_lik: Tensor | None) -> Tensor:
    if log_lik is None:
        return params.log_likelihoods(values[:, :pattern.length])
    return log_lik[:, :, :pattern.length]


def predicted_log_prob(params: HMMParameters, pattern: MaskingPattern, values: Tensor,
                       log_lik: Tensor | None = None) -> Tensor:
    """Discrete: ``log q(x_P | x_V)`` of each row's predicted tokens jointly, ``[R, N]``; ``values`` ``Long[N, L]``.

    The ratio ``p(x_{V∪P}) / p(x_V)``, each a sum over the hidden states. ``log_lik``: the rows'
    :meth:`~HMMParameters.log_likelihoods` when the caller has them (over at least the pattern's positions).
    """
    log_lik = _log_lik(params, pattern, values, log_lik)
    both = state_grid(params, log_lik, pattern.visible + pattern.predicted)
    visible = state_grid(params, log_lik, pattern.visible)
    return both.flatten(2).logsumexp(-1) - visible.flatten(2).logsumexp(-1)


def predicted_states_posterior(params: HMMParameters, pattern: MaskingPattern, values: Tensor,
                               log_lik: Tensor | None = None) -> Tensor:
    """``p(h_P | x_V)``, ``[R, N, K, …, K]``: one axis per predicted position, in the pattern's order."""
    log_lik = _log_lik(params, pattern, values, log_lik)
    used = sorted(pattern.visible + pattern.predicted)
    grid = state_grid(params, log_lik, used, pattern.visible)
    flat = grid.flatten(2)
    # softmax by hand: torch's kernel is slow on a short last axis (K^|V∪P| cells); the shift is a constant
    weights = (flat - flat.detach().amax(-1, keepdim=True)).exp()
    posterior = (weights / weights.sum(-1, keepdim=True)).view(grid.shape)
    marginal = posterior.sum(tuple(2 + i for i, t in enumerate(used) if t in pattern.visible))
    order = sorted(pattern.predicted)
    return marginal.permute(0, 1, *(2 + order.index(t) for t in pattern.predicted))


def predicted_mean(params: HMMParameters, pattern: MaskingPattern, values: Tensor,
                   log_lik: Tensor | None = None) -> Tensor:
    """Gaussian: ``E[⊗_{t∈P} x_t | x_V]`` flattened, ``[R, N, d^|P|]``; ``values`` ``Float[N, L, d]``.

    Given the hidden states the predicted tokens are independent, so the mean of their tensor
    product is ``Σ_{h_P} p(h_P | x_V) ⊗_t mu_{h_t}``, contracted one predicted axis at a time
    (last first) by broadcast sums — not matmuls, whose BLAS kernels may round differently run to
    run (memory alignment), which training amplifies; this keeps a fixed seed's result bit for bit.
    """
    weights = predicted_states_posterior(params, pattern, values, log_lik)   # [R, N, K_1, …, K_m]
    means = params.emission                                           # [R, K, d]
    restarts, k, dim = means.shape
    m = len(pattern.predicted)
    moment = None                                                     # [R, N, K_1 … K_j, d^(m−j)] as we go
    for j in range(m - 1, -1, -1):
        mu = means.view(restarts, 1, *([1] * j), k, dim)
        if moment is None:
            moment = (weights[..., None] * mu).sum(-2)
        else:
            moment = (moment[..., None, :] * mu[..., None]).sum(-3).flatten(-2)
    return moment


def product_of_tokens(values: Tensor, positions: Sequence[int]) -> Tensor:
    """``⊗_{t ∈ positions} x_t`` flattened, ``Float[N, d^|positions|]``, from ``values`` ``Float[N, L, d]``."""
    product = values[:, positions[0]]
    for t in positions[1:]:
        product = (product[:, :, None] * values[:, t][:, None, :]).flatten(1)
    return product


def sequence_log_prob(params: HMMParameters, values: Tensor) -> Tensor:
    """Discrete: exact ``log p(x)`` of every row ``Long[N, L]`` (all positions observed), ``[R, N]``."""
    return state_grid(params, params.log_likelihoods(values), range(values.shape[1])).flatten(2).logsumexp(-1)


# -- training data: the exact population or samples -------------------------------------


@dataclass(frozen=True)
class MaskedPredictionData:
    """Rows to train on, their weights (summing to 1) and, for Gaussian tasks, each pattern's regression targets.

    ``values``: ``Long[N, L]`` or ``Float64[N, L, d]``; ``targets[i]``: ``Float64[N, d^|P_i|]``.
    """

    values: Tensor
    weights: Tensor
    targets: tuple[Tensor, ...] = ()
    source: str = "population"


def masked_prediction_data(model: HMM, task: MaskedPredictionTask, source: str = "population",
                           n_samples: int = 2000, generator: torch.Generator | None = None) -> MaskedPredictionData:
    """Training data for ``task`` on sequences of ``model``.

    ``source="population"``: a discrete model's every sequence with its exact probability (no
    sampling noise); a Gaussian model's ``n_samples`` sampled rows with the exact conditional
    means under the true parameters as targets. ``source="samples"``: ``n_samples`` sampled
    sequences (discrete: their empirical distribution; Gaussian: the sampled tokens as targets).
    """
    if source not in ("population", "samples"):
        raise TaskError(f"training data source must be 'population' or 'samples', got {source!r}")
    check_size("n_samples", n_samples, 1)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    length = task.length
    if model.kind == "discrete":
        values = all_sequences(model.n_symbols, length)
        if source == "population":
            weights = sequence_log_prob(model.parameters(), values)[0].exp()
        else:
            index = _sequence_index(model.sample(n_samples, length, generator), model.n_symbols)
            weights = torch.bincount(index, minlength=len(values)).double() / n_samples
        return MaskedPredictionData(values, weights, source=source)
    values = model.sample(n_samples, length, generator)
    weights = torch.full((n_samples,), 1.0 / n_samples, dtype=torch.float64)
    if source == "population":
        targets = tuple(predicted_mean(model.parameters(), p, values)[0] for p in task.patterns)
    else:
        targets = tuple(product_of_tokens(values, p.predicted) for p in task.patterns)
    return MaskedPredictionData(values, weights, targets, source)


def all_sequences(n_symbols: int, length: int) -> Tensor:
    """Every sequence of ``length`` symbols, ``Long[V^L, L]``, in the order of :func:`_sequence_index`."""
    if n_symbols**length > MAX_SEQUENCES:
        raise TaskError(f"{n_symbols} symbols over {length} positions make {n_symbols**length} sequences (the limit is "
                        f"{MAX_SEQUENCES}); use samples-free population data only for tiny vocabularies")
    return torch.tensor(list(itertools.product(range(n_symbols), repeat=length)), dtype=torch.long)


def _sequence_index(values: Tensor, n_symbols: int) -> Tensor:
    powers = n_symbols ** torch.arange(values.shape[1] - 1, -1, -1)
    return (values * powers).sum(1)


def masked_prediction_loss(params: HMMParameters, task: MaskedPredictionTask, data: MaskedPredictionData) -> Tensor:
    """The task's loss per restart, ``[R]``: summed over patterns, weighted over rows.

    Discrete: cross-entropy ``−log q(x_P | x_V)``. Gaussian: ``‖f(x_V) − target‖²``.
    """
    total = 0.0
    log_lik = params.log_likelihoods(data.values[:, :task.length])   # once for every pattern
    for i, pattern in enumerate(task.patterns):
        if params.kind == "discrete":
            row_loss = -predicted_log_prob(params, pattern, data.values, log_lik)
        else:
            row_loss = (predicted_mean(params, pattern, data.values, log_lik) - data.targets[i]).pow(2).sum(-1)
        total = total + (row_loss * data.weights).sum(-1)
    return total


# -- the predictor ----------------------------------------------------------------------


class HMMPredictor(nn.Module):
    """R masked predictors with the optimal predictor's parametric form, one per restart.

    Free parameters: initial and transition logits, and emission logits (discrete) or means
    (Gaussian; the noise scale is known). ``init_scale`` is the standard deviation of the
    random start: of the logits, or of the means (pass the data's scale). With
    ``stationary_start`` the initial distribution is not free but the stationary distribution
    of the predictor's own transition (the data's sequences are stationary).
    """

    def __init__(self, kind: str, n_states: int, n_outputs: int, restarts: int, generator: torch.Generator,
                 init_scale: float = 1.0, noise_std: float = 1.0, stationary_start: bool = False) -> None:
        super().__init__()
        if kind not in ("discrete", "gaussian"):
            raise TaskError(f"predictor kind must be 'discrete' or 'gaussian', got {kind!r}")
        check_size("restarts", restarts, 1)
        self.kind, self.noise_std, self.stationary_start = kind, float(noise_std), bool(stationary_start)

        def draw(*shape: int, scale: float = 1.0) -> nn.Parameter:
            return nn.Parameter(scale * torch.randn(restarts, *shape, generator=generator, dtype=torch.float64))

        self.initial_logits = draw(n_states)
        self.transition_logits = draw(n_states, n_states)
        self.emission_params = draw(n_states, n_outputs, scale=init_scale)

    @classmethod
    def at(cls, model: HMM) -> HMMPredictor:
        """One predictor set to ``model``'s parameters: the optimal predictor of every task."""
        n_outputs = model.n_symbols if model.kind == "discrete" else model.dim
        predictor = cls(model.kind, model.n_states, n_outputs, 1, torch.Generator().manual_seed(0),
                        noise_std=getattr(model, "noise_std", 1.0))
        params = model.parameters()
        with torch.no_grad():
            predictor.initial_logits.copy_(params.log_initial)
            predictor.transition_logits.copy_(params.log_transition)
            predictor.emission_params.copy_(params.emission)
        return predictor

    def forward(self) -> HMMParameters:
        emission = self.emission_params.log_softmax(-1) if self.kind == "discrete" else self.emission_params
        transition = self.transition_logits.log_softmax(-1)
        initial = stationary_distribution(transition.exp()).log() if self.stationary_start else (
            self.initial_logits.log_softmax(-1))
        return HMMParameters(self.kind, initial, transition, emission, self.noise_std)
