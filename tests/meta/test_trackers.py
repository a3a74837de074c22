"""logger=mlflow and logger=wandb, built as make_trainer builds loggers; their runs read back with each tool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from maskpolicy.meta.config import ConfigError, build
from maskpolicy.meta.results.trackers import tracker_missing

MLFLOW_MISSING, WANDB_MISSING = tracker_missing("mlflow"), tracker_missing("wandb")
needs_mlflow = pytest.mark.skipif(bool(MLFLOW_MISSING), reason=MLFLOW_MISSING)
needs_wandb = pytest.mark.skipif(bool(WANDB_MISSING), reason=WANDB_MISSING)
TINY = ["task.n_people=40", "task.biographies_per_person=2", "pretrain.steps=4", "pretrain.batch_size=8",
        "pretrain.checkpoint_every=4", "finetune.epochs=2", "finetune.batch_size=8", "score.enabled=false",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "model.config.hidden_size=32",
        "model.config.intermediate_size=64"]


def stage_logger(name: str, run_dir: Path, stage: str):
    """The logger ``logger=[name]`` configures, built with the arguments make_trainer passes."""
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        node = compose("pretrain", overrides=[f"logger=[{name}]"]).logger[name]
    return build(node, f"logger {name}", save_dir=str(run_dir), name=stage, version="")


def mlflow_runs(store: Path) -> dict[str, object]:
    """Stage name → MLflow run, read with MLflow's own client from the run directory's store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    experiment = client.get_experiment_by_name("maskpolicy")
    return {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}


def metric_history(store: Path, run, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri=store.resolve().as_uri()).get_metric_history(run.info.run_id, key)
    return [(metric.step, metric.value) for metric in history]


def wandb_dry_sync(run_dir: Path) -> list[str]:
    """The offline runs ``wandb sync --dry-run`` would upload from the run directory (W&B's own command)."""
    env = {key: value for key, value in os.environ.items() if key != "WANDB_SILENT"}  # it would silence the list
    done = subprocess.run([str(Path(sys.executable).with_name("wandb")), "sync", "--dry-run"], cwd=run_dir, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    return [line.split()[-1] for line in (done.stdout + done.stderr).splitlines() if line.strip().endswith(".wandb")]


@needs_mlflow
def test_mlflow_logs_each_stage_as_a_run_in_the_run_directorys_store(tmp_path, tracker_home):
    run_dir = tmp_path / "run"
    for stage, values in (("pretrain", [2.5, 2.0]), ("finetune", [0.25, 0.5])):
        logger = stage_logger("mlflow", run_dir, stage)
        logger.log_hyperparams({"rate": 0.15})
        for step, value in enumerate(values):
            logger.log_metrics({f"{stage}/value": value}, step=step)
        logger.finalize("success")
    store = run_dir / "mlruns"
    runs = mlflow_runs(store)
    assert set(runs) == {"pretrain", "finetune"}
    assert metric_history(store, runs["pretrain"], "pretrain/value") == [(0, 2.5), (1, 2.0)]
    assert metric_history(store, runs["finetune"], "finetune/value") == [(0, 0.25), (1, 0.5)]
    for stage, run in runs.items():
        assert run.info.status == "FINISHED" and run.data.params == {"rate": "0.15"}
        assert run.data.tags["stage"] == stage and run.data.tags["run_dir"] == str(run_dir.resolve())
    assert not (tmp_path / "mlruns").exists() and not Path("mlruns").exists()  # nothing outside the run directory


@needs_mlflow
def test_mlflow_takes_another_tracking_uri(tmp_path, tracker_home):
    uri = "http://127.0.0.1:9"  # a tracking server (nothing is sent until the first metric)
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        node = compose("pretrain", overrides=["logger=[mlflow]", f"logger.mlflow.tracking_uri={uri}",
                                              "logger.mlflow.experiment=elsewhere"]).logger.mlflow
    logger = build(node, "logger mlflow", save_dir=str(tmp_path / "run"), name="pretrain", version="")
    assert logger._tracking_uri == uri and logger._experiment_name == "elsewhere" and logger._run_name == "pretrain"
    assert not (tmp_path / "run").exists()


@needs_wandb
def test_wandb_writes_one_offline_run_per_stage_under_the_run_directory(tmp_path, tracker_home):
    run_dir = tmp_path / "run"
    ids = []
    for stage in ("pretrain", "finetune"):
        logger = stage_logger("wandb", run_dir, stage)
        logger.log_metrics({f"{stage}/value": 0.5}, step=0)
        logger.finalize("success")
        ids.append(logger.experiment.id)
        assert logger.experiment.name == stage and logger.experiment.job_type == stage
        assert logger.experiment.settings.mode == "offline"
    assert ids[0] != ids[1]  # the fine-tuning stage did not log into the pre-training run
    import wandb

    wandb.finish()
    files = {path.parent.name: path.read_bytes() for path in (run_dir / "wandb").glob("offline-run-*/run-*.wandb")}
    assert sorted(name.rsplit("-", 1)[1] for name in files) == sorted(ids)
    for stage, run_id in zip(("pretrain", "finetune"), ids, strict=True):
        (record,) = [data for name, data in files.items() if name.endswith(run_id)]
        assert f"{stage}/value".encode() in record and record.startswith(b":W&B")
    assert sorted(Path(path).name for path in wandb_dry_sync(run_dir)) == sorted(f"run-{i}.wandb" for i in ids)
    assert not (tracker_home / ".netrc").exists()


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_a_missing_tracker_names_the_extra(tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # the package cannot be imported or found
    with pytest.raises(ConfigError, match=rf"logger {name}: logger={name} needs the {name} package, which is not "
                                          r"installed: pip install 'maskpolicy\[trackers\]'"):
        stage_logger(name, tmp_path, "pretrain")


@pytest.mark.slow
@needs_mlflow
@needs_wandb
def test_a_pretraining_run_logs_both_stages_to_mlflow_and_wandb(tmp_path, tracker_home, monkeypatch):
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "maskpolicy.meta.commands.pretrain", "logger=[csv,mlflow,wandb]",
                           *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HYDRA_FULL_ERROR": "1"}, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what a reader of MLflow 3's file store sets too
    runs = mlflow_runs(run_dir / "mlruns")
    assert set(runs) == {"pretrain", "finetune"} and all(run.info.status == "FINISHED" for run in runs.values())
    assert [step for step, _ in metric_history(run_dir / "mlruns", runs["pretrain"], "pretrain/loss")] == [0, 1, 2, 3]
    assert len(metric_history(run_dir / "mlruns", runs["finetune"], "dev/em")) == 2  # one per epoch
    assert len(wandb_dry_sync(run_dir)) == 2
    assert (run_dir / "pretrain/metrics.csv").is_file()  # the other loggers are untouched
