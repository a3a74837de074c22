"""The cumulative marginal-likelihood estimator, proven on PPCA where log p(x) is exact."""

from __future__ import annotations

import json
import math

import pytest
import torch

from maskpolicy.meta.mll import (
    ESTIMATORS,
    FixedRate,
    MLLError,
    all_masks,
    build_estimator,
    estimate_mll,
    masks_of_size,
)
from maskpolicy.tasks.ppca import PPCA, PPCATask


@pytest.fixture(scope="module")
def ppca() -> PPCATask:
    return PPCATask(dim=8, latent=2, noise=0.5, n_sequences=60, seed=3)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def standard_normal_predictor(inputs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Independent N(0, 1) coordinates: every conditional is the marginal, so log p(x) = Σ_j log N(x_j)."""
    return torch.distributions.Normal(0.0, 1.0).log_prob(inputs.double())


@pytest.mark.parametrize("dim", [8, 10])
def test_exhaustive_matches_the_exact_lml_to_1e_8_relative(dim):
    task = PPCATask(dim=dim, n_sequences=12, seed=dim)
    estimate = estimate_mll(task.masked_log_probs, task.data(), estimator="exhaustive")
    exact = task.log_likelihood(task.data())
    assert torch.allclose(estimate.per_sequence, exact, rtol=1e-8, atol=0)
    assert estimate.forward_passes == 12 * (2**dim - 1) and estimate.total_stderr == 0.0


@pytest.mark.parametrize("estimator", ["rates", "stratified"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_monte_carlo_estimates_land_within_4_standard_errors(ppca, estimator, seed):
    estimate = estimate_mll(ppca.masked_log_probs, ppca.data(), estimator=estimator, passes=40, generator=seeded(seed))
    exact = float(ppca.log_likelihood(ppca.data()).sum())
    assert 0 < estimate.total_stderr < 0.02 * abs(exact)
    assert abs(estimate.total - exact) < 4 * estimate.total_stderr


def test_stratified_is_unbiased_with_fewer_passes_than_positions(ppca):
    one = ppca.data()[:1].expand(400, -1)  # 400 independent two-draw estimates of one sequence
    estimate = estimate_mll(ppca.masked_log_probs, one, estimator="stratified", passes=2, generator=seeded(0))
    exact = float(ppca.log_likelihood(ppca.data()[:1]))
    mean = estimate.per_sequence.mean().item()
    spread = estimate.per_sequence.std().item() / math.sqrt(400)
    assert abs(mean - exact) < 4 * spread
    assert estimate.forward_passes == 800


def test_fixed_rate_bias_is_the_sum_of_per_rate_differences(ppca):
    data = ppca.data()
    curve = torch.tensor(estimate_mll(ppca.masked_log_probs, data, estimator="exhaustive").curve.values,
                         dtype=torch.float64)
    exact = float(ppca.log_likelihood(data).sum())
    for size in (1, 4, 8):
        fixed = estimate_mll(ppca.masked_log_probs, data, estimator=FixedRate(size=size, passes=100))
        predicted = float((curve[size - 1] - curve).sum()) * len(data)
        assert fixed.total - exact == pytest.approx(predicted, rel=1e-9)
    low = estimate_mll(ppca.masked_log_probs, data, estimator="fixed_rate", rate=0.15).total
    high = estimate_mll(ppca.masked_log_probs, data, estimator="fixed_rate", rate=0.9).total
    assert low > exact > high  # small rates over-estimate, large rates under-estimate


def test_pll_is_d_times_s1_over_the_d_single_position_masks(ppca):
    data = ppca.data()
    pll = estimate_mll(ppca.masked_log_probs, data, estimator="pll")
    singles = ppca.masked_log_probs(data.repeat_interleave(8, 0), torch.eye(8, dtype=torch.bool).repeat(len(data), 1))
    assert pll.total == pytest.approx(float(singles.sum()), rel=1e-12)
    assert pll.forward_passes == 8 * len(data)


def test_budgets_count_forward_passes(ppca):
    data = ppca.data()
    assert estimate_mll(ppca.masked_log_probs, data, estimator="rates", passes=20).forward_passes == 60 * 16
    assert estimate_mll(ppca.masked_log_probs, data, estimator="stratified", passes=20).forward_passes == 60 * 20
    assert estimate_mll(ppca.masked_log_probs, data, estimator="fixed_rate", passes=5).forward_passes == 60 * 5


def test_masks_are_evaluated_in_batched_calls(ppca):
    calls = []

    def counting(inputs, masks):
        calls.append(len(masks))
        return ppca.masked_log_probs(inputs, masks)

    estimate = estimate_mll(counting, ppca.data(), estimator="stratified", passes=50, batch_size=512)
    assert sum(calls) == estimate.forward_passes == 3000
    assert max(calls) == 512 and len(calls) == 6


def test_masks_have_the_drawn_sizes_and_cover_only_scored_positions():
    seen = []

    def recording(inputs, masks):
        seen.append(masks.clone())
        return standard_normal_predictor(inputs, masks)

    inputs = torch.randn(3, 6, generator=seeded(0))
    scored = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 0]], dtype=torch.bool)
    estimate_mll(recording, inputs, scored, estimator="rates", passes=12, generator=seeded(1))
    masks = torch.cat(seen)
    rows = torch.tensor([2] * 12 + [0] * 12 + [1] * 12)  # grouped by D: 3, 4, then 6 scored positions
    assert not (masks & ~scored[rows]).any()
    assert masks.sum(1).tolist() == [1] * 4 + [2] * 4 + [3] * 4 + [1] * 3 + [2] * 3 + [3] * 3 + [4] * 3 + sorted(
        list(range(1, 7)) * 2)


def test_variable_lengths_score_each_row_over_its_own_positions():
    inputs = torch.randn(3, 6, generator=seeded(0), dtype=torch.float64)
    scored = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 0]], dtype=torch.bool)
    estimate = estimate_mll(standard_normal_predictor, inputs, scored, estimator="exhaustive")
    exact = torch.where(scored, torch.distributions.Normal(0.0, 1.0).log_prob(inputs), 0.0).sum(1)
    assert torch.allclose(estimate.per_sequence, exact, rtol=1e-12)
    assert estimate.tokens == 13 and estimate.forward_passes == 15 + 63 + 7
    assert estimate.curve.sizes is None and len(estimate.curve.rates) == 20


def test_the_estimate_is_differentiable_and_exhaustive_gradients_equal_exact_ones(ppca):
    model = ppca.model
    loadings = model.loadings.clone().requires_grad_()
    moved = PPCA(model.mean, loadings, model.log_noise)
    data = ppca.data()[:5]
    estimate = estimate_mll(moved.masked_log_probs, data, estimator="exhaustive")
    (by_masks,) = torch.autograd.grad(estimate.per_sequence.sum(), loadings)
    (exact,) = torch.autograd.grad(moved.log_likelihood(data).sum(), loadings)
    assert torch.allclose(by_masks, exact, rtol=1e-7, atol=1e-10)


def test_summary_is_json_ready_in_both_reductions(ppca):
    estimate = estimate_mll(ppca.masked_log_probs, ppca.data(), estimator="stratified", passes=4, generator=seeded(0))
    total, mean = estimate.summary("sum"), estimate.summary("mean")
    assert mean["estimate"] == pytest.approx(total["estimate"] / 60) and mean["stderr"] == pytest.approx(
        total["stderr"] / 60)
    assert total["nats_per_token"] == pytest.approx(total["estimate"] / (60 * 8))
    assert total["bits_per_token"] == pytest.approx(total["nats_per_token"] / math.log(2))
    json.dumps(total, allow_nan=False)
    single = estimate_mll(ppca.masked_log_probs, ppca.data()[:1], estimator="stratified", passes=4).summary()
    assert single["per_rate"]["S"].count(None) >= 4  # 4 passes over 8 rates: unsampled rates are null, not NaN
    json.dumps(single, allow_nan=False)


def test_golden_stratified_value_at_a_fixed_seed():
    task = PPCATask()
    estimate = estimate_mll(task.masked_log_probs, task.data(), estimator="stratified", passes=200,
                            generator=seeded(0))
    assert estimate.total == pytest.approx(-1733.3523153987219, rel=1e-10)
    assert float(task.log_likelihood(task.data()).sum()) == pytest.approx(-1732.859707473605, rel=1e-12)


def test_mask_enumerations():
    assert all_masks(3).sum(1).tolist() == [1, 1, 2, 1, 2, 2, 3]
    assert masks_of_size(5, 2).shape == (10, 5) and (masks_of_size(5, 2).sum(1) == 2).all()


# -- bad input --------------------------------------------------------------------------


def test_a_predictor_with_the_wrong_shape_is_named(ppca):
    with pytest.raises(MLLError, match=r"returned \(.*\) for masks of shape"):
        estimate_mll(lambda x, m: torch.zeros(len(m)), ppca.data(), estimator="pll")


@pytest.mark.parametrize(("value", "kind"), [(math.nan, "NaN"), (math.inf, r"\+inf")])
def test_nan_or_positive_infinite_log_probabilities_are_refused(ppca, value, kind):
    with pytest.raises(MLLError, match=kind):
        estimate_mll(lambda x, m: torch.full(m.shape, value), ppca.data(), estimator="pll")


def test_a_sequence_with_nothing_to_score_is_refused():
    scored = torch.tensor([[True, True], [False, False]])
    with pytest.raises(MLLError, match=r"sequence 1 has no positions to score \(D = 0\)"):
        estimate_mll(standard_normal_predictor, torch.zeros(2, 2), scored)
    with pytest.raises(MLLError, match="at least one sequence"):
        estimate_mll(standard_normal_predictor, torch.zeros(0, 2))


def test_unknown_estimator_and_too_small_budgets_are_refused(ppca):
    with pytest.raises(MLLError, match="unknown estimator 'exact'; choose one of " + ", ".join(ESTIMATORS)):
        build_estimator("exact")
    with pytest.raises(MLLError, match=r"at least one pass per rate: score.passes=5 < D=8"):
        estimate_mll(ppca.masked_log_probs, ppca.data(), estimator="rates", passes=5)
    with pytest.raises(MLLError, match="score.passes must be ≥ 1"):
        build_estimator("stratified", passes=0)
    with pytest.raises(MLLError, match="needs score.passes ≥ 2"):
        estimate_mll(ppca.masked_log_probs, ppca.data(), estimator="stratified", passes=1)
    with pytest.raises(MLLError, match=r"2\^D − 1 passes and D=21"):
        estimate_mll(standard_normal_predictor, torch.zeros(1, 21), estimator="exhaustive")
    with pytest.raises(MLLError, match=r"score.rate must be in \(0, 1\]"):
        build_estimator("fixed_rate", rate=1.5)
    with pytest.raises(MLLError, match="reduction must be 'sum' or 'mean'"):
        estimate_mll(ppca.masked_log_probs, ppca.data(), estimator="pll").summary("total")


def test_a_scored_mask_of_the_wrong_shape_is_refused(ppca):
    with pytest.raises(MLLError, match=r"scored must be Bool\[60, 8\]"):
        estimate_mll(ppca.masked_log_probs, ppca.data(), torch.ones(60, 7, dtype=torch.bool))
