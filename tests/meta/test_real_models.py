"""The real assets end to end, in real subprocesses: the MiniLM encoder searched on real SQuAD text with extractive
QA as the downstream, and a bioworld search whose every trial starts from a Wikipedia base.

Skipped, with the reason, where the assets (``make real``) or the shared SQuAD sample are absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from maskpolicy.tasks.assets import skip_reason

pytestmark = pytest.mark.slow
SAMPLE = Path(__file__).resolve().parents[3] / "shared/data/squad-sample/dev-sample.json"
TWO_FAMILIES = ["~search.space.families.learned", "~search.space.families.span"]   # of the quick profile's space
QUIET = ["trainer.enable_progress_bar=false", "logger=[csv]", "search.n_workers=1", "search.final.seeds=[1]",
         "search.heartbeat_interval=1", "search.grace_period=5"]


def search(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "maskpolicy.meta.commands.search", *QUIET, *overrides], cwd=cwd,
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
                          env={**os.environ, "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "2",
                               "MASKPOLICY_CACHE": str(cwd / "cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture
def few_paragraphs(tmp_path) -> Path:
    """The first three paragraphs of the real Super Bowl 50 article (~70 questions)."""
    if not SAMPLE.is_file():
        pytest.skip(f"the shared SQuAD sample is not at {SAMPLE}")
    article = json.loads(SAMPLE.read_text())["data"][0]
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"data": [{"title": article["title"], "paragraphs": article["paragraphs"][:3]}]}))
    return path


def test_a_minilm_search_on_real_text_optimises_extractive_dev_f1(tmp_path, few_paragraphs):
    if reason := skip_reason("minilm"):
        pytest.skip(reason)
    out = tmp_path / "run"
    search("model=minilm", "model.max_length=192", "task=squad", f"task.path={few_paragraphs}",
           "task.subject=question", "downstream=extractive_qa", "search.n_trials=2",
           *TWO_FAMILIES,
           "pretrain.steps=2", "pretrain.batch_size=4", "pretrain.checkpoint_every=2", "pretrain.probe.every=1",
           "pretrain.probe.passes=2", "pretrain.probe.max_sequences=4", "finetune.epochs=1", "finetune.batch_size=8",
           "finetune.learning_rate=1e-4", "score.passes=2", "score.max_sequences=4", f"hydra.run.dir={out}",
           cwd=tmp_path)
    study = optuna.load_study(study_name="maskpolicy", storage=f"sqlite:///{out / 'study.db'}")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2 and {t.params["family"] for t in trials} == {"entity", "random"}
    for trial in trials:  # the value the study optimised is the extractive-QA dev F1 of the trial's run
        results = json.loads((out / f"trials/{trial.number:04d}/results.json").read_text())
        assert results["downstream"]["name"] == "extractive_qa" and results["downstream"]["metric"] == "f1"
        assert trial.value == results["downstream"]["dev_f1"] == trial.user_attrs["metrics"]["dev_f1"]
        new = results["model"]["loading"]["new"]
        assert new and all(name.startswith("cls.") for name in new), "the masked-LM head is new, and recorded"
    board = json.loads((out / "leaderboard.json").read_text())
    assert {row["family"] for row in board} == {"entity", "random"} and all(row["test_f1"] is not None for row in board)
    assert board == sorted(board, key=lambda row: -row["dev_f1"])   # ranked by the downstream's own metric
    assert "dev F1" in (out / "report.html").read_text()


def test_a_bioworld_search_starts_every_trial_from_a_wikipedia_base(tmp_path):
    if reason := skip_reason("wikipedia"):
        pytest.skip(reason)
    out = tmp_path / "run"
    search("task.n_people=30", "task.biographies_per_person=2", "base.enabled=true", "base.corpus=wikipedia",
           "base.corpus_size=40", "base.steps=4", "base.batch_size=8", "model.config.hidden_size=32",
           "model.config.intermediate_size=64", "search.n_trials=2",
           *TWO_FAMILIES,
           "pretrain.steps=4", "pretrain.batch_size=8", "pretrain.checkpoint_every=4", "pretrain.probe.every=2",
           "pretrain.probe.passes=2", "pretrain.probe.max_sequences=4", "finetune.epochs=1", "finetune.batch_size=8",
           "score.passes=2", "score.max_sequences=8", f"hydra.run.dir={out}", cwd=tmp_path)
    runs = [json.loads(path.read_text()) for path in sorted(out.glob("trials/*/results.json"))]
    runs += [json.loads(path.read_text()) for path in sorted(out.glob("final/*/seed-*/results.json"))]
    assert len(runs) == 4
    bases = {run["base"]["hash"] for run in runs}
    assert len(bases) == 1 and [run["base"]["source"] for run in runs].count("built") == 1, "built once, then shared"
    corpus = runs[0]["base"]["corpus"]
    assert corpus["source"] == "wikipedia" and corpus["documents"] == 40 and corpus["articles"] == 10033
