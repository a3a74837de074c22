"""The cumulative marginal-likelihood estimator, proven on PPCA where log p(x) is exact."""

from __future__ import annotations

import json
import math

import pytest
import torch

from maskpolicy.meta.scoring.estimate import estimate_mll
from maskpolicy.meta.scoring.estimators import (
    Exhaustive,
    FixedRate,
    MLLError,
    PseudoLogLikelihood,
    Rates,
    Stratified,
    all_masks,
    masks_of_size,
    random_masks,
)
from maskpolicy.tasks.tractable.ppca import PPCA, PPCATask


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
    estimate = estimate_mll(task.masked_log_probs, task.data(), estimator=Exhaustive())
    exact = task.log_likelihood(task.data())
    assert torch.allclose(estimate.per_sequence, exact, rtol=1e-8, atol=0)
    assert estimate.forward_passes == 12 * (2**dim - 1) and estimate.total_stderr == 0.0


@pytest.mark.parametrize("estimator", [Rates(passes=40), Stratified(passes=40)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_monte_carlo_estimates_land_within_4_standard_errors(ppca, estimator, seed):
    estimate = estimate_mll(ppca.masked_log_probs, ppca.data(), estimator=estimator, generator=seeded(seed))
    exact = float(ppca.log_likelihood(ppca.data()).sum())
    assert 0 < estimate.total_stderr < 0.02 * abs(exact)
    assert abs(estimate.total - exact) < 4 * estimate.total_stderr


def test_stratified_is_unbiased_with_fewer_passes_than_positions(ppca):
    one = ppca.data()[:1].expand(400, -1)  # 400 independent two-draw estimates of one sequence
    estimate = estimate_mll(ppca.masked_log_probs, one, estimator=Stratified(passes=2), generator=seeded(0))
    exact = float(ppca.log_likelihood(ppca.data()[:1]))
    mean = estimate.per_sequence.mean().item()
    spread = estimate.per_sequence.std().item() / math.sqrt(400)
    assert abs(mean - exact) < 4 * spread
    assert estimate.forward_passes == 800


def test_fixed_rate_bias_is_the_sum_of_per_rate_differences(ppca):
    data = ppca.data()
    curve = torch.tensor(estimate_mll(ppca.masked_log_probs, data, estimator=Exhaustive()).curve.values,
                         dtype=torch.float64)
    exact = float(ppca.log_likelihood(data).sum())
    for size in (1, 4, 8):
        fixed = estimate_mll(ppca.masked_log_probs, data, estimator=FixedRate(size=size, passes=100))
        predicted = float((curve[size - 1] - curve).sum()) * len(data)
        assert fixed.total - exact == pytest.approx(predicted, rel=1e-9)
    low = estimate_mll(ppca.masked_log_probs, data, estimator=FixedRate(rate=0.15)).total
    high = estimate_mll(ppca.masked_log_probs, data, estimator=FixedRate(rate=0.9)).total
    assert low > exact > high  # small rates over-estimate, large rates under-estimate


def test_pll_is_d_times_s1_over_the_d_single_position_masks(ppca):
    data = ppca.data()
    pll = estimate_mll(ppca.masked_log_probs, data, estimator=PseudoLogLikelihood())
    singles = ppca.masked_log_probs(data.repeat_interleave(8, 0), torch.eye(8, dtype=torch.bool).repeat(len(data), 1))
    assert pll.total == pytest.approx(float(singles.sum()), rel=1e-12)
    assert pll.forward_passes == 8 * len(data) and pll.estimator == "pll"
    assert pll.total_stderr == 0.0  # all D single-position masks: S_1 has no sampling error


def test_budgets_count_forward_passes(ppca):
    data = ppca.data()
    assert estimate_mll(ppca.masked_log_probs, data, estimator=Rates(passes=20)).forward_passes == 60 * 16
    assert estimate_mll(ppca.masked_log_probs, data, estimator=Stratified(passes=20)).forward_passes == 60 * 20
    assert estimate_mll(ppca.masked_log_probs, data, estimator=FixedRate(passes=5)).forward_passes == 60 * 5
    assert estimate_mll(ppca.masked_log_probs, data, estimator=PseudoLogLikelihood(passes=5)).forward_passes == 60 * 5


def test_masks_are_evaluated_in_batched_calls(ppca):
    calls = []

    def counting(inputs, masks):
        calls.append(len(masks))
        return ppca.masked_log_probs(inputs, masks)

    estimate = estimate_mll(counting, ppca.data(), estimator=Stratified(passes=50), batch_size=512)
    assert sum(calls) == estimate.forward_passes == 3000
    assert max(calls) == 512 and len(calls) == 6


def test_masks_have_the_drawn_sizes_and_cover_only_scored_positions():
    seen = []

    def recording(inputs, masks):
        seen.append(masks.clone())
        return standard_normal_predictor(inputs, masks)

    inputs = torch.randn(3, 6, generator=seeded(0))
    scored = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 0]], dtype=torch.bool)
    estimate_mll(recording, inputs, scored, estimator=Rates(passes=12), generator=seeded(1))
    masks = torch.cat(seen)
    rows = torch.tensor([2] * 12 + [0] * 12 + [1] * 12)  # grouped by D: 3, 4, then 6 scored positions
    assert not (masks & ~scored[rows]).any()
    assert masks.sum(1).tolist() == [1] * 4 + [2] * 4 + [3] * 4 + [1] * 3 + [2] * 3 + [3] * 3 + [4] * 3 + sorted(
        list(range(1, 7)) * 2)


def test_variable_lengths_score_each_row_over_its_own_positions():
    inputs = torch.randn(3, 6, generator=seeded(0), dtype=torch.float64)
    scored = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 0]], dtype=torch.bool)
    estimate = estimate_mll(standard_normal_predictor, inputs, scored, estimator=Exhaustive())
    exact = torch.where(scored, torch.distributions.Normal(0.0, 1.0).log_prob(inputs), 0.0).sum(1)
    assert torch.allclose(estimate.per_sequence, exact, rtol=1e-12)
    assert estimate.tokens == 13 and estimate.forward_passes == 15 + 63 + 7
    assert estimate.curve.sizes is None and len(estimate.curve.rates) == 20


def test_the_estimate_is_differentiable_and_exhaustive_gradients_equal_exact_ones(ppca):
    model = ppca.model
    loadings = model.loadings.clone().requires_grad_()
    moved = PPCA(model.mean, loadings, model.log_noise)
    data = ppca.data()[:5]
    estimate = estimate_mll(moved.masked_log_probs, data, estimator=Exhaustive())
    (by_masks,) = torch.autograd.grad(estimate.per_sequence.sum(), loadings)
    (exact,) = torch.autograd.grad(moved.log_likelihood(data).sum(), loadings)
    assert torch.allclose(by_masks, exact, rtol=1e-7, atol=1e-10)


def test_summary_is_json_ready_in_both_reductions(ppca):
    estimate = estimate_mll(ppca.masked_log_probs, ppca.data(), estimator=Stratified(passes=4), generator=seeded(0))
    total, mean = estimate.summary("sum"), estimate.summary("mean")
    assert mean["estimate"] == pytest.approx(total["estimate"] / 60) and mean["stderr"] == pytest.approx(
        total["stderr"] / 60)
    assert total["nats_per_token"] == pytest.approx(total["estimate"] / (60 * 8))
    assert total["bits_per_token"] == pytest.approx(total["nats_per_token"] / math.log(2))
    json.dumps(total, allow_nan=False)
    single = estimate_mll(ppca.masked_log_probs, ppca.data()[:1], estimator=Stratified(passes=4)).summary()
    assert single["per_rate"]["S"].count(None) >= 4  # 4 passes over 8 rates: unsampled rates are null, not NaN
    json.dumps(single, allow_nan=False)


def test_golden_stratified_value_at_a_fixed_seed():
    task = PPCATask()
    estimate = estimate_mll(task.masked_log_probs, task.data(), estimator=Stratified(passes=200),
                            generator=seeded(0))
    assert estimate.total == pytest.approx(-1733.3523153987219, rel=1e-10)
    assert float(task.log_likelihood(task.data()).sum()) == pytest.approx(-1732.859707473605, rel=1e-12)


def test_random_masks_are_the_positions_with_the_smallest_uniform_keys():
    sizes = torch.tensor([[0, 1, 3, 6], [6, 2, 5, 4]])
    masks = random_masks(6, sizes, 2, seeded(4))
    keys = torch.rand(2, 4, 6, generator=seeded(4))
    assert torch.equal(masks, keys.argsort(2).argsort(2) < sizes[..., None])
    assert torch.equal(masks.sum(2), sizes)


def test_random_masks_give_each_size_exactly_and_every_subset_equally_often():
    draws = 20_000
    masks = random_masks(5, torch.tensor([2]), draws, seeded(0)).squeeze(1)
    assert (masks.sum(1) == 2).all()
    assert torch.allclose(masks.double().mean(0), torch.full((5,), 0.4, dtype=torch.float64), atol=0.01)
    bits = 2 ** torch.arange(5)
    counts = torch.bincount((masks.long() * bits).sum(1), minlength=32)
    of_size_two = (masks_of_size(5, 2).long() * bits).sum(1)
    assert counts[of_size_two].sum() == draws  # only the C(5, 2) = 10 subsets of size 2 occur
    assert torch.allclose(counts[of_size_two] / draws, torch.full((10,), 0.1), atol=0.01)


def test_mask_enumerations():
    assert all_masks(3).sum(1).tolist() == [1, 1, 2, 1, 2, 2, 3]
    assert masks_of_size(5, 2).shape == (10, 5) and (masks_of_size(5, 2).sum(1) == 2).all()


# -- bad input --------------------------------------------------------------------------


def test_a_predictor_with_the_wrong_shape_is_named(ppca):
    with pytest.raises(MLLError, match=r"returned \(.*\) for masks of shape"):
        estimate_mll(lambda x, m: torch.zeros(len(m)), ppca.data(), estimator=PseudoLogLikelihood())


@pytest.mark.parametrize(("value", "kind"), [(math.nan, "NaN"), (math.inf, r"\+inf")])
def test_nan_or_positive_infinite_log_probabilities_are_refused(ppca, value, kind):
    with pytest.raises(MLLError, match=kind):
        estimate_mll(lambda x, m: torch.full(m.shape, value), ppca.data(), estimator=PseudoLogLikelihood())


def test_a_sequence_with_nothing_to_score_adds_zero_and_is_counted():
    inputs = torch.randn(3, 4, generator=seeded(0), dtype=torch.float64)
    scored = torch.tensor([[True, True, False, False], [False, False, False, False], [True, True, True, True]])
    estimate = estimate_mll(standard_normal_predictor, inputs, scored, estimator=Exhaustive())
    exact = torch.where(scored, torch.distributions.Normal(0.0, 1.0).log_prob(inputs), 0.0).sum(1)
    assert torch.allclose(estimate.per_sequence, exact, rtol=1e-12) and estimate.per_sequence[1] == 0
    assert estimate.empty_sequences == 1 and estimate.tokens == 6 and estimate.forward_passes == 3 + 15
    assert estimate.nats_per_token == pytest.approx(float(exact.sum()) / 6)
    assert estimate.summary()["sequences"] == 3 and estimate.summary()["empty_sequences"] == 1
    equal = estimate_mll(standard_normal_predictor, inputs[1:], scored[1:], estimator=Exhaustive())
    assert equal.curve.sizes == [1, 2, 3, 4]  # the non-empty rows share D = 4: S_m by m


def test_a_batch_with_nothing_to_score_is_refused():
    scored = torch.tensor([[False, False], [False, False]])
    with pytest.raises(MLLError, match=r"no sequence has a position to score for target 'all' \(D = 0 in all 2 rows\)"):
        estimate_mll(standard_normal_predictor, torch.zeros(2, 2), scored)
    with pytest.raises(MLLError, match="at least one sequence"):
        estimate_mll(standard_normal_predictor, torch.zeros(0, 2))


@pytest.mark.parametrize(("estimator", "settings", "message"), [
    (Rates, {"passes": 0}, r"score.passes must be ≥ 1 .* for score/estimator=rates, got 0"),
    (Stratified, {"passes": 1}, r"score.passes must be ≥ 2 .* for score/estimator=stratified, got 1"),
    (PseudoLogLikelihood, {"passes": 0}, r"score.passes must be ≥ 1 .* for score/estimator=pll"),
    (FixedRate, {"passes": -3}, r"score.passes must be ≥ 1 .* for score/estimator=fixed_rate, got -3"),
    (Stratified, {"passes": 2.5}, r"score.passes must be ≥ 2 .* got 2.5"),
    (FixedRate, {"rate": 1.5}, r"score.rate \(and each of score.fixed_rates\) must be in \(0, 1\], got 1.5"),
    (FixedRate, {"rate": 0.0}, r"must be in \(0, 1\], got 0.0"),
    (FixedRate, {"size": 0}, "a fixed mask size must be ≥ 1 position"),
])
def test_bad_estimator_settings_are_refused_when_built(estimator, settings, message):
    with pytest.raises(MLLError, match=message):
        estimator(**settings)


def test_budgets_too_small_for_the_length_and_bad_estimators_are_refused(ppca):
    with pytest.raises(MLLError, match=r"at least one pass per rate: score.passes=5 < D=8; raise score.passes to ≥ 8"):
        estimate_mll(ppca.masked_log_probs, ppca.data(), estimator=Rates(passes=5))
    with pytest.raises(MLLError, match=r"2\^D − 1 passes and D=21 > 20; use score/estimator=stratified"):
        estimate_mll(standard_normal_predictor, torch.zeros(1, 21), estimator=Exhaustive())
    with pytest.raises(MLLError, match="score.reduction must be 'sum' or 'mean', got 'total'"):
        estimate_mll(ppca.masked_log_probs, ppca.data(), estimator=PseudoLogLikelihood()).summary("total")
    with pytest.raises(MLLError, match="'stratified' is a name; .* by config group: score/estimator=stratified"):
        estimate_mll(ppca.masked_log_probs, ppca.data(), estimator="stratified")
    with pytest.raises(MLLError, match="must be an Estimator"):
        estimate_mll(ppca.masked_log_probs, ppca.data(), estimator=object())


def test_a_scored_mask_of_the_wrong_shape_is_refused(ppca):
    with pytest.raises(MLLError, match=r"scored must be Bool\[60, 8\]"):
        estimate_mll(ppca.masked_log_probs, ppca.data(), torch.ones(60, 7, dtype=torch.bool))
