"""Reading parameters off a trained predictor: states matched by the Hungarian method, errors, a verdict."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from maskpolicy.tasks.tractable.hmm_models import HMM, HMMParameters

IDENTIFIED, NOT_IDENTIFIED, INCONCLUSIVE = "identified", "not identified", "inconclusive"


@dataclass(frozen=True)
class Recovery:
    """One restart's parameters against the truth, after matching its states to the true ones.

    Errors are the largest absolute entry difference: of the initial distribution, the
    transition matrix, and the emission rows (probabilities) or means.
    """

    permutation: list[int]
    initial_error: float
    transition_error: float
    emission_error: float

    @property
    def error(self) -> float:
        """The recovery error of the transition and emission parameters (the larger of the two)."""
        return max(self.transition_error, self.emission_error)


def true_parameters(model: HMM) -> tuple[Tensor, Tensor, Tensor]:
    """``(initial [K], transition [K, K], emission [K, V] probabilities or means [K, d])``."""
    return model.initial, model.transition, model.emission if model.kind == "discrete" else model.means


def read_parameters(params: HMMParameters) -> tuple[Tensor, Tensor, Tensor]:
    """A predictor's parameters as probabilities (and means), each with the leading restart dimension."""
    emission = params.emission.exp() if params.kind == "discrete" else params.emission
    return params.log_initial.exp(), params.log_transition.exp(), emission


def match_states(true_emission: Tensor, estimated_emission: Tensor) -> list[int]:
    """``permutation[i]``: the estimated state matched to true state ``i`` (least squared emission distance)."""
    cost = torch.cdist(true_emission, estimated_emission).pow(2)
    _, columns = linear_sum_assignment(cost.detach().numpy())
    return [int(c) for c in columns]


def recover(reference: tuple[Tensor, Tensor, Tensor], params: HMMParameters) -> list[Recovery]:
    """Every restart of ``params`` against ``reference`` ``(initial, transition, emission)``.

    The reference is the truth (:func:`true_parameters`) or one restart's own parameters
    (:func:`read_parameters` of one restart), to see whether restarts agree with each other.
    """
    initial, transition, emission = reference
    found = [tensor.detach() for tensor in read_parameters(params)]
    recoveries = []
    for initial_r, transition_r, emission_r in zip(*found, strict=True):
        order = match_states(emission, emission_r)
        recoveries.append(Recovery(
            order,
            float((initial_r[order] - initial).abs().max()),
            float((transition_r[order][:, order] - transition).abs().max()),
            float((emission_r[order] - emission).abs().max()),
        ))
    return recoveries


def verdict(reached: list[bool], errors: list[float], recovery_tolerance: float) -> str:
    """Identified when every restart at the optimum recovers the parameters; not when one at the optimum does not."""
    at_optimum = [error for error, ok in zip(errors, reached, strict=True) if ok]
    if not at_optimum:
        return INCONCLUSIVE
    return IDENTIFIED if max(at_optimum) <= recovery_tolerance else NOT_IDENTIFIED
