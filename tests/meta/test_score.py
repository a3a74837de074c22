"""The maskpolicy-score command: tractable tasks against their exact LML, masked LMs on held-out text."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from hydra.errors import MissingConfigException
from test_cli import TINY, TINY_BERT, run_command  # tests/meta is on sys.path (pytest's prepend mode)

import maskpolicy.conf
from maskpolicy.meta.commands.score import per_rate_title, run_score
from maskpolicy.meta.config import ConfigError, build
from maskpolicy.meta.pipeline import setup
from maskpolicy.meta.results.schema import SCHEMA_VERSION, ScoreResults, load
from maskpolicy.meta.scoring.estimators import Estimator, FixedRate, MLLError
from maskpolicy.tasks.base import TaskError
from maskpolicy.tasks.data.bioworld import BioWorld
from maskpolicy.tasks.text.tokenization import train_wordpiece
from maskpolicy.tasks.tractable.hmm import tiny_masked_lm

ESTIMATOR_CONFIGS = sorted(path.stem for path in Path(maskpolicy.conf.__file__).parent.glob("score/estimator/*.yaml"))
RESULTS_KEYS = {"schema", "task", "seed", "estimator", "estimate", "stderr", "reduction", "nats_per_token",
                "bits_per_token", "sequences", "tokens", "forward_passes", "forward_passes_per_sequence", "per_rate",
                "fixed_rates", "exact_lml", "exact_nats_per_token", "relative_error", "checkpoint", "data_file",
                "wall_seconds", "versions", "target", "empty_sequences", "positions"}


def config(*overrides: str):
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        return compose("score", overrides=list(overrides))


def independent_ppca_lml(arrays, keep=None) -> float:
    """Recomputes Σ log N(x_K; mean_K, (W Wᵀ + σ² I)_KK) with numpy alone, from data.npz (K: all when None)."""
    x, mean, loadings, noise = arrays["data"], arrays["mean"], arrays["loadings"], float(arrays["noise_std"])
    keep = np.arange(len(mean)) if keep is None else keep
    covariance = (loadings @ loadings.T + noise**2 * np.eye(len(mean)))[np.ix_(keep, keep)]
    centred = x[:, keep] - mean[keep]
    _, logdet = np.linalg.slogdet(covariance)
    quadratic = np.einsum("bi,ij,bj->b", centred, np.linalg.inv(covariance), centred)
    return float(np.sum(-0.5 * (len(keep) * math.log(2 * math.pi) + logdet + quadratic)))


def independent_target_lml(arrays) -> float:
    """Σ log p(x_A | x_rest) = Σ log p(x) − Σ log p(x_rest), A being data.npz's scored positions."""
    rest = np.setdiff1d(np.arange(arrays["data"].shape[1]), arrays["scored_positions"])
    return independent_ppca_lml(arrays) - independent_ppca_lml(arrays, rest)


@pytest.mark.parametrize("name", ESTIMATOR_CONFIGS)
@pytest.mark.parametrize("command", ["score", "pretrain"])
def test_every_estimator_config_builds_the_estimator_of_its_name(command, name):
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose(command, overrides=[f"score/estimator={name}", "score.passes=24", "score.rate=0.4"])
    estimator = build(cfg.score.estimator, "score estimator")
    assert isinstance(estimator, Estimator) and estimator.name == name
    assert getattr(estimator, "passes", 24) == 24 and getattr(estimator, "rate", 0.4) == 0.4


def test_the_estimator_configs_are_the_five_estimators():
    assert ESTIMATOR_CONFIGS == ["exhaustive", "fixed_rate", "pll", "rates", "stratified"]
    assert config().score.estimator._target_ == "maskpolicy.meta.scoring.estimators.Stratified"


@pytest.mark.parametrize("task", ["ppca", "hmm"])
def test_exhaustive_scoring_of_a_tractable_task_is_exact(tmp_path, task):
    results = run_score(config(f"task={task}", "score/estimator=exhaustive"), tmp_path, task)
    assert results.estimate == pytest.approx(results.exact_lml, rel=1e-8)
    assert results.relative_error < 1e-8 and results.stderr == 0.0
    assert results.reduction == "sum" and results.estimator == "exhaustive"
    assert (results.target, results.empty_sequences, results.positions) == ("all", 0, None)
    assert results.forward_passes == 200 * (2**8 - 1) and results.forward_passes_per_sequence == 2**8 - 1
    assert len(results.per_rate.S) == 8 and results.per_rate.m == list(range(1, 9))
    assert results.task.name == task and results.task.params["n_sequences"] == 200 and results.data_file is None
    assert (tmp_path / "per_rate.png").stat().st_size > 10_000
    written = json.loads((tmp_path / "results.json").read_text())
    assert set(written) == RESULTS_KEYS and written["exact_lml"] == results.exact_lml
    assert written["schema"] == {"command": "score", "version": SCHEMA_VERSION}
    assert load(tmp_path, ScoreResults) == dataclasses.replace(results, versions=written["versions"])


@pytest.mark.parametrize("task", ["ppca", "hmm"])
def test_a_positions_target_is_scored_exactly_against_the_conditional_log_likelihood(tmp_path, task):
    results = run_score(config(f"task={task}", "score/estimator=exhaustive", "score.target=positions",
                               "score.positions=[6,1,4]", "score.fixed_rates=[0.34]"), tmp_path, task)
    assert results.relative_error < 1e-8 and results.estimate == pytest.approx(results.exact_lml, rel=1e-8)
    assert (results.target, results.positions, results.empty_sequences) == ("positions", [1, 4, 6], 0)
    assert results.tokens == 200 * 3 and results.forward_passes == 200 * 7 and results.per_rate.m == [1, 2, 3]
    assert results.exact_nats_per_token == pytest.approx(results.exact_lml / 600)
    (point,) = results.fixed_rates
    assert point.rate_used == 1 / 3 and point.bias_total > 0  # D·S_1 over-estimates, as over all positions
    written = json.loads((tmp_path / "results.json").read_text())
    assert (written["target"], written["positions"], written["empty_sequences"]) == ("positions", [1, 4, 6], 0)
    assert per_rate_title(task, results) == f"{task}: S_m, exhaustive estimator, target positions [1, 4, 6]"
    single = run_score(config(f"task={task}", "score.target=positions", "score.positions=5", "score.plot=false",
                              "score.fixed_rates=[]"), tmp_path / "single", task)
    assert single.positions == [5] and single.tokens == 200 and single.stderr < 1e-12  # one mask: no spread


def test_saved_data_tells_a_recomputation_the_target(tmp_path):
    results = run_score(config("task.save_data=true", "score/estimator=exhaustive", "score.target=positions",
                               "score.positions=[0,5]", "score.plot=false"), tmp_path / "a", "ppca")
    with np.load(tmp_path / "a/data.npz", allow_pickle=False) as arrays:
        assert str(arrays["target"]) == "positions" and arrays["scored_positions"].tolist() == [0, 5]
        assert independent_target_lml(arrays) == pytest.approx(results.exact_lml, rel=1e-10)
        assert independent_target_lml(arrays) == pytest.approx(results.estimate, rel=1e-8)
    everything = run_score(config("task.save_data=true", "score.plot=false"), tmp_path / "b", "ppca")
    with np.load(tmp_path / "b/data.npz", allow_pickle=False) as arrays:
        assert str(arrays["target"]) == "all" and arrays["scored_positions"].tolist() == list(range(8))
        assert independent_target_lml(arrays) == pytest.approx(everything.exact_lml, rel=1e-10)


@pytest.fixture(scope="module")
def saved_masked_lm(tmp_path_factory) -> Path:
    """A tiny untrained masked LM and a tokenizer trained on a 20-person bioworld, saved like a run's pretrained/."""
    world = BioWorld(n_people=20)
    tokenizer = train_wordpiece([d.text for d in (*world.corpus(), *world.heldout())], vocab_size=300)
    path = tmp_path_factory.mktemp("pretrained")
    tiny_masked_lm(len(tokenizer), seed=0, max_length=128).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_text_targets_score_only_their_tokens(tmp_path, saved_masked_lm):
    def score(target: str) -> ScoreResults:
        cfg = config("task=bioworld", "task.n_people=20", "score.passes=4", f"score.checkpoint={saved_masked_lm}",
                     "score.fixed_rates=[]", f"score.target={target}", "score.plot=false")
        return run_score(cfg, tmp_path / target, "bioworld")

    everything, entities, answers = score("all"), score("entities"), score("answers")
    assert everything.sequences == entities.sequences == 20 and entities.empty_sequences == 0
    assert everything.tokens > entities.tokens > 20 * 6  # every biography names its person and six values
    assert answers.sequences == len({q.context for q in BioWorld(n_people=20).qa("dev")}) == 5
    assert 0 < answers.tokens < entities.tokens and answers.target == "answers" and answers.positions is None
    assert json.loads((tmp_path / "entities/results.json").read_text())["target"] == "entities"
    for results in (everything, entities, answers):
        assert results.nats_per_token == pytest.approx(results.estimate / results.tokens)
        assert results.forward_passes == 4 * results.sequences and results.exact_lml is None


def test_fixed_rate_points_report_their_bias(tmp_path):
    results = run_score(config("score/estimator=exhaustive", "score.fixed_rates=[0.15,0.9]"), tmp_path, "ppca")
    low, high = results.fixed_rates
    assert (low.rate, low.rate_used, high.rate, high.rate_used) == (0.15, 0.125, 0.9, 0.875)
    assert low.bias_total > 0 > high.bias_total
    assert low.estimate - results.exact_lml == pytest.approx(low.bias_total)
    assert low.forward_passes == 200 * 8 and low.stderr == 0.0  # all C(8, 1) masks: S_1 exactly
    assert json.loads((tmp_path / "results.json").read_text())["fixed_rates"][1]["bias_total"] == high.bias_total


def test_a_fixed_rate_run_equals_its_comparison_point(tmp_path):
    results = run_score(config("score/estimator=fixed_rate", "score.rate=0.5", "score.fixed_rates=[0.5]",
                               "score.plot=false"), tmp_path, "ppca")
    (point,) = results.fixed_rates
    assert results.estimator == "fixed_rate" and point.estimate == results.estimate
    assert results.estimate - results.exact_lml == pytest.approx(point.bias_total)
    assert not (tmp_path / "per_rate.png").exists()


def test_mean_reduction_divides_estimate_and_exact_alike(tmp_path):
    total = run_score(config("score.plot=false"), tmp_path / "a", "ppca")
    mean = run_score(config("score/estimator=stratified", "score.plot=false", "score.reduction=mean"),
                     tmp_path / "b", "ppca")
    assert total.estimator == "stratified" and total.forward_passes == 200 * 200
    assert mean.estimate == pytest.approx(total.estimate / 200)
    assert mean.exact_lml == pytest.approx(total.exact_lml / 200)
    assert mean.stderr == pytest.approx(total.stderr / 200)
    assert abs(total.estimate - total.exact_lml) < 4 * total.stderr


@pytest.mark.slow
def test_the_command_writes_data_anyone_can_rescore(tmp_path):
    command = [sys.executable, "-m", "maskpolicy.meta.commands.score", "task=ppca", "task.save_data=true",
               "score/estimator=exhaustive", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    with np.load(tmp_path / "data.npz", allow_pickle=False) as arrays:
        assert independent_ppca_lml(arrays) == pytest.approx(results["exact_lml"], rel=1e-10)
    assert results["data_file"] == "data.npz" and results["task"]["name"] == "ppca"
    assert results["estimator"] == "exhaustive" and (tmp_path / "per_rate.png").exists()
    assert results["target"] == "all" and results["positions"] is None


@pytest.mark.slow
def test_a_pretrained_checkpoint_is_scored_on_held_out_text(tmp_path):
    run_command(*TINY, *TINY_BERT, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    pretrained = json.loads((tmp_path / "run/results.json").read_text())["mll"]
    assert pretrained["estimator"] == "stratified" and pretrained["reduction"] == "mean"
    assert pretrained["sequences"] == 40 and pretrained["forward_passes"] == 40 * 16
    assert -math.log(1000) < pretrained["nats_per_token"] < 0 and pretrained["stderr"] > 0
    cfg = config("task=bioworld", "task.n_people=40", "task.biographies_per_person=2", "score.passes=16",
                 f"score.checkpoint={tmp_path / 'run/pretrained'}", "score.fixed_rates=[0.15]")
    results = run_score(cfg, tmp_path / "score", "bioworld")
    assert results.sequences == 40 and results.per_rate.m is None and len(results.per_rate.rate) == 20
    assert results.nats_per_token == pytest.approx(pretrained["nats_per_token"], abs=0.05)
    assert results.exact_lml is None and results.checkpoint == str(tmp_path / "run/pretrained")
    (point,) = results.fixed_rates
    assert point.rate == point.rate_used == 0.15 and point.bias_total is None and point.forward_passes == 40 * 16
    assert (tmp_path / "score/per_rate.png").exists()
    entities = run_score(config("task=bioworld", "task.n_people=40", "task.biographies_per_person=2",
                                "score.passes=16", f"score.checkpoint={tmp_path / 'run/pretrained'}",
                                "score.fixed_rates=[]", "score.target=entities"), tmp_path / "entities", "bioworld")
    assert entities.target == "entities" and entities.sequences == 40 and entities.empty_sequences == 0
    assert 0 < entities.tokens < results.tokens and entities.forward_passes == 40 * 16


def test_bad_input_fails_before_any_work(tmp_path):
    with pytest.raises(MissingConfigException, match="Could not find 'score/estimator/best'"):
        config("score/estimator=best")
    with pytest.raises(ConfigError, match="could not build the score estimator"):
        run_score(config("score.estimator=exhaustive"), tmp_path, "ppca")  # a name where a config group goes
    with pytest.raises(MLLError, match="score estimator: score.passes must be ≥ 2"):
        run_score(config("score.passes=1"), tmp_path, "ppca")
    with pytest.raises(MLLError, match=r"score.rate \(and each of score.fixed_rates\) must be in \(0, 1\], got 1.5"):
        run_score(config("score.fixed_rates=[0.15,1.5]"), tmp_path, "ppca")
    with pytest.raises(MLLError, match="at least one pass per rate"):
        run_score(config("score/estimator=rates", "score.passes=4"), tmp_path, "ppca")
    with pytest.raises(MLLError, match="score.reduction must be 'sum' or 'mean'"):
        run_score(config("score.reduction=total", "score.passes=2"), tmp_path, "ppca")
    with pytest.raises(ConfigError, match="needs a masked LM: set score.checkpoint"):
        run_score(config("task=bioworld", "task.n_people=20"), tmp_path, "bioworld")
    with pytest.raises(ConfigError, match="could not load a masked LM"):
        run_score(config("task=bioworld", "task.n_people=20", f"score.checkpoint={tmp_path / 'nothing'}"),
                  tmp_path, "bioworld")
    with pytest.raises(MLLError, match="unknown score.target 'facts'"):
        run_score(config("score.target=facts"), tmp_path, "ppca")
    with pytest.raises(MLLError, match="score.target=entities needs text with spans; tractable task 'hmm' has none"):
        run_score(config("task=hmm", "score.target=entities"), tmp_path, "hmm")
    with pytest.raises(MLLError, match=r"score.positions \[8\] lie outside the sequences' 8 positions"):
        run_score(config("score.target=positions", "score.positions=[1,8]", "task.save_data=true"), tmp_path, "ppca")
    with pytest.raises(MLLError, match="score.positions is set but score.target=all"):
        run_score(config("score.positions=[1]"), tmp_path, "ppca")
    with pytest.raises(MLLError, match="for text task 'bioworld' use score.target=entities, answers or all"):
        run_score(config("task=bioworld", "task.n_people=20", "score.target=positions", "score.positions=[1]"),
                  tmp_path, "bioworld")
    assert list(tmp_path.iterdir()) == []


def test_comparison_points_are_fixed_rate_estimators_of_the_configured_budget(tmp_path):
    results = run_score(config("score.passes=3", "score.fixed_rates=[0.5]", "score.plot=false"), tmp_path, "ppca")
    (point,) = results.fixed_rates
    assert point.forward_passes == 200 * 3 and FixedRate(0.5, 3).masked_count(8) / 8 == point.rate_used == 0.5


def test_pretraining_refuses_a_tractable_task():
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose("pretrain", overrides=["task=ppca"])
    with pytest.raises(TaskError, match="tractable tasks .* are for maskpolicy-score"):
        setup(cfg)
