"""maskpolicy-identify: parameter recovery, non-uniqueness for a non-identifying task, determinism, the command."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_module
from test_cli import run_command  # tests/meta is on sys.path (pytest's prepend mode)

from maskpolicy.meta.commands.identify import run_identify
from maskpolicy.meta.config import ConfigError, build
from maskpolicy.meta.identifiability.claims import claim_for, conditions_hold
from maskpolicy.meta.identifiability.recovery import (
    IDENTIFIED,
    INCONCLUSIVE,
    NOT_IDENTIFIED,
    match_states,
    read_parameters,
    recover,
    true_parameters,
    verdict,
)
from maskpolicy.meta.identifiability.training import fit_restarts
from maskpolicy.meta.results.schema import IdentifyResults, load
from maskpolicy.tasks.base import TaskError
from maskpolicy.tasks.tractable.hmm_models import (
    HMMParameters,
    random_discrete_hmm,
    random_gaussian_hmm,
)
from maskpolicy.tasks.tractable.masked_hmm import (
    HMMPredictor,
    MaskedPredictionTask,
    masked_prediction_data,
    masked_prediction_loss,
)

PAIRWISE = MaskedPredictionTask([{"visible": [0], "predicted": [1]}])
TWO_FROM_ONE = MaskedPredictionTask([{"visible": [0], "predicted": [1, 2]}])
QUICK = ["identify.restarts=3", "identify.adam_steps=50", "identify.lbfgs_steps=2", "identify.n_samples=100",
         "identify.only_tasks=[pairwise]", "identify.plot=false"]


def config(*overrides: str):
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        return compose("identify", overrides=list(overrides))


def permuted(params: HMMParameters, order: list[int]) -> HMMParameters:
    """The same HMM with its states relabelled."""
    return HMMParameters(params.kind, params.log_initial[:, order], params.log_transition[:, order][:, :, order],
                         params.emission[:, order], params.noise_std)


@pytest.mark.parametrize("model", [random_discrete_hmm(seed=1), random_gaussian_hmm(seed=1)], ids=["discrete",
                                                                                                   "gaussian"])
def test_the_true_optimal_predictor_recovers_the_parameters_exactly(model):
    predictor = HMMPredictor.at(model)
    data = masked_prediction_data(model, TWO_FROM_ONE, n_samples=50)
    loss = masked_prediction_loss(predictor(), TWO_FROM_ONE, data)
    assert torch.allclose(loss, masked_prediction_loss(model.parameters(), TWO_FROM_ONE, data), rtol=1e-12, atol=1e-20)
    if model.kind == "gaussian":
        assert float(loss.detach()) == pytest.approx(0.0, abs=1e-20)  # exact targets: zero population loss
    (recovery,) = recover(true_parameters(model), permuted(predictor(), [2, 0, 1]))
    assert recovery.permutation == [1, 2, 0]  # true state i is the relabelled predictor's state permutation[i]
    assert max(recovery.error, recovery.initial_error) < 1e-12


def test_states_are_matched_by_the_hungarian_method():
    truth = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert match_states(truth, truth[[2, 0, 1]] + 0.1) == [1, 2, 0]


def test_a_non_identifying_task_has_distinct_parameters_at_equal_loss():
    """Pairwise prediction on a tiny discrete HMM (K=2, V=3): restarts at the optimal loss disagree on the parameters;
    predicting two tokens jointly on the same model pins them down."""
    model = random_discrete_hmm(n_states=2, n_symbols=3, seed=0)
    assert all(model.conditions().values())
    for task, identifies in ((PAIRWISE, False), (TWO_FROM_ONE, True)):
        data = masked_prediction_data(model, task)
        fit = fit_restarts(model, task, data, 4, 100, 0.05, 5, torch.Generator().manual_seed(0))
        optimum = masked_prediction_loss(model.parameters(), task, data)
        assert (fit.losses - optimum).abs().max() < 1e-12   # every restart reaches the optimal loss
        errors = [r.error for r in recover(true_parameters(model), fit.predictor())]
        if identifies:
            assert max(errors) < 1e-6
        else:
            assert max(errors) > 0.1 and max(errors) - min(errors) > 0.1   # distinct parameter sets, equal loss
            first = tuple(tensor[0].detach() for tensor in read_parameters(fit.predictor()))
            assert max(r.error for r in recover(first, fit.predictor())) > 0.1   # and from each other


def test_training_is_deterministic_at_a_fixed_seed():
    model = random_gaussian_hmm(n_states=2, dim=2, seed=0)
    data = masked_prediction_data(model, PAIRWISE, n_samples=60)

    def train(seed: int):
        fit = fit_restarts(model, PAIRWISE, data, 2, 20, 0.05, 1, torch.Generator().manual_seed(seed))
        return fit.losses, [p.detach().clone() for p in fit.predictor.parameters()]

    (losses, params), (again, params_again), (other, _) = train(0), train(0), train(1)
    assert torch.equal(losses, again) and all(torch.equal(a, b) for a, b in zip(params, params_again, strict=True))
    assert not torch.equal(losses, other)


def test_restarts_in_a_batch_train_as_if_alone():
    """Adam on the summed loss of restarts takes each restart's own steps."""
    model = random_discrete_hmm(n_states=2, n_symbols=3, seed=0)
    data = masked_prediction_data(model, PAIRWISE)
    batch = fit_restarts(model, PAIRWISE, data, 3, 30, 0.05, 0, torch.Generator().manual_seed(0))
    alone = HMMPredictor("discrete", 2, 3, 1, torch.Generator())
    with torch.no_grad():
        for target, source in zip(alone.parameters(), batch.predictor.parameters(), strict=True):
            target.copy_(source[1:2])
    assert torch.allclose(masked_prediction_loss(alone(), PAIRWISE, data), batch.losses[1:2], atol=1e-12)


def test_verdicts():
    assert verdict([True, True, False], [1e-9, 2e-9, 0.9], 0.01) == IDENTIFIED   # a stuck restart does not count
    assert verdict([True, True], [1e-9, 0.3], 0.01) == NOT_IDENTIFIED
    assert verdict([False, False], [0.0, 0.0], 0.01) == INCONCLUSIVE


def test_claims_are_looked_up_by_patterns_and_their_conditions_checked():
    both_ways = MaskedPredictionTask([{"visible": [1], "predicted": [0]}, {"visible": [0], "predicted": [1]}])
    assert claim_for("discrete", PAIRWISE).identifiable is False
    assert claim_for("discrete", both_ways).identifiable is False and claim_for("gaussian", both_ways).identifiable
    assert claim_for("discrete", TWO_FROM_ONE).identifiable is True
    assert claim_for("discrete", MaskedPredictionTask([{"visible": [0, 1], "predicted": [2]}])) is None
    with pytest.warns(UserWarning, match="K ≤ V"):
        overcomplete = random_discrete_hmm(n_states=4, n_symbols=3)
    assert not conditions_hold(claim_for("discrete", TWO_FROM_ONE), overcomplete.conditions())


def test_every_model_and_task_of_the_config_builds():
    options = config().identify
    for name, node in options.models.items():
        assert build(node, name).conditions() and name in ("discrete", "gaussian")
    tasks = [build(node, name, name=name) for name, node in options.tasks.items()]
    assert [task.label for task in tasks] == ["x1 → x2", "x1 → x2 & x2 → x1", "x1 → x2⊗x3", "x2 → x1⊗x3",
                                              "x1⊗x2 → x3", "x1⊗x3 → x2"]
    assert options.restarts >= 10 and options.data == "population"


def test_a_task_that_predicts_nothing_is_refused_by_name(tmp_path):
    cfg = config("identify.tasks.pairwise.patterns=[{visible: [0], predicted: []}]")
    with pytest.raises(TaskError, match="identify task pairwise: .*predicts nothing"):
        run_identify(cfg, tmp_path)


@pytest.mark.parametrize(("override", "message"), [("identify.restarts=0", "restarts must be an integer ≥ 1"),
                                                   ("identify.recovery_tolerance=0", "recovery_tolerance must be"),
                                                   ("identify.data=sampled", "'population' or 'samples'")])
def test_bad_options_are_refused_by_name(tmp_path, override, message):
    with pytest.raises((ConfigError, TaskError), match=message):
        run_identify(config(*QUICK, override), tmp_path)


def test_more_states_than_symbols_are_logged_and_no_agreement_is_claimed(tmp_path, caplog):
    overrides = ["identify.models.discrete.n_states=5", "identify.only_models=[discrete]", "identify.restarts=1",
                 "identify.adam_steps=5", "identify.lbfgs_steps=0", "identify.plot=false"]
    with caplog.at_level("WARNING"):
        results = run_identify(config(*overrides, "identify.only_tasks=[two_from_first]"), tmp_path)
    assert "model discrete: n_states=5 > n_symbols=4" in caplog.text
    assert results.conditions["discrete"]["K <= V"] is False
    (cell,) = results.cells
    assert cell.paper_says_identifiable is True and cell.conditions_hold is False and cell.agrees_with_paper is None


def test_unknown_task_names_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"identify.only_tasks names unknown task\(s\) \['pairwize'\]"):
        run_identify(config("identify.only_tasks=[pairwize]"), tmp_path)


def test_a_run_is_deterministic_and_its_results_round_trip(tmp_path):
    quicker = [*QUICK, "identify.restarts=2", "identify.lbfgs_steps=1"]
    first = run_identify(config(*quicker), tmp_path / "a")
    second = run_identify(config(*quicker), tmp_path / "b")
    strip = [{**cell.__dict__, "seconds": 0} for cell in first.cells]
    assert strip == [{**cell.__dict__, "seconds": 0} for cell in second.cells]
    assert [(cell.model, cell.task) for cell in first.cells] == [("discrete", "pairwise"), ("gaussian", "pairwise")]
    loaded = load(tmp_path / "a", IdentifyResults)
    assert loaded.cells == first.cells and loaded.conditions["discrete"]["K <= V"] is True
    assert json.loads((tmp_path / "a/results.json").read_text())["schema"]["command"] == "identify"


@pytest.mark.slow
def test_the_command_writes_results_and_the_plot(tmp_path):
    run_command(*QUICK[:-2], "identify.only_tasks=[pairwise,two_from_first]", f"hydra.run.dir={tmp_path / 'run'}",
                cwd=tmp_path, module="maskpolicy.meta.commands.identify")
    results = load(tmp_path / "run", IdentifyResults)
    assert len(results.cells) == 4 and all(len(cell.restarts) == 3 for cell in results.cells)
    assert {cell.verdict for cell in results.cells} <= {IDENTIFIED, NOT_IDENTIFIED, INCONCLUSIVE}
    discrete_pairwise = results.cells[0]
    assert discrete_pairwise.paper_says_identifiable is False and discrete_pairwise.conditions_hold
    assert (tmp_path / "run/recovery.png").stat().st_size > 10_000
