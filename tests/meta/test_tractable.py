"""The paper's training result on PPCA: cumulative masked prediction fits the maximum-likelihood model."""

from __future__ import annotations

import pytest

from maskpolicy.meta.scoring.tractable import fit_ppca, fixed_rate_bias
from maskpolicy.tasks.tractable.ppca import PPCATask

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data():
    return PPCATask(dim=8, latent=2, noise=0.5, n_sequences=300, seed=1).data()


@pytest.mark.parametrize("objective", ["exact", "cumulative", "fixed_rate"])
def test_every_objective_reaches_the_closed_form_maximum_likelihood(data, objective):
    fit = fit_ppca(data, latent=2, objective=objective, steps=600, seed=0)
    assert fit.relative_gap < 0.01, f"{objective}: exact LML {fit.exact_lml:.2f} vs ML {fit.ml_lml:.2f}"
    assert fit.exact_lml <= fit.ml_lml + 1e-6  # nothing beats the closed-form maximum


def test_a_fixed_rate_fit_has_a_biased_estimate_explained_by_the_per_rate_curve(data):
    fit = fit_ppca(data, latent=2, objective="fixed_rate", rate=0.15, steps=600, seed=0)
    bias = fixed_rate_bias(fit.model, data, rate=0.15)
    assert bias.size == 1  # round(0.15 · 8)
    assert bias.measured > 0.1 * abs(bias.exact_lml)  # over-estimates by more than 10%
    assert bias.measured == pytest.approx(bias.predicted, rel=1e-9)


def test_unknown_objective_is_refused(data):
    with pytest.raises(ValueError, match="unknown objective 'elbo'"):
        fit_ppca(data, latent=2, objective="elbo")
