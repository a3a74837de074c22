"""The maskpolicy-score command: tractable tasks against their exact LML, masked LMs on held-out text."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from test_cli import TINY, TINY_BERT, run_command  # tests/meta is on sys.path (pytest's prepend mode)

from maskpolicy.meta.mll import MLLError
from maskpolicy.meta.pretrain import ConfigError, setup
from maskpolicy.meta.score import run_score
from maskpolicy.tasks.base import TaskError


def config(*overrides: str):
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        return compose("score", overrides=list(overrides))


def independent_ppca_lml(arrays) -> float:
    """Recomputes Σ log N(x; mean, W Wᵀ + σ² I) with numpy alone, from data.npz."""
    x, mean, loadings, noise = arrays["data"], arrays["mean"], arrays["loadings"], float(arrays["noise_std"])
    covariance = loadings @ loadings.T + noise**2 * np.eye(len(mean))
    centred = x - mean
    _, logdet = np.linalg.slogdet(covariance)
    quadratic = np.einsum("bi,ij,bj->b", centred, np.linalg.inv(covariance), centred)
    return float(np.sum(-0.5 * (len(mean) * math.log(2 * math.pi) + logdet + quadratic)))


@pytest.mark.parametrize("task", ["ppca", "hmm"])
def test_exhaustive_scoring_of_a_tractable_task_is_exact(tmp_path, task):
    results = run_score(config(f"task={task}", "score.estimator=exhaustive"), tmp_path, task)
    assert results["estimate"] == pytest.approx(results["exact_lml"], rel=1e-8)
    assert results["relative_error"] < 1e-8 and results["stderr"] == 0.0
    assert results["reduction"] == "sum" and results["estimator"] == "exhaustive"
    assert results["forward_passes"] == 200 * (2**8 - 1)
    assert len(results["per_rate"]["S"]) == 8 and results["per_rate"]["m"] == list(range(1, 9))
    assert (tmp_path / "per_rate.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "results.json").read_text())["exact_lml"] == results["exact_lml"]


def test_fixed_rate_points_report_their_bias(tmp_path):
    results = run_score(config("score.estimator=exhaustive", "score.fixed_rates=[0.15,0.9]"), tmp_path, "ppca")
    low, high = results["fixed_rates"]
    assert low["rate_used"] == 0.125 and high["rate_used"] == 0.875
    assert low["bias_total"] > 0 > high["bias_total"]
    assert low["estimate"] - results["exact_lml"] == pytest.approx(low["bias_total"])


def test_mean_reduction_divides_estimate_and_exact_alike(tmp_path):
    total = run_score(config("score.estimator=stratified", "score.plot=false"), tmp_path / "a", "ppca")
    mean = run_score(config("score.estimator=stratified", "score.plot=false", "score.reduction=mean"),
                     tmp_path / "b", "ppca")
    assert mean["estimate"] == pytest.approx(total["estimate"] / 200)
    assert mean["exact_lml"] == pytest.approx(total["exact_lml"] / 200)
    assert abs(total["estimate"] - total["exact_lml"]) < 4 * total["stderr"]


@pytest.mark.slow
def test_the_command_writes_data_anyone_can_rescore(tmp_path):
    command = [sys.executable, "-m", "maskpolicy.meta.score", "task=ppca", "task.save_data=true",
               "score.estimator=exhaustive", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    with np.load(tmp_path / "data.npz", allow_pickle=False) as arrays:
        assert independent_ppca_lml(arrays) == pytest.approx(results["exact_lml"], rel=1e-10)
    assert results["data_file"] == "data.npz" and results["task"]["name"] == "ppca"


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
    assert results["sequences"] == 40 and results["per_rate"]["m"] is None
    assert results["nats_per_token"] == pytest.approx(pretrained["nats_per_token"], abs=0.05)
    assert "exact_lml" not in results and results["fixed_rates"][0]["rate"] == 0.15
    assert (tmp_path / "score/per_rate.png").exists()


def test_bad_input_fails_before_any_work(tmp_path):
    with pytest.raises(MLLError, match="unknown estimator 'best'"):
        run_score(config("score.estimator=best"), tmp_path, "ppca")
    with pytest.raises(MLLError, match="at least one pass per rate"):
        run_score(config("score.estimator=rates", "score.passes=4"), tmp_path, "ppca")
    with pytest.raises(ConfigError, match="needs a masked LM: set score.checkpoint"):
        run_score(config("task=bioworld", "task.n_people=20"), tmp_path, "bioworld")
    with pytest.raises(ConfigError, match="could not load a masked LM"):
        run_score(config("task=bioworld", "task.n_people=20", f"score.checkpoint={tmp_path / 'nothing'}"),
                  tmp_path, "bioworld")
    assert not (tmp_path / "results.json").exists()


def test_pretraining_refuses_a_tractable_task():
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose("pretrain", overrides=["task=ppca"])
    with pytest.raises(TaskError, match="tractable tasks .* are for maskpolicy-score"):
        setup(cfg)
