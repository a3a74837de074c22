"""Masked-prediction tasks on HMM sequences: exact predictions, the predictor's form, training data, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskpolicy.tasks.base import TaskError
from maskpolicy.tasks.tractable.hmm import HMMTask
from maskpolicy.tasks.tractable.hmm_models import (
    DiscreteHMM,
    GaussianHMM,
    random_discrete_hmm,
    random_gaussian_hmm,
    stationary_distribution,
)
from maskpolicy.tasks.tractable.masked_hmm import (
    HMMPredictor,
    MaskedPredictionTask,
    MaskingPattern,
    hidden_paths,
    masked_prediction_data,
    masked_prediction_loss,
    predicted_log_prob,
    predicted_mean,
    sequence_log_prob,
)


@pytest.fixture
def hmm_task() -> HMMTask:
    return HMMTask(n_states=3, n_symbols=4, length=3, n_sequences=50, seed=1)


def as_model(task: HMMTask) -> DiscreteHMM:
    return DiscreteHMM(task.transition, task.emission, task.initial)


def test_sequence_probabilities_match_the_forward_algorithm(hmm_task):
    data = hmm_task.data()
    assert torch.allclose(sequence_log_prob(as_model(hmm_task).parameters(), data)[0], hmm_task.log_likelihood(data),
                          atol=1e-12)


@pytest.mark.parametrize(("visible", "predicted"), [((0,), (1,)), ((1,), (0, 2)), ((0, 2), (1,)), ((0,), (1, 2))])
def test_joint_predictions_are_ratios_of_forward_likelihoods(hmm_task, visible, predicted):
    """log q(x_P | x_V) = log p(x_{V ∪ P}) − log p(x_V), both by the existing forward algorithm."""
    data = hmm_task.data()
    observed = torch.zeros_like(data, dtype=torch.bool)
    observed[:, list(visible)] = True
    both = observed.clone()
    both[:, list(predicted)] = True
    expected = hmm_task.log_likelihood(data, both) - hmm_task.log_likelihood(data, observed)
    found = predicted_log_prob(as_model(hmm_task).parameters(), MaskingPattern(visible, predicted), data)[0]
    assert torch.allclose(found, expected, atol=1e-12)


def test_gaussian_conditional_mean_matches_a_direct_formula():
    """E[x2 | x1] = Σ_h1 p(h1 | x1) Σ_h2 T[h1, h2] mu_h2, and E[x2 ⊗ x3 | x1] likewise, in numpy."""
    model = random_gaussian_hmm(n_states=2, dim=2, seed=3)
    values = model.sample(5, 3, torch.Generator().manual_seed(0))
    pi, transition, means = model.initial.numpy(), model.transition.numpy(), model.means.numpy()
    x1 = values[:, 0].numpy()
    log_post = np.log(pi) - 0.5 * ((x1[:, None, :] - means[None]) ** 2).sum(-1)
    post = np.exp(log_post - log_post.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    expected_one = post @ transition @ means
    two_step = np.einsum("ab,bc->abc", transition, transition)   # p(h2 = b, h3 = c | h1 = a)
    expected_two = np.einsum("na,abc,bi,cj->nij", post, two_step, means, means).reshape(5, -1)
    params = model.parameters()
    assert np.allclose(predicted_mean(params, MaskingPattern((0,), (1,)), values)[0].numpy(), expected_one)
    assert np.allclose(predicted_mean(params, MaskingPattern((0,), (1, 2)), values)[0].numpy(), expected_two)


def test_the_predictor_at_the_true_parameters_is_the_truth():
    model = random_discrete_hmm(seed=2)
    params = HMMPredictor.at(model)()
    assert torch.allclose(params.log_transition.exp()[0], model.transition, atol=1e-15)
    assert torch.allclose(params.emission.exp()[0], model.emission, atol=1e-15)
    assert torch.allclose(params.log_initial.exp()[0], model.initial, atol=1e-15)


def test_a_stationary_start_predictor_starts_from_its_own_transitions_stationary_distribution():
    predictor = HMMPredictor("discrete", 3, 4, 5, torch.Generator().manual_seed(0), stationary_start=True)
    params = predictor()
    initial, transition = params.log_initial.exp(), params.log_transition.exp()
    for r in range(5):
        assert torch.allclose(initial[r], stationary_distribution(transition[r]), atol=1e-12)
    assert torch.allclose((initial[:, :, None] * transition).sum(1), initial, atol=1e-12)   # π T = π


def test_population_data_is_the_exact_distribution_and_samples_its_histogram():
    model = random_discrete_hmm(n_states=2, n_symbols=3, seed=0)
    task = MaskedPredictionTask([{"visible": [0], "predicted": [1, 2]}])
    population = masked_prediction_data(model, task)
    assert population.values.shape == (27, 3) and population.weights.sum() == pytest.approx(1.0, abs=1e-12)
    sampled = masked_prediction_data(model, task, "samples", 5000, torch.Generator().manual_seed(0))
    assert torch.equal(sampled.values, population.values) and (sampled.weights * 5000).round().sum() == 5000
    assert (sampled.weights - population.weights).abs().max() < 0.02


def test_the_true_parameters_minimise_the_population_loss():
    model = random_discrete_hmm(seed=0)
    task = MaskedPredictionTask([{"visible": [0], "predicted": [1]}])
    data = masked_prediction_data(model, task)
    others = HMMPredictor("discrete", 3, 4, 8, torch.Generator().manual_seed(0))
    truth = masked_prediction_loss(model.parameters(), task, data)
    assert (masked_prediction_loss(others(), task, data) > truth).all()


def test_generated_models_are_stationary_and_reproducible():
    model = random_discrete_hmm(seed=4)
    assert torch.allclose(model.initial @ model.transition, model.initial, atol=1e-12)
    assert torch.allclose(model.initial, torch.full((3,), 1 / 3, dtype=torch.float64), atol=1e-9)  # doubly stochastic
    assert torch.equal(random_discrete_hmm(seed=4).emission, model.emission)
    assert not torch.equal(random_discrete_hmm(seed=5).emission, model.emission)
    assert model.conditions() == {"K <= V": True, "emission full column rank": True, "transition full rank": True,
                                  "stationary start": True, "T² has another stochastic square root": True}


def test_labels_use_the_papers_notation():
    task = MaskedPredictionTask([{"visible": [0], "predicted": [1]}, {"visible": [1], "predicted": [0]}])
    assert task.label == "x1 → x2 & x2 → x1" and task.name == task.label and task.length == 2
    assert MaskingPattern((0, 2), (1,)).label == "x1⊗x3 → x2"


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(("visible", "predicted", "message"), [
    ((0,), (), "predicts nothing"),
    ((), (1,), "leaves nothing visible"),
    ((0, 1), (1,), "both visible and predicted"),
    ((-1,), (1,), "0-based integers"),
    ((0, 0), (1,), "repeat"),
])
def test_bad_masking_patterns_are_refused(visible, predicted, message):
    with pytest.raises(TaskError, match=message):
        MaskingPattern(visible, predicted)


def test_bad_tasks_are_refused():
    with pytest.raises(TaskError, match="non-empty list"):
        MaskedPredictionTask([])
    with pytest.raises(TaskError, match="keys visible and predicted"):
        MaskedPredictionTask([{"seen": [0], "predicted": [1]}])
    with pytest.raises(TaskError, match="repeats a pattern"):
        MaskedPredictionTask([{"visible": [0], "predicted": [1]}] * 2)


@pytest.mark.parametrize(("transition", "message"), [([[0.0, 1.0], [1.0, 0.0]], "is periodic"),
                                                    ([[1.0, 0.0], [0.5, 0.5]], "has transient states")])
def test_non_ergodic_transitions_are_refused(transition, message):
    with pytest.raises(TaskError, match=message):
        DiscreteHMM(transition, [[0.5, 0.5], [0.2, 0.8]])


def test_non_stochastic_and_zero_parameters_are_refused():
    with pytest.raises(TaskError, match="summing to 1"):
        DiscreteHMM([[0.5, 0.6], [0.5, 0.5]], [[0.5, 0.5], [0.2, 0.8]])
    with pytest.raises(TaskError, match="zero entries"):
        DiscreteHMM([[0.7, 0.3], [0.2, 0.8]], [[1.0, 0.0], [0.2, 0.8]])
    with pytest.raises(TaskError, match="K=2 rows"):
        DiscreteHMM([[0.7, 0.3], [0.2, 0.8]], [[0.5, 0.5]])


def test_more_states_than_the_conditions_allow_warn_by_name():
    with pytest.warns(UserWarning, match=r"n_states=4 > n_symbols=3.*K ≤ V"):
        model = random_discrete_hmm(n_states=4, n_symbols=3)
    assert model.conditions() == {"K <= V": False, "emission full column rank": False, "transition full rank": True,
                                  "stationary start": True, "T² has another stochastic square root": False}
    with pytest.warns(UserWarning, match=r"n_states=3 > dim=2.*linearly independent"):
        random_gaussian_hmm(n_states=3, dim=2)
    with pytest.warns(UserWarning, match="full-rank transition"):
        DiscreteHMM([[0.5, 0.5], [0.5, 0.5]], [[0.9, 0.1], [0.2, 0.8]])


def test_a_nearly_singular_emission_fails_its_condition():
    """K = V = 2 at seed 0 draws two almost equal emission rows (σ_2/σ_1 ≈ 0.002): training then finds wrong
    parameters within 1e-7 nats of the optimum, so the condition is judged with room to spare."""
    with pytest.warns(UserWarning, match="nearly"):
        model = random_discrete_hmm(n_states=2, n_symbols=2, seed=0)
    assert model.conditions()["emission full column rank"] is False


def test_too_many_hidden_paths_are_refused():
    with pytest.raises(TaskError, match="hidden paths"):
        hidden_paths(20, 6)
    with pytest.raises(TaskError, match="stickiness"):
        random_discrete_hmm(stickiness=1.0)


def test_stationary_distribution_solves_pi_t_equals_pi():
    transition = torch.tensor([[0.9, 0.1], [0.3, 0.7]], dtype=torch.float64)
    assert torch.allclose(stationary_distribution(transition), torch.tensor([0.75, 0.25], dtype=torch.float64))
    assert isinstance(GaussianHMM(transition, [[0.0, 0.0], [1.0, 0.0]]).initial, torch.Tensor)
