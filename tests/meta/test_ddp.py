"""Data-parallel training on CPU (gloo, two real processes): pruning, evaluation, a whole maskpolicy-pretrain run,
and device counts the machine does not have."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from optuna.trial import TrialState

from maskpolicy.meta.config import ConfigError
from maskpolicy.meta.results import schema
from maskpolicy.meta.search.engines import SearchConfigError
from maskpolicy.meta.search.study import prepare
from maskpolicy.meta.training import check_devices, check_single_job

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
# one epoch over the 80 pre-training rows: 10 steps of 8 rows in one process, 5 steps of 2 × 8 rows on two ranks
TINY = ["task.n_people=40", "task.biographies_per_person=2", "pretrain.batch_size=8", "finetune.epochs=2",
        "finetune.batch_size=8", "score.passes=4", "score.max_sequences=20", "trainer.enable_progress_bar=false"]


def pretrain(run_dir: Path, *overrides: str) -> schema.PretrainResults:
    done = subprocess.run([sys.executable, "-m", "maskpolicy.meta.commands.pretrain", *TINY, *overrides,
                           f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=400, env=ENV,
                          stdin=subprocess.DEVNULL, cwd=run_dir.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return schema.load(run_dir / "results.json")


@pytest.mark.slow
def test_pruning_stops_every_rank_together_and_only_rank_0_reports(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("ddp_ranks.py")), str(tmp_path), storage],
                          capture_output=True, text=True, timeout=300, env=ENV, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # rank 1 was fed values the pruner keeps, yet it stopped where rank 0's pruner stopped: at step 4, after epoch 1
    assert [r["probe"] for r in ranks] == [{"pruned": True, "epoch": 1, "step": 4}] * 2
    assert [r["epochs"] for r in ranks] == [{"pruned": True, "epoch": 2, "step": 8}] * 2
    probe, epochs = optuna.load_study(study_name="ddp", storage=storage).trials
    assert probe.state == epochs.state == TrialState.PRUNED
    assert probe.intermediate_values == {2: 0.9, 4: 0.1}
    assert epochs.intermediate_values == pytest.approx({0: 0.9, 1: 0.1})  # logged as float32
    # dev scores over the whole split on every rank, the padding repeat dropped: 2 of 5, not 3 of 6 or a half
    assert [r["qa"]["ddp"] for r in ranks] == [{"em": 0.4, "f1": 0.4}] * 2
    assert all(r["qa"]["ddp"] == r["qa"]["reference"] for r in ranks)


@pytest.mark.slow
def test_pretrain_with_ddp_on_two_cpu_processes_writes_the_same_results(tmp_path):
    ddp = pretrain(tmp_path / "ddp", "trainer=ddp", "trainer.devices=2", "pretrain.steps=5")
    one = pretrain(tmp_path / "one", "trainer=cpu", "pretrain.steps=10")
    assert ddp.pretrain.steps == 5 and ddp.pretrain.rows == one.pretrain.rows == 80
    assert ddp.pretrain.tokens == one.pretrain.tokens  # both saw every row once: the ranks' counts are summed
    assert 0 < ddp.pretrain.masked_tokens < ddp.pretrain.tokens
    assert ddp.downstream.test_em is not None and 0 <= ddp.downstream.dev_em <= 1 and ddp.mll is not None
    assert set(json.loads((tmp_path / "ddp/results.json").read_text())) == set(
        json.loads((tmp_path / "one/results.json").read_text()))
    # rank 1 re-ran the command in the same run directory, logged to its own file and wrote nothing else
    assert (tmp_path / "ddp/train_ddp_process_1.log").exists()
    assert "trainer.devices=2" in (tmp_path / "ddp/.hydra/overrides.yaml").read_text()
    assert (tmp_path / "ddp/pretrained/config.json").exists()
    assert not list((tmp_path / "ddp").glob("*.tmp*"))


def trainer_config(**options) -> OmegaConf:
    return OmegaConf.create({"_target_": "pytorch_lightning.Trainer", **options})


@pytest.mark.parametrize(("options", "message"), [
    ({"accelerator": "cpu", "devices": (os.cpu_count() or 1) + 1},
     f"asks for {(os.cpu_count() or 1) + 1} CPU processes, but this machine has {os.cpu_count()} CPU cores; "
     f"set trainer.devices={os.cpu_count()} or fewer"),
    ({"accelerator": "auto", "strategy": "ddp", "devices": 999}, "but this machine has"),
    ({"accelerator": "gpu", "devices": [0, 1, 2, 3, 4, 5, 6, 7, 8]}, "asks for 9 GPUs"),
])
def test_more_devices_than_the_machine_has_is_a_clear_error(options, message):
    with pytest.raises(ConfigError, match=message):
        check_devices(trainer_config(**options))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without GPUs")
def test_a_gpu_trainer_on_a_machine_without_gpus_says_to_use_the_cpu():
    with pytest.raises(ConfigError, match=r"has 0 GPUs; use trainer=cpu"):
        check_devices(trainer_config(accelerator="gpu", devices=1))


def test_devices_the_machine_has_pass():
    for options in ({"accelerator": "cpu", "devices": os.cpu_count()}, {"devices": "auto"}, {"devices": -1}):
        check_devices(trainer_config(**options))


def test_ddp_inside_a_multirun_is_refused_as_lightning_would_restart_the_sweep_per_rank():
    ddp = trainer_config(strategy="ddp", devices=2)
    with pytest.raises(ConfigError, match=r"trainer=ddp cannot run inside a multirun \(-m\).*without -m"):
        check_single_job(ddp, multirun=True)
    check_single_job(ddp, multirun=False)
    check_single_job(trainer_config(strategy="ddp", devices=[3]), multirun=True)  # one process: nothing re-runs
    check_single_job(trainer_config(accelerator="cpu", devices=1), multirun=True)


def test_a_search_refuses_data_parallel_trials_before_any_training(tmp_path):
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose("search", overrides=["trainer=ddp", "trainer.devices=2"])
    with pytest.raises(SearchConfigError, match=r"cannot train data-parallel .* search.n_workers=N"):
        prepare(cfg, tmp_path)
    assert not list(tmp_path.iterdir())
