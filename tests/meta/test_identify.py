"""maskpolicy-identify: parameter recovery, non-uniqueness for a non-identifying task, determinism, the command."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from hydra import compose, initialize_config_module
from test_cli import run_command  # tests/meta is on sys.path (pytest's prepend mode)

from maskpolicy.meta.commands.identify import run_identify
from maskpolicy.meta.config import ConfigError, build
from maskpolicy.meta.identifiability.cell import Settings, measure_cell
from maskpolicy.meta.identifiability.claims import CLAIMS, FREE, Claim, claim_for, conditions_hold
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
from maskpolicy.meta.identifiability.table import compact, joined_table, summary_table
from maskpolicy.meta.identifiability.training import fit_restarts, polish
from maskpolicy.meta.results.schema import IdentifyCell, IdentifyResults, IdentifySummary, load
from maskpolicy.tasks.base import TaskError
from maskpolicy.tasks.tractable.hmm_models import (
    DiscreteHMM,
    GaussianHMM,
    HMMParameters,
    other_square_roots,
    random_discrete_hmm,
    random_gaussian_hmm,
)
from maskpolicy.tasks.tractable.masked_hmm import (
    HMMPredictor,
    MaskedPredictionTask,
    all_sequences,
    masked_prediction_data,
    masked_prediction_loss,
    predicted_log_prob,
)

PAIRWISE = MaskedPredictionTask([{"visible": [0], "predicted": [1]}])
TWO_FROM_ONE = MaskedPredictionTask([{"visible": [0], "predicted": [1, 2]}])
QUICK = ["identify.workers=1", "identify.restarts=3", "identify.adam_steps=50", "identify.lbfgs_iterations=40",
         "identify.n_samples=100", "identify.heldout_rows=200", "identify.seeds=[0]", "identify.only_tasks=[pairwise]",
         "identify.plot=false"]


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
        fit = fit_restarts(model, task, data, 4, 100, 0.05, 250, torch.Generator().manual_seed(0))
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
        fit = fit_restarts(model, PAIRWISE, data, 2, 20, 0.05, 30, torch.Generator().manual_seed(seed))
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
    pairwise = claim_for("discrete", PAIRWISE)
    assert pairwise.identifiable is False and pairwise.source.number == "Theorem 2" and pairwise.basis == "stated"
    assert claim_for("discrete", TWO_FROM_ONE).identifiable is True
    assert claim_for("discrete", TWO_FROM_ONE).source.number == "Theorem 5"
    assert claim_for("gaussian", both_ways).identifiable and claim_for("gaussian", both_ways).source.number is None
    assert claim_for("discrete", MaskedPredictionTask([{"visible": [0, 1], "predicted": [2]}])) is None
    assert all(claim.verified is False and claim.source.version for claim in CLAIMS)   # none read from the paper
    with pytest.warns(UserWarning, match="K ≤ V"):
        overcomplete = random_discrete_hmm(n_states=4, n_symbols=3)
    assert not conditions_hold(claim_for("discrete", TWO_FROM_ONE), overcomplete.conditions())


def test_theorem_4_and_its_consequences_cover_the_pairwise_tasks():
    """Theorem 4 is stated for the three-pairwise sum; every task made of some of its patterns follows from it."""
    tasks = {name: build(node, name, name=name) for name, node in config().identify.tasks.items()}
    theorem_4 = claim_for("discrete", tasks["all_pairwise"])
    assert (theorem_4.source.number, theorem_4.basis, theorem_4.identifiable) == ("Theorem 4", "stated", False)
    for name in ("pairwise_both_ways", "skip_one"):
        claim = claim_for("discrete", tasks[name])
        assert (claim.identifiable, claim.basis) == (False, "follows from Theorem 4")
    # on a G-HMM the sum contains x1 ↔ x2, which (recalled) identifies: so does the sum, in the paper's class only
    gaussian = claim_for("gaussian", tasks["all_pairwise"])
    assert gaussian.identifiable and gaussian.basis.startswith("follows from")
    assert claim_for("gaussian", tasks["all_pairwise"], start=FREE) is None
    assert claim_for("discrete", tasks["all_pairwise"], start=FREE).identifiable is False   # a wider class keeps it
    assert claim_for("gaussian", tasks["pairwise"]) is None
    skip = claim_for("gaussian", tasks["skip_one"])
    assert skip.source.number == "Claim 1" and "T² has another stochastic square root" in skip.conditions


def test_a_claim_whose_positions_its_tokens_lack_is_refused():
    with pytest.raises(TaskError, match="speaks of 2 tokens but its pattern"):
        Claim("discrete", frozenset(TWO_FROM_ONE.patterns), True, "x", (), CLAIMS[0].source, length=2)


def test_every_model_and_task_of_the_config_builds():
    options = config().identify
    for name, node in options.models.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the overcomplete families warn by design
            model = build(node, name, **({"seed": 0} if "random_" in node._target_ else {}))
        assert model.conditions() and model.kind in name and model.stationary_start
    roots = build(options.models.gaussian_square_roots, "gaussian_square_roots")   # Claim 1's case, in the study
    assert roots.conditions()["T² has another stochastic square root"] and all(roots.conditions().values())
    tasks = [build(node, name, name=name) for name, node in options.tasks.items()]
    assert [task.label for task in tasks] == [
        "x1 → x2", "x1 → x2 & x2 → x1", "x1 → x2 & x2 → x1 & x2 → x3 & x3 → x2 & x1 → x3 & x3 → x1", "x1 → x3",
        "x1 → x2⊗x3", "x2 → x1⊗x3", "x1⊗x2 → x3", "x1⊗x3 → x2"]
    assert options.restarts >= 8 and options.data == "population" and list(options.starts) == ["stationary"]
    assert len(options.seeds) >= 3 and list(options.only_models) == ["discrete", "gaussian"]
    general = build(options.models.discrete, "discrete", seed=0)
    assert general.initial.max() - general.initial.min() > 0.1   # the main models' stationary start is not uniform


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
                 "identify.adam_steps=5", "identify.lbfgs_iterations=0", "identify.plot=false", "identify.seeds=[0]"]
    with caplog.at_level("WARNING"):
        results = run_identify(config(*overrides, "identify.only_tasks=[two_from_first]"), tmp_path)
    assert "model discrete:0: n_states=5 > n_symbols=4" in caplog.text
    assert results.conditions["discrete:0"]["K <= V"] is False
    (cell,) = results.cells
    assert cell.paper_says_identifiable is True and cell.conditions_hold is False and cell.agrees_with_paper is None


def test_unknown_task_names_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"identify.only_tasks names unknown task\(s\) \['pairwize'\]"):
        run_identify(config("identify.only_tasks=[pairwize]"), tmp_path)


def test_a_run_is_deterministic_and_its_results_round_trip(tmp_path):
    quicker = [*QUICK, "identify.restarts=2", "identify.lbfgs_iterations=5"]
    first = run_identify(config(*quicker), tmp_path / "a")
    second = run_identify(config(*quicker), tmp_path / "b")
    strip = [{**cell.__dict__, "seconds": 0} for cell in first.cells]
    assert strip == [{**cell.__dict__, "seconds": 0} for cell in second.cells]
    assert first.training["processes"] == 1
    assert [(cell.model, cell.task) for cell in first.cells] == [("discrete", "pairwise"), ("gaussian", "pairwise")]
    loaded = load(tmp_path / "a", IdentifyResults)
    assert loaded.cells == first.cells and loaded.conditions["discrete:0"]["K <= V"] is True
    assert loaded.summary == first.summary and loaded.seeds == [0] and loaded.starts == ["stationary"]
    assert json.loads((tmp_path / "a/results.json").read_text())["schema"]["command"] == "identify"


def test_cells_measured_side_by_side_match_those_measured_in_turn(tmp_path, caplog):
    quicker = [*QUICK, "identify.restarts=2", "identify.lbfgs_iterations=5"]
    in_turn = run_identify(config(*quicker), tmp_path / "a")
    with caplog.at_level("INFO"):
        side_by_side = run_identify(config(*quicker, "identify.workers=2"), tmp_path / "b")
    assert side_by_side.training["processes"] == 2
    assert [(c.model, c.task, c.verdict, c.reached) for c in side_by_side.cells] == [
        (c.model, c.task, c.verdict, c.reached) for c in in_turn.cells]
    for a, b in zip(in_turn.cells, side_by_side.cells, strict=True):  # one thread each: rounding may differ
        assert [r.loss for r in b.restarts] == pytest.approx([r.loss for r in a.restarts], rel=1e-9, abs=1e-12)
    assert caplog.text.count("restarts at the optimum") == 2   # each cell's line, logged by this process


@pytest.mark.parametrize("workers", [0, -1, "two", True])
def test_a_bad_worker_count_is_refused_by_name(tmp_path, workers):
    with pytest.raises(ConfigError, match="identify.workers must be a positive number of processes or 'auto'"):
        run_identify(config(*QUICK, f"identify.workers={workers}"), tmp_path)


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


# -- the statements as identities -------------------------------------------------------


def rotation_about(axis: torch.Tensor, angle: float) -> torch.Tensor:
    """Rodrigues: the rotation of R³ by ``angle`` about the unit vector ``axis``."""
    cross = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]],
                         dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def pairwise_twin(model: DiscreteHMM, angle: float) -> DiscreteHMM:
    """Another discrete HMM with the same pairwise joint at every distance (our witness for Theorem 4).

    With D = diag(π) and S = D^(−1/2) Q D^(1/2), Q a rotation about √π: S1 = 1 and SᵀDS = D, so
    emission S·O and transition S T S⁻¹ are stochastic for a small angle, π stays stationary, and
    Oᵀ D Tᵏ O — the joint of x_t and x_(t+k) — is unchanged for every k.
    """
    root = model.initial.sqrt()
    s = torch.diag(1 / root) @ rotation_about(root, angle) @ torch.diag(root)
    return DiscreteHMM(s @ model.transition @ torch.linalg.inv(s), s @ model.emission)


def test_every_pairwise_task_has_a_continuum_of_optima_on_a_discrete_hmm():
    """Theorem 4's statement as an identity, on a model with a non-uniform stationary start: the twin predicts
    x1 ↔ x2 + x2 ↔ x3 + x1 ↔ x3 (and x1 → x3) exactly as well, with other parameters; x1 → x2⊗x3 tells them apart."""
    model = random_discrete_hmm(seed=1, concentration=1.0, balanced=False)
    twin = pairwise_twin(model, 0.05)
    assert twin.stationary_start and (twin.transition - model.transition).abs().max() > 1e-3
    tasks = {name: build(node, name, name=name) for name, node in config().identify.tasks.items()}
    for name in ("pairwise", "pairwise_both_ways", "all_pairwise", "skip_one"):
        data = masked_prediction_data(model, tasks[name])
        assert torch.allclose(masked_prediction_loss(twin.parameters(), tasks[name], data),
                              masked_prediction_loss(model.parameters(), tasks[name], data), rtol=0, atol=1e-13)
    data = masked_prediction_data(model, tasks["two_from_first"])
    gap = masked_prediction_loss(twin.parameters(), tasks["two_from_first"], data) - masked_prediction_loss(
        model.parameters(), tasks["two_from_first"], data)
    assert float(gap) > 1e-7


def test_claim_1_two_transitions_with_one_square_predict_x3_from_x1_alike():
    transition = torch.tensor([[0.7, 0.3], [0.3, 0.7]], dtype=torch.float64)
    (other,) = other_square_roots(transition)
    assert torch.allclose(other, torch.tensor([[0.3, 0.7], [0.7, 0.3]], dtype=torch.float64))
    assert torch.allclose(other @ other, transition @ transition, atol=1e-15)
    means = [[0.0, 0.0], [2.0, 1.0]]
    model, sibling = GaussianHMM(transition, means), GaussianHMM(other, means)
    assert model.conditions()["T² has another stochastic square root"]
    skip, pairwise = (MaskedPredictionTask([{"visible": [0], "predicted": [p]}]) for p in (2, 1))
    for task, same in ((skip, True), (pairwise, False)):
        loss = float(masked_prediction_loss(sibling.parameters(), task, masked_prediction_data(model, task,
                                                                                               n_samples=50)))
        assert (loss < 1e-25) if same else (loss > 1e-2)
    assert not random_gaussian_hmm(seed=0, balanced=False, concentration=1.0).conditions()[
        "T² has another stochastic square root"]


# -- several models, summaries, the held-out check, bad input --------------------------------


def test_a_run_over_seeds_and_starts_counts_the_models_per_verdict(tmp_path):
    overrides = [*QUICK[:-3], "identify.seeds=[0, 1]", "identify.starts=[stationary, free]", "identify.restarts=2",
                 "identify.only_models=[gaussian]", "identify.only_tasks=[pairwise, skip_one]", "identify.plot=false"]
    results = run_identify(config(*overrides), tmp_path)
    assert [(c.start, c.seed, c.task) for c in results.cells][:4] == [
        ("stationary", 0, "pairwise"), ("stationary", 0, "skip_one"), ("stationary", 1, "pairwise"),
        ("stationary", 1, "skip_one")]
    assert len(results.cells) == 8 and set(results.conditions) == {"gaussian:0", "gaussian:1"}
    assert [(s.start, s.task, s.models) for s in results.summary] == [
        ("stationary", "pairwise", 2), ("stationary", "skip_one", 2), ("free", "pairwise", 2), ("free", "skip_one", 2)]
    for summary in results.summary:
        assert sum(summary.verdicts.values()) == 2 and len(summary.reached) == 2
        assert summary.agree + summary.disagree <= summary.applies <= summary.models
    for cell in results.cells:   # every G-HMM restart scored again on fresh rows
        assert all(r.heldout_excess_loss is not None for r in cell.restarts)
        assert min(r.heldout_excess_loss for r in cell.restarts) > -1e-12   # the truth is the held-out optimum
    table = (tmp_path / "summary.md").read_text().splitlines()   # one row per task, both starts in it
    assert len(table) == 4 and table[2].startswith("| `x1 → x2` | gaussian | no statement |")
    assert table[3].startswith("| `x1 → x3` | gaussian | follows from Claim 1: does not identify; its conditions "
                               "hold for 0/2 |")   # neither model's T² has another stochastic square root
    assert "not run" not in "".join(table)
    assert joined_table([tmp_path]) == (tmp_path / "summary.md").read_text()   # re-rendered from results.json
    assert not (tmp_path / "recovery.png").exists()   # plot=false


def test_the_held_out_check_tells_a_predictor_fitted_to_too_few_rows():
    """On 2 rows a pairwise G-HMM predictor reaches zero training loss far from the truth; fresh rows show it."""
    model = random_gaussian_hmm(n_states=2, dim=2, seed=0)
    settings = Settings("population", 2, 3, 200, 0.05, 200, 1e-6, 0.01, 500, 0)
    cell = measure_cell("gaussian", model, PAIRWISE, settings, "free", 0)
    at_optimum = [r for r in cell.restarts if r.reached_optimum]
    assert at_optimum and max(r.heldout_excess_loss for r in at_optimum) > 1e-3
    assert cell.heldout_excess_max == max(r.heldout_excess_loss for r in at_optimum)


def test_batched_lbfgs_polishes_each_restart_as_if_alone():
    model = random_discrete_hmm(n_states=2, n_symbols=3, seed=0)
    data = masked_prediction_data(model, TWO_FROM_ONE)
    batch = fit_restarts(model, TWO_FROM_ONE, data, 3, 30, 0.05, 60, torch.Generator().manual_seed(0), True)
    start = fit_restarts(model, TWO_FROM_ONE, data, 3, 30, 0.05, 0, torch.Generator().manual_seed(0), True)
    alone = HMMPredictor("discrete", 2, 3, 1, torch.Generator(), stationary_start=True)
    with torch.no_grad():
        for target, source in zip(alone.parameters(), start.predictor.parameters(), strict=True):
            target.copy_(source[2:3])
    polish(alone, lambda: masked_prediction_loss(alone(), TWO_FROM_ONE, data), 60)
    with torch.no_grad():
        assert torch.allclose(masked_prediction_loss(alone(), TWO_FROM_ONE, data), batch.losses[2:3], rtol=0,
                              atol=1e-13)
    assert (batch.losses < start.losses).all()


@pytest.mark.parametrize(("override", "message"), [
    ("identify.seeds=[]", "identify.seeds must be a non-empty list"),
    ("identify.seeds=[0, 0]", "repeats a seed"),
    ("identify.starts=[stationery]", "identify.starts must be a non-empty list of stationary and free"),
    ("identify.length=2", r"identify task skip_one \(x1 → x3\) uses position x3, but the sequences have "
                          r"identify.length=2"),
    ("+identify.models.stuck={_target_: maskpolicy.tasks.tractable.hmm_models.DiscreteHMM, "
     "transition: [[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.0, 0.0, 1.0]], emission: [[0.5, 0.5], [0.2, 0.8], [0.3, 0.7]]}",
     "identify model stuck: the transition matrix has 2 closed classes .* stationary distribution is not unique"),
    ("+identify.models.late={_target_: maskpolicy.tasks.tractable.hmm_models.DiscreteHMM, "
     "transition: [[0.9, 0.1], [0.2, 0.8]], emission: [[0.6, 0.4], [0.1, 0.9]], initial: [0.5, 0.5]}",
     "identify model late: its initial distribution is not the stationary distribution"),
])
def test_bad_study_settings_are_refused_by_name(tmp_path, override, message):
    overrides = [*QUICK[:-2], "identify.only_tasks=[skip_one]", override]
    if "models." in override:
        name = override.split("models.")[1].split("=")[0]
        overrides.append(f"identify.only_models=[{name}]")
    with pytest.raises((ConfigError, TaskError), match=message):
        run_identify(config(*overrides), tmp_path)


def test_the_summary_table_joins_a_study_and_its_ablation():
    def summary(task, start, verdicts, reached, label, identifiable, applies, agree, disagree=0):
        return IdentifySummary("discrete", task, f"{task} patterns", start, 3, verdicts, reached, identifiable, label,
                               applies, agree, disagree)

    def cell(task, seed, error, heldout=None):
        return IdentifyCell("discrete", task, f"{task} patterns", NOT_IDENTIFIED, 1, error, 0.0, error, 0.0, 0.0, [],
                            seed=seed, start="stationary", heldout_excess_max=heldout)

    def run(summaries, cells=()):
        return IdentifyResults({}, {}, {}, "population", 8, 1e-6, 0.01, {}, list(cells), 0, 0.0,
                               summary=summaries)

    study = run([summary("a", "stationary", {NOT_IDENTIFIED: 3}, [7, 6, 8], "Theorem 4", False, 3, 3),
                 summary("b", "stationary", {IDENTIFIED: 1, INCONCLUSIVE: 2}, [1, 0, 0], "Theorem 5", True, 2, 0, 1)],
                [cell("a", 0, 0.25), cell("a", 1, 0.5), cell("b", 0, 0.125, 2e-3)])
    ablation = run([summary("a", "free", {NOT_IDENTIFIED: 3}, [8, 8, 8], "Theorem 4", False, 3, 3)])
    lines = summary_table([study, ablation]).splitlines()
    assert lines[0].startswith("| task | HMM | the paper (expected) | stationary start: verdicts |")
    assert lines[2:] == [
        "| `a patterns` | discrete | Theorem 4: does not identify | not identified 3/3 | 7, 6, 8 of 8 "
        "| 2.5e-01 – 5.0e-01 | — | 3/3 | not identified 3/3 |",
        "| `b patterns` | discrete | Theorem 5: identifies; its conditions hold for 2/3 | inconclusive 2, identified 1 "
        "(of 3) | 1, 0, 0 of 8 | 1.2e-01 | 2.0e-03 | **0/1** | not run |"]
    with pytest.raises(TaskError, match="two runs both measured task a on discrete with a free start"):
        summary_table([ablation, ablation])
    with pytest.raises(TaskError, match="at least one run"):
        summary_table([])


def test_a_predicted_conditional_sums_to_one_even_where_probabilities_underflow():
    """Transition and emission log-probabilities in the −1000s (where training once went: T² from probabilities
    underflowed on paths the adjacent grid still counted, and x1⊗x3 → x2 reached −984 nats): q(x2 | x1, x3) still
    sums to 1 over x2, and the loss is no lower than the truth's."""
    log_transition = torch.tensor([[-3300.0, -3306.0, 0.0], [-6.5, -3.6, -0.03], [0.0, -3382.0, -3385.0]],
                                  dtype=torch.float64).log_softmax(-1)
    log_emission = torch.tensor([[0.0, -4441.0, -4443.0, -4440.0], [-2741.0, 0.0, -120.7, -2737.0],
                                 [-32.3, -0.33, -1.5, -2.9]], dtype=torch.float64).log_softmax(-1)
    log_initial = torch.tensor([0.0, -900.0, -900.0], dtype=torch.float64).log_softmax(-1)
    params = HMMParameters("discrete", log_initial[None], log_transition[None], log_emission[None])
    task = MaskedPredictionTask([{"visible": [0, 2], "predicted": [1]}])
    values = all_sequences(4, 3)
    q = predicted_log_prob(params, task.patterns[0], values)[0].exp().view(4, 4, 4)   # [x1, x2, x3]
    assert torch.allclose(q.sum(1), torch.ones(4, 4, dtype=torch.float64), rtol=0, atol=1e-12)
    model = random_discrete_hmm(seed=2, concentration=1.0, balanced=False)
    data = masked_prediction_data(model, task)
    assert float(masked_prediction_loss(params, task, data)) > float(masked_prediction_loss(model.parameters(), task,
                                                                                           data))


def test_pairs_predicted_both_ways_are_written_once_in_the_table():
    assert compact("x1 → x2") == "x1 → x2"
    assert compact("x1 → x2 & x2 → x1") == "x1 ↔ x2"
    assert compact("x1 → x2 & x2 → x1 & x2 → x3 & x3 → x2 & x1 → x3 & x3 → x1") == "x1 ↔ x2 + x2 ↔ x3 + x1 ↔ x3"
    assert compact("x1 → x2⊗x3 & x2 → x1") == "x1 → x2⊗x3 + x2 → x1"
