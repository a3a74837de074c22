"""Probabilistic PCA: exact likelihood, exact masked conditionals, the closed-form ML fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maskpolicy.tasks.base import TaskError, TractableTask
from maskpolicy.tasks.tractable.ppca import PPCA, PPCATask, maximum_likelihood


@pytest.fixture(scope="module")
def task() -> PPCATask:
    return PPCATask(dim=6, latent=2, noise=0.7, n_sequences=300, seed=4)


def conditioned_by_covariance(model: PPCA, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(x_j | x_O) for j in the mask, via Σ_MO Σ_OO⁻¹ (the textbook route, independent of the code)."""
    covariance, mean, observed = model.covariance(), model.mean, ~mask
    gain = covariance[mask][:, observed] @ torch.linalg.inv(covariance[observed][:, observed])
    conditional_mean = mean[mask] + gain @ (x[observed] - mean[observed])
    conditional_var = (covariance[mask][:, mask] - gain @ covariance[observed][:, mask]).diagonal()
    return torch.distributions.Normal(conditional_mean, conditional_var.sqrt()).log_prob(x[mask])


def test_is_a_tractable_task(task):
    assert isinstance(task, TractableTask)
    assert task.data().shape == (300, 6) and task.data().dtype == torch.float64


def test_log_likelihood_is_the_gaussian_density(task):
    x = task.data()[:3]
    covariance = task.model.covariance()
    centred = (x - task.model.mean).numpy()
    _, logdet = np.linalg.slogdet(covariance.numpy())
    quadratic = np.einsum("bi,ij,bj->b", centred, np.linalg.inv(covariance.numpy()), centred)
    expected = -0.5 * (6 * math.log(2 * math.pi) + logdet + quadratic)
    assert np.allclose(task.log_likelihood(x).numpy(), expected, rtol=1e-12)


def test_masked_conditionals_match_gaussian_conditioning(task):
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(20, 6, generator=generator) < 0.5
    masks[:, 0] = True
    masks[0] = True  # everything masked: the marginals
    x = task.data()[:20]
    log_probs = task.masked_log_probs(x, masks)
    for row in range(20):
        expected = conditioned_by_covariance(task.model, x[row], masks[row]) if not masks[row].all() else \
            torch.distributions.Normal(task.model.mean, task.model.covariance().diagonal().sqrt()).log_prob(x[row])
        assert torch.allclose(log_probs[row][masks[row]], expected, rtol=1e-10)
        assert (log_probs[row][~masks[row]] == 0).all()


def test_marginal_log_likelihood_is_the_gaussian_density_of_the_observed_coordinates(task):
    x = task.data()[:12]
    observed = torch.rand(12, 6, generator=torch.Generator().manual_seed(1)) < 0.5
    observed[0], observed[1] = False, True
    observed[2] = torch.tensor([False, False, True, False, False, False])
    marginal = task.log_likelihood(x, observed)
    covariance, mean = task.model.covariance().numpy(), task.model.mean.numpy()
    for row in range(12):
        kept = observed[row].numpy()
        centred = x[row].numpy()[kept] - mean[kept]
        block = covariance[np.ix_(kept, kept)]
        _, logdet = np.linalg.slogdet(block) if kept.any() else (1.0, 0.0)
        quadratic = centred @ np.linalg.solve(block, centred) if kept.any() else 0.0
        expected = -0.5 * (kept.sum() * math.log(2 * math.pi) + logdet + quadratic)
        assert float(marginal[row]) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert marginal[0] == 0 and torch.allclose(marginal[1], task.log_likelihood(x[1:2])[0], rtol=1e-12)


def test_the_conditional_of_a_target_is_the_joint_minus_the_marginal_of_the_rest(task):
    x, target = task.data()[:5], torch.tensor([False, True, False, False, True, False])
    conditional = task.log_likelihood(x) - task.log_likelihood(x, ~target.expand(5, -1))
    # chain rule by hand: log p(x_1 | x_rest) + log p(x_4 | x_rest, x_1)
    first = torch.stack([conditioned_by_covariance(task.model, row, target)[0] for row in x])
    second = torch.stack([conditioned_by_covariance(task.model, row, torch.arange(6) == 4)[0] for row in x])
    torch.testing.assert_close(conditional, first + second, rtol=1e-10, atol=0)


def test_a_bad_observed_mask_is_refused(task):
    with pytest.raises(TaskError, match=r"observed must be Bool\[3, 6\] like the data"):
        task.log_likelihood(task.data()[:3], torch.ones(3, 6))


def test_maximum_likelihood_beats_the_true_parameters_and_is_stationary(task):
    data = task.data()
    best = maximum_likelihood(data, latent=2)
    assert best.log_likelihood(data).sum() > task.log_likelihood(data).sum()
    loadings = best.loadings.clone().requires_grad_()
    log_noise = best.log_noise.clone().requires_grad_()
    PPCA(best.mean, loadings, log_noise).log_likelihood(data).sum().backward()
    assert loadings.grad.abs().max() < 1e-8 and abs(float(log_noise.grad)) < 1e-8


def test_same_seed_same_data_and_arrays_hold_the_truth():
    first, again = PPCATask(seed=5), PPCATask(seed=5)
    assert torch.equal(first.data(), again.data())
    arrays = first.arrays()
    assert set(arrays) == {"data", "mean", "loadings", "noise_std"}
    assert arrays["loadings"].shape == (8, 2) and float(arrays["noise_std"]) == pytest.approx(0.5)
    assert first.data()[0, 0].item() == pytest.approx(0.4077267259980988, abs=1e-12)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [({"dim": 1}, "dim must be ≥ 2"), ({"latent": 8}, r"latent must be in \[1, dim − 1\]"),
     ({"noise": 0.0}, "noise must be > 0"), ({"n_sequences": 0}, "n_sequences must be ≥ 1")],
)
def test_bad_knobs_are_named(knobs, message):
    with pytest.raises(TaskError, match=message):
        PPCATask(**knobs)


def test_data_of_the_wrong_shape_or_type_is_refused(task):
    with pytest.raises(TaskError, match=r"float tensor \[batch, 6\]"):
        task.log_likelihood(torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(TaskError, match=r"float tensor \[batch, 6\]"):
        task.masked_log_probs(torch.zeros(3, 6, dtype=torch.long), torch.ones(3, 6, dtype=torch.bool))
