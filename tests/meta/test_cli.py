"""The maskpolicy-pretrain command, end to end, in real subprocesses with tiny settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TINY = [
    "task.n_people=40", "task.biographies_per_person=2", "pretrain.steps=6", "pretrain.batch_size=8",
    "pretrain.checkpoint_every=3", "finetune.epochs=2", "finetune.batch_size=8", "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]
TINY_BERT = ["model.config.hidden_size=32", "model.config.intermediate_size=64"]
TINY_BART = ["model=tiny_bart", "model.config.d_model=32", "model.config.encoder_ffn_dim=64",
             "model.config.decoder_ffn_dim=64"]


def run_command(*overrides: str, cwd: Path, module: str = "maskpolicy.meta.commands.pretrain"
                ) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", module, *overrides]
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_one_run_writes_complete_results(tmp_path):
    run_command("policy=entity", "seed=1", *TINY, *TINY_BERT, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert {"policy", "task", "model", "seed", "downstream", "pretrain", "mll", "wall_seconds", "versions"} <= set(
        results)
    constant = {"kind": "constant", "start": None, "end": None, "at": 0.5, "steps": None}
    assert results["policy"] == {"name": "entity", "params": {"_target_": "maskpolicy.policies.EntityPolicy",
                                                              "rate": 0.15, "shortfall": "error",
                                                              "schedule": constant}, "source": None}
    assert results["pretrain"]["rates"] == [] and results["pretrain"]["tables"] == []
    assert results["task"]["name"] == "bioworld" and results["task"]["params"]["n_people"] == 40
    assert results["seed"] == 1 and results["pretrain"]["steps"] == 6
    pretrained = results["pretrain"]
    assert pretrained["tokens"] > 0 and 0 < pretrained["masked_tokens"] < pretrained["tokens"]
    assert all(0.0 <= results["downstream"][k] <= 1.0 for k in ("dev_em", "test_em", "test_f1"))
    assert results["versions"]["torch"] and results["versions"]["maskpolicy"]
    assert results["schema"] == {"command": "pretrain", "version": 4}
    assert (results["downstream"]["name"], results["downstream"]["metric"]) == ("closed_book_qa", "em")
    assert results["model"]["loading"] is None  # built from a config: no checkpoint to load from
    assert results["downstream"]["test_em"] is not None  # maskpolicy-pretrain scores test; search trials do not
    assert set(results["mll_targets"]) == {"all", "entities"} and results["mll_targets"]["all"] == results["mll"]
    assert results["mll_targets"]["entities"]["target"] == "entities" and results["base"] is None
    assert pretrained["probe"] == [] and pretrained["probe_target"] is None  # the probe is off outside a search
    assert (tmp_path / "run/pretrained/model.safetensors").exists()
    assert (tmp_path / "run/pretrain/metrics.csv").exists() and (tmp_path / "run/finetune/metrics.csv").exists()


def test_seq2seq_model_with_full_sentence_targets(tmp_path):
    run_command("policy=span", *TINY, *TINY_BART, "pretrain.corruption.target=full",
                f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert results["model"]["name"] == "tiny_bart" and results["pretrain"]["final_loss"] > 0


def test_multirun_sweeps_policies_and_summarises(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_command("--multirun", "policy=random,mixture", *TINY, *TINY_BERT, f"hydra.sweep.dir={sweep}",
                       cwd=tmp_path)
    summary = json.loads((tmp_path / "sweep/summary.json").read_text())
    assert sorted(row["policy"] for row in summary) == ["mixture", "random"]
    assert (tmp_path / "sweep/summary.csv").exists() and "mixture" in done.stdout and "dev EM" in done.stdout


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    probe = ["pretrain.probe.every=3", "pretrain.probe.passes=2", "pretrain.probe.max_sequences=8"]
    first = TINY + TINY_BERT + probe + ["pretrain.steps=3"]
    run_command(*first, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert (run_dir / "checkpoints/pretrain/last.ckpt").exists()
    before = json.loads((run_dir / "results.json").read_text())["pretrain"]["probe"]
    again = run_command(*TINY, *TINY_BERT, *probe, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert "resuming pre-training" in again.stdout + again.stderr
    pretrained = json.loads((run_dir / "results.json").read_text())["pretrain"]
    assert pretrained["steps"] == 6
    # the probe's curve lives in the checkpoint: the resumed run keeps the value measured before the kill
    assert [step for step, _ in pretrained["probe"]] == [3, 6] and pretrained["probe"][0] == before[0]


def test_pmi_on_a_linear_schedule_records_its_rates_and_reuses_its_cached_tables(tmp_path):
    schedule = ["policy.schedule.kind=linear", "policy.schedule.start=0.3", "policy.schedule.end=0.15"]
    common = ["policy=pmi", "policy.min_count=2", *schedule, f"pretrain.tables_cache={tmp_path / 'tables'}", *TINY,
              *TINY_BERT]
    run_command(*common, f"hydra.run.dir={tmp_path / 'first'}", cwd=tmp_path)
    run_command(*common, "seed=1", f"hydra.run.dir={tmp_path / 'second'}", cwd=tmp_path)
    first, second = (json.loads((tmp_path / name / "results.json").read_text())["pretrain"]
                     for name in ("first", "second"))
    assert first["rates"] == [[0, 0.3], [1, 0.27], [2, 0.24], [4, 0.18], [5, 0.15]]
    assert [t["source"] for t in first["tables"]] == ["built"] and [t["source"] for t in second["tables"]] == ["cache"]
    assert first["tables"][0]["kind"] == "pmi" and first["tables"][0]["entries"] > 0
    assert first["tables"][0]["path"] == second["tables"][0]["path"]
    assert all(run["tables"][0]["remember_seconds"] >= 0 for run in (first, second))  # the corpus rows, once a run
    logged = [line.split(",") for line in (tmp_path / "first/pretrain/metrics.csv").read_text().splitlines()]
    column = logged[0].index("pretrain/rate")
    rates = [float(row[column]) for row in logged[1:] if row[column]]
    assert rates == pytest.approx([0.3 - 0.03 * step for step in range(6)])


def test_an_installed_plugin_is_a_command_line_choice(tmp_path):
    try:
        distribution("maskpolicy-vowel")
    except PackageNotFoundError:
        pytest.skip("the example plugin tests/plugins/maskpolicy-vowel is not installed")
    run_dir = tmp_path / "run"
    run_command("policy=every_nth", "policy.rate=0.2", *TINY, *TINY_BERT, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert results["policy"]["name"] == "every_nth"
    assert results["policy"]["params"]["_target_"] == "maskpolicy_vowel.EveryNthPolicy"
    assert results["policy"]["params"]["rate"] == 0.2
