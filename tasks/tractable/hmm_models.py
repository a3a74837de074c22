"""Hidden Markov models with discrete or conditionally Gaussian emissions, their parameters checked.

The generating models of the identifiability experiment (:mod:`maskpolicy.tasks.tractable.masked_hmm`):
:class:`DiscreteHMM` (emission rows ``[K, V]``) and :class:`GaussianHMM` (``x | h ~ N(mu_h, s² I)``,
means ``[K, d]``), both starting from their stationary distribution by default. Constructing
one checks what the experiment needs: stochastic rows, an ergodic chain (an error), and the
paper's conditions — K at most the vocabulary size or dimension, full-rank matrices (warnings
that name the condition). :class:`HMMParameters` holds any HMM's parameters with a leading
restart dimension, the form both these models and the trained predictors share.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch
from torch import Tensor

from maskpolicy.tasks.base import TaskError
from maskpolicy.tasks.tractable.hmm import dirichlet_rows

ROW_SUM_TOLERANCE = 1e-6
SINKHORN_STEPS = 200
STATIONARY_SQUARINGS = 40
STATIONARY_AGREEMENT = 1e-15   # rows of T^(2^n) this close (a few float64 ulps): the power has converged
WELL_CONDITIONED = 1e-2    # σ_min / σ_max below which a matrix counts as rank-deficient at float64 training precision

# -- parameters, batched over restarts -------------------------------------------------


@dataclass(frozen=True)
class HMMParameters:
    """An HMM's parameters with a leading restart dimension R.

    ``log_initial`` ``[R, K]``, ``log_transition`` ``[R, K, K]`` (rows: from-state), and
    ``emission``: ``[R, K, V]`` log-probabilities (discrete) or ``[R, K, d]`` means (Gaussian).
    """

    kind: str
    log_initial: Tensor
    log_transition: Tensor
    emission: Tensor
    noise_std: float = 1.0

    @property
    def n_states(self) -> int:
        return self.log_transition.shape[-1]

    def log_likelihoods(self, values: Tensor) -> Tensor:
        """``log p(x_t | h_t = k)`` for every row and position, ``[R, N, L, K]``.

        ``values`` ``Long[N, L]`` (discrete) or ``Float[N, L, d]`` (Gaussian: ``(x·mu_k − ‖mu_k‖²/2) / s²``;
        the terms that do not depend on the state, ``−‖x‖²/2s²`` and the normaliser, cancel in every
        posterior and are dropped).
        """
        if self.kind == "discrete":
            return self.emission[:, :, values].permute(0, 2, 3, 1)
        means = self.emission[:, None, None, :, :]                              # [R, 1, 1, K, d]
        # broadcast sums, not a matmul (BLAS rounding can change with memory alignment)
        return ((values[None, :, :, None, :] * means).sum(-1) - 0.5 * means.pow(2).sum(-1)) / self.noise_std**2


# -- the generating models --------------------------------------------------------------


class _HMM:
    """What both generating models share: checked initial and transition, stationary start by default."""

    kind: str

    def __init__(self, transition: Tensor | Sequence, initial: Tensor | Sequence | None) -> None:
        self.transition = _stochastic(transition, "transition")
        if self.transition.dim() != 2 or self.transition.shape[0] != self.transition.shape[1]:
            raise TaskError(f"the transition matrix must be square [K, K], got {list(self.transition.shape)}")
        _check_ergodic(self.transition)
        _check_positive(self.transition, "transition")
        self.initial = stationary_distribution(self.transition) if initial is None else _stochastic(initial, "initial")
        if self.initial.shape != (self.n_states,):
            raise TaskError(f"the initial distribution must have K={self.n_states} entries, "
                            f"got {list(self.initial.shape)}")
        if not full_rank(self.transition):
            warnings.warn(f"the transition matrix is (nearly) rank-deficient (σ_min/σ_max < {WELL_CONDITIONED}): "
                          "the paper's identifiability results assume a full-rank transition", stacklevel=3)

    @property
    def n_states(self) -> int:
        return self.transition.shape[0]

    @property
    def stationary_start(self) -> bool:
        """Whether the chain starts from its stationary distribution (the data are stationary)."""
        return bool(torch.allclose(self.initial, stationary_distribution(self.transition), atol=1e-9))

    def _chain_conditions(self) -> dict[str, bool]:
        """Facts about the chain some statements assume (see :func:`other_square_roots`)."""
        return {"stationary start": self.stationary_start,
                "T² has another stochastic square root": bool(other_square_roots(self.transition))}

    def _parameters(self, emission: Tensor, noise_std: float = 1.0) -> HMMParameters:
        return HMMParameters(self.kind, self.initial.log()[None], self.transition.log()[None], emission[None],
                             noise_std)

    def _hidden_states(self, n: int, length: int, generator: torch.Generator) -> Tensor:
        states = torch.empty(n, length, dtype=torch.long)
        state = torch.multinomial(self.initial.expand(n, -1), 1, generator=generator).squeeze(1)
        # the chain is sequential: each state depends on the previous one, so time is a loop
        for t in range(length):
            states[:, t] = state
            state = torch.multinomial(self.transition[state], 1, generator=generator).squeeze(1)
        return states


class DiscreteHMM(_HMM):
    """An HMM emitting symbols ``0 … V−1``: ``transition`` ``[K, K]``, ``emission`` ``[K, V]``, rows stochastic.

    ``initial`` defaults to the transition's stationary distribution (a stationary sequence).
    """

    kind = "discrete"

    def __init__(self, transition: Tensor | Sequence, emission: Tensor | Sequence,
                 initial: Tensor | Sequence | None = None) -> None:
        super().__init__(transition, initial)
        self.emission = _check_positive(_stochastic(emission, "emission"), "emission")
        if self.emission.dim() != 2 or self.emission.shape[0] != self.n_states:
            raise TaskError(f"the emission matrix must have K={self.n_states} rows (one per state), "
                            f"got {list(self.emission.shape)}")
        if self.n_states > self.n_symbols:
            warnings.warn(f"n_states={self.n_states} > n_symbols={self.n_symbols}: the emission matrix cannot have "
                          "full column rank, which the paper's identifiability results for discrete HMMs assume "
                          "(K ≤ V); measurements here test a case the theorems do not cover", stacklevel=2)
        elif not full_rank(self.emission):
            warnings.warn(f"the emission matrix is (nearly) rank-deficient (σ_min/σ_max < {WELL_CONDITIONED}): the "
                          "paper's identifiability results for discrete HMMs assume linearly independent emission "
                          "distributions", stacklevel=2)

    @property
    def n_symbols(self) -> int:
        return self.emission.shape[1]

    def parameters(self) -> HMMParameters:
        return self._parameters(self.emission.log())

    def sample(self, n: int, length: int, generator: torch.Generator) -> Tensor:
        """``n`` sequences, ``Long[n, length]``."""
        states = self._hidden_states(n, length, generator)
        return torch.multinomial(self.emission[states.flatten()], 1, generator=generator).view(n, length)

    def conditions(self) -> dict[str, bool]:
        """The paper's generic conditions, checked on these parameters."""
        return {"K <= V": self.n_states <= self.n_symbols, "emission full column rank": full_rank(self.emission),
                "transition full rank": full_rank(self.transition), **self._chain_conditions()}


class GaussianHMM(_HMM):
    """An HMM emitting ``x | h ~ N(means[h], noise_std² I)``: ``transition`` ``[K, K]``, ``means`` ``[K, d]``.

    ``noise_std`` is known to the predictor (the paper's G-HMM has a fixed, known covariance).
    """

    kind = "gaussian"

    def __init__(self, transition: Tensor | Sequence, means: Tensor | Sequence, noise_std: float = 1.0,
                 initial: Tensor | Sequence | None = None) -> None:
        super().__init__(transition, initial)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.dim() != 2 or self.means.shape[0] != self.n_states or not torch.isfinite(self.means).all():
            raise TaskError(f"means must be a finite [K={self.n_states}, d] matrix, got {list(self.means.shape)}")
        if not isinstance(noise_std, Real) or not math.isfinite(noise_std) or noise_std <= 0:
            raise TaskError(f"noise_std must be a finite number > 0, got {noise_std!r}")
        self.noise_std = float(noise_std)
        if self.n_states > self.dim:
            warnings.warn(f"n_states={self.n_states} > dim={self.dim}: the means cannot be linearly independent, "
                          "which the paper's G-HMM results assume; measurements here test a case they do not cover",
                          stacklevel=2)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def parameters(self) -> HMMParameters:
        return self._parameters(self.means, self.noise_std)

    def sample(self, n: int, length: int, generator: torch.Generator) -> Tensor:
        """``n`` sequences, ``Float64[n, length, d]``."""
        states = self._hidden_states(n, length, generator)
        noise = torch.randn(n, length, self.dim, generator=generator, dtype=torch.float64)
        return self.means[states] + self.noise_std * noise

    def conditions(self) -> dict[str, bool]:
        return {"K <= d": self.n_states <= self.dim, "means linearly independent": full_rank(self.means),
                "transition full rank": full_rank(self.transition), **self._chain_conditions()}


def random_discrete_hmm(n_states: int = 3, n_symbols: int = 4, seed: int = 0, concentration: float = 0.5,
                        stickiness: float = 0.5, balanced: bool = True) -> DiscreteHMM:
    """Emission rows from a symmetric Dirichlet (floored, as :class:`HMMTask` draws them).

    The transition is :func:`sticky_transition`'s; the start is its stationary distribution
    (uniform when ``balanced``).
    """
    check_size("n_symbols", n_symbols, 2)
    generator = torch.Generator().manual_seed(_seed(seed))
    transition = sticky_transition(n_states, stickiness, concentration, generator, balanced)
    return DiscreteHMM(transition, dirichlet_rows(n_states, n_symbols, concentration, generator))


def random_gaussian_hmm(n_states: int = 3, dim: int = 3, seed: int = 0, concentration: float = 0.5,
                        stickiness: float = 0.5, separation: float = 2.0, noise_std: float = 1.0,
                        balanced: bool = True) -> GaussianHMM:
    """Means drawn ``N(0, separation² I)``; see :func:`sticky_transition`."""
    check_size("dim", dim, 1)
    generator = torch.Generator().manual_seed(_seed(seed))
    transition = sticky_transition(n_states, stickiness, concentration, generator, balanced)
    means = separation * torch.randn(n_states, dim, generator=generator, dtype=torch.float64)
    return GaussianHMM(transition, means, noise_std)


def sticky_transition(n_states: int, stickiness: float, concentration: float, generator: torch.Generator,
                      balanced: bool = True) -> Tensor:
    """``stickiness · I + (1 − stickiness) · D``, ``Float64[K, K]``, D Dirichlet rows.

    ``balanced``: D is made doubly stochastic by Sinkhorn's iteration, so the stationary
    distribution is uniform (no state so rare that its parameters are barely constrained);
    otherwise D's rows are left as drawn — a general transition with a non-uniform stationary
    distribution. Pure Dirichlet rows are often nearly singular (two similar rows), which leaves
    the masked loss almost flat along wrong parameters; the sticky part keeps the transition well
    conditioned.
    """
    check_size("n_states", n_states, 1)
    if not isinstance(stickiness, Real) or not 0 <= stickiness < 1:
        raise TaskError(f"stickiness must be a number in [0, 1) (the weight of staying in a state), "
                        f"got {stickiness!r}")
    if not isinstance(balanced, bool):
        raise TaskError(f"balanced must be true or false, got {balanced!r}")
    rows = dirichlet_rows(n_states, n_states, _concentration(concentration), generator)
    for _ in range(SINKHORN_STEPS if balanced else 0):
        rows = rows / rows.sum(0, keepdim=True)
        rows = rows / rows.sum(1, keepdim=True)
    return stickiness * torch.eye(n_states, dtype=torch.float64) + (1 - stickiness) * rows


def full_rank(matrix: Tensor) -> bool:
    """Rank K (the row count: one row per hidden state) with room to spare: ``σ_K / σ_1 ≥ WELL_CONDITIONED``.

    A nearly singular matrix is full-rank in exact arithmetic, but the masked loss is then so
    flat along wrong parameters that training cannot tell them from the true ones.
    """
    singular = torch.linalg.svdvals(matrix)
    rows = matrix.shape[0]
    return len(singular) >= rows and bool(singular[rows - 1] >= WELL_CONDITIONED * singular[0])


def other_square_roots(transition: Tensor, tolerance: float = 1e-9) -> list[Tensor]:
    """The stochastic matrices other than ``transition`` whose square is ``transition²``, ``[K, K]`` each.

    Claim 1 of the paper (NeurIPS numbering): distinct stochastic transitions can share a matrix
    power, so the two-step transition — all that ``x1 → x3`` sees of the chain — need not fix the
    one-step one. Found by flipping the signs of the square roots of ``T²``'s eigenvalues (a
    complex-conjugate pair together, so the result stays real) and keeping the results that are
    stochastic (rows summing to 1, entries ≥ −``tolerance``, clipped at 0). Complete when ``T``
    is diagonalisable with eigenvalues of distinct squares (the generic case; otherwise ``T²`` has
    a continuum of square roots and this lists only some). A check of a model, not a training step:
    it may use LAPACK.
    """
    matrix = transition.detach().numpy()
    values, vectors = np.linalg.eig(matrix)
    inverse = np.linalg.inv(vectors)
    groups: list[list[int]] = []
    for i, value in enumerate(values):
        if value.imag < -tolerance:
            continue   # flipped with its conjugate
        partner = [j for j, other in enumerate(values) if j != i and value.imag > tolerance
                   and abs(other - value.conjugate()) <= tolerance]
        groups.append([i, *partner[:1]])
    roots = []
    for signs in itertools.product((1.0, -1.0), repeat=len(groups)):
        if all(sign == 1.0 for sign in signs):
            continue
        flipped = values.copy()
        for sign, group in zip(signs, groups, strict=True):
            flipped[group] = sign * values[group]
        root = (vectors * flipped) @ inverse
        if np.abs(root.imag).max() > tolerance:
            continue
        root = root.real
        if root.min() < -tolerance or np.abs(root.sum(1) - 1).max() > tolerance:
            continue
        roots.append(torch.as_tensor(np.clip(root, 0.0, None), dtype=torch.float64))
    return roots


def stationary_distribution(transition: Tensor) -> Tensor:
    """The stationary distribution of ``[..., K, K]`` transitions, ``[..., K]``: a row of ``T^(2^n)``.

    Squares until every row of the power agrees to ``STATIONARY_AGREEMENT`` (one more squaring would
    change nothing but rounding; a tighter bound than a few ulps is never met by some chains, whose
    rows stay two ulps apart, and then costs every squaring), at most ``STATIONARY_SQUARINGS`` times:
    converges for an ergodic chain whose spectral gap is ≳ 1e-11, is differentiable (a predictor can
    tie its start to its own transition), and uses broadcast sums rather than LAPACK or BLAS, whose rounding can change
    from run to run with memory alignment — which training then amplifies; this keeps a fixed
    seed's result bit for bit. Stopping early keeps the cost near ``log2(log ε / log |λ₂|)``
    squarings instead of the worst case.
    """
    for _ in range(STATIONARY_SQUARINGS):
        transition = (transition[..., :, :, None] * transition[..., None, :, :]).sum(-2)
        transition = transition / transition.sum(-1, keepdim=True)
        if float((transition - transition[..., :1, :]).detach().abs().max()) <= STATIONARY_AGREEMENT:
            break
    return transition[..., 0, :]


def _check_ergodic(transition: Tensor) -> None:
    """An ergodic chain (irreducible and aperiodic) has one stationary distribution, positive, that ``T^n`` reaches.

    Ergodic iff ``T^n > 0`` for ``n = (K−1)² + 1`` (Wielandt). Otherwise the error says why: several
    closed classes (the stationary distribution is not unique), transient states (it is zero there,
    and the predictor works in log space), or a period (``T^n`` never converges).
    """
    k = transition.shape[0]
    step = (transition > 0).double()
    if (torch.linalg.matrix_power(step, (k - 1) ** 2 + 1) > 0).all():
        return
    reach = torch.linalg.matrix_power(step + torch.eye(k, dtype=torch.float64), max(k - 1, 1)) > 0
    same_class = reach & reach.T
    closed = {tuple(same_class[i].nonzero().flatten().tolist()) for i in range(k)
              if bool((reach[i] <= same_class[i]).all())}
    if len(closed) > 1:
        raise TaskError(f"the transition matrix has {len(closed)} closed classes of states "
                        f"({', '.join(str(list(c)) for c in sorted(closed))}): its stationary distribution is not "
                        "unique (every mixture of the classes' own is stationary), so neither the data's start nor "
                        "a stationary predictor is defined. Connect the classes (give every state a path to every "
                        "other)")
    if len(next(iter(closed))) < k:
        raise TaskError("the transition matrix has transient states (states the chain leaves for good): its "
                        "stationary distribution is zero there, which the log-space predictor cannot represent. "
                        "Give every state a path back from every other")
    raise TaskError("the transition matrix is periodic (irreducible, but the chain cycles with a period): T^n never "
                    "converges, so the chain never forgets its start. Give some state a self-loop")


def _stochastic(matrix: Tensor | Sequence, what: str) -> Tensor:
    matrix = torch.as_tensor(matrix, dtype=torch.float64)
    if matrix.dim() not in (1, 2) or matrix.numel() == 0 or not torch.isfinite(matrix).all():
        raise TaskError(f"the {what} must be a finite probability vector or matrix, got shape {list(matrix.shape)}")
    if (matrix < 0).any() or ((matrix.sum(-1) - 1).abs() > ROW_SUM_TOLERANCE).any():
        raise TaskError(f"every row of the {what} must be a probability distribution (non-negative, summing to 1)")
    return matrix


def _check_positive(matrix: Tensor, what: str) -> Tensor:
    if (matrix == 0).any():
        raise TaskError(f"the {what} has zero entries: the predictor works in log space; floor them (e.g. 1e-3) "
                        "and renormalise")
    return matrix


def check_size(knob: str, value: object, low: int) -> None:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < low:
        raise TaskError(f"{knob} must be an integer ≥ {low}, got {value!r}")


def _seed(seed: object) -> int:
    if not isinstance(seed, Integral) or isinstance(seed, bool) or seed < 0:
        raise TaskError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _concentration(value: object) -> float:
    if not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise TaskError(f"concentration must be a finite number > 0, got {value!r}")
    return float(value)


HMM = DiscreteHMM | GaussianHMM
