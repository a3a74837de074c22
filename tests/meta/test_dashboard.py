"""A finished search's study, served by optuna-dashboard (its own command, on a free local port), read back over HTTP.

The study is written by the search's own code (``prepare``, ``optimize``, the trial function and
``record``) with the training of each trial replaced by a canned result; the dashboard must show
every trial with its family and the user attributes the leaderboard and the report read.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from maskpolicy.meta.pipeline import RunNames
from maskpolicy.meta.search import study as search_study

DASHBOARD = Path(sys.executable).with_name("optuna-dashboard")
pytestmark = pytest.mark.skipif(not DASHBOARD.is_file(), reason=f"optuna-dashboard is not installed ({DASHBOARD} "
                                "missing): pip install optuna-dashboard, or `make install` (the test extra)")
RECORDED = ("metrics", "policy", "overrides", "seconds", "tokens")  # what study.trial_function and record() keep


@pytest.fixture
def finished_search(tmp_path, monkeypatch, make_run) -> search_study.Search:
    """Eight trials of the quick profile's space, every family first, each 'trained' in no time."""
    values = iter([0.1, 0.4, 0.25, 0.3, 0.05, 0.2, 0.15, 0.35])

    def canned(cfg, policy, overrides, seed, output_dir, names, *, test, callbacks):
        return make_run(next(values), None, -2.5, seconds=12.5, seed=seed)

    monkeypatch.setattr(search_study, "run_configuration", canned)
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose("search", overrides=["search.n_trials=8", "search.n_workers=1"])
    search = search_study.prepare(cfg, tmp_path)
    search_study.optimize(cfg, search, tmp_path, RunNames("", "bioworld", "tiny_bert"))
    return search


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


@pytest.fixture
def dashboard(finished_search, tmp_path) -> Iterator[str]:
    """``optuna-dashboard sqlite:///<run>/study.db`` on a free local port; its base URL once it answers."""
    port = _free_port()
    log = (tmp_path / "dashboard.log").open("w")
    server = subprocess.Popen([str(DASHBOARD), f"sqlite:///{tmp_path / 'study.db'}", "--host", "127.0.0.1",
                               "--port", str(port), "--server", "wsgiref", "--quiet"],
                              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                _get(f"{base}/api/meta")
                break
            except (urllib.error.URLError, ConnectionError):
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"optuna-dashboard did not answer: {(tmp_path / 'dashboard.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_the_dashboard_serves_every_trial_with_what_the_report_reads(dashboard, finished_search):
    finished = finished_search.study
    studies = _get(f"{dashboard}/api/studies")["study_summaries"]
    (summary,) = [s for s in studies if s["study_name"] == finished.study_name]
    assert summary["directions"] == ["maximize"]
    detail = _get(f"{dashboard}/api/studies/{summary['study_id']}")
    served = {trial["number"]: trial for trial in detail["trials"]}
    trials = finished.get_trials(deepcopy=False)
    assert sorted(served) == [trial.number for trial in trials] == list(range(8))
    families = []
    for trial in trials:
        shown = served[trial.number]
        assert shown["state"] == "Complete" and shown["values"] == trial.values
        params = {p["name"]: p["param_external_value"] for p in shown["params"]}
        assert params == {name: str(value) for name, value in trial.params.items()}
        families.append(params["family"])
        attrs = {a["key"]: a["value"] for a in shown["user_attrs"]}
        assert set(RECORDED) <= set(attrs)
        for key in RECORDED:  # whole, not cut at the dashboard's 1,024 characters: the same values as the storage
            assert json.loads(attrs[key]) == trial.user_attrs[key], key
        assert json.loads(attrs["metrics"])["dev_em"] == trial.values[0]
        assert float(attrs["seconds"]) == 12.5 and int(attrs["tokens"]) == 1000
    assert set(families) == set(finished_search.space.families) and "learned" in families  # the longest policy config
    study_attrs = {a["key"]: json.loads(a["value"]) for a in detail["user_attrs"]}
    assert study_attrs["pruning"] == finished.user_attrs["pruning"]  # the report's step axis
    best = detail["best_trials"][0]
    assert best["number"] == max(trials, key=lambda t: t.values[0]).number
