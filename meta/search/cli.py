"""``maskpolicy-search``: the framework's main job, an Optuna search over masking policies.

Compose config → check the space, sampler, pruner and storage → optimise (with
``search.n_workers`` processes on one storage) → re-run the best configuration of each
policy family with ``search.final.seeds`` and score it on test → ``leaderboard.csv`` /
``leaderboard.json``, ``report.html``, ``search.json`` and the best policy (``best_policy/``
artifact for a learned policy, ``best_policy.yaml`` for a heuristic one).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ..artifacts import read_card
from ..io import plain, replace_readable, write_json_atomic
from ..plugins import register_plugin_policies
from .leaderboard import correlation, format_table, leaderboard_row, rank, write_leaderboard
from .study import (
    FINISHED,
    Names,
    Search,
    best_per_family,
    final_runs,
    optimize,
    prepare,
    share_cores,
    start_workers,
)

log = logging.getLogger(__name__)
ARTIFACT_LOADER = "maskpolicy.meta.artifacts.load_policy"


def run_search(cfg: DictConfig, output_dir: Path, overrides: list[str], names: Names) -> dict[str, Any]:
    """The whole job; returns and writes ``search.json`` (workers only optimise and return {})."""
    started = time.perf_counter()
    search = prepare(cfg, output_dir)
    transfer = _transfer_policy(cfg)
    workers = []
    if cfg.search.role == "main" and cfg.search.n_workers > 1:
        threads = share_cores(cfg.search.n_workers)
        workers = start_workers(cfg.search.n_workers - 1, overrides, output_dir, search.storage_location, threads)
    optimize(cfg, search, output_dir, names)
    for worker in workers:
        worker.wait()
    if cfg.search.role == "worker":
        return {}
    share_cores(1)  # the final re-runs run one at a time: give them every core
    rows = _final_rows(cfg, search, transfer, output_dir, names)
    write_leaderboard(output_dir, rows)
    print(format_table(rows))
    summary = _summary(cfg, search, rows, time.perf_counter() - started)
    _save_best_policy(rows, output_dir)
    _write_report(output_dir, search, rows, summary["correlation"])
    write_json_atomic(output_dir / "search.json", summary)
    return summary


def _transfer_policy(cfg: DictConfig) -> dict | None:
    """The policy node of ``search.transfer_from`` (checked now, before any training)."""
    if not cfg.search.transfer_from:
        return None
    path = Path(cfg.search.transfer_from).expanduser().resolve()
    read_card(path)
    return {"_target_": ARTIFACT_LOADER, "path": str(path)}


def _final_rows(cfg: DictConfig, search: Search, transfer: dict | None, output_dir: Path, names: Names) -> list:
    """Leaderboard rows of the final re-runs; none when ``search.final.seeds`` is empty (search only)."""
    rows = []
    if not cfg.search.final.seeds:
        return rows
    for family, trial in best_per_family(search.study).items():
        runs = final_runs(cfg, family, trial.user_attrs["policy"], trial.user_attrs["overrides"], output_dir, names)
        params = {k: v for k, v in trial.params.items() if k != "family"}
        rows.append(leaderboard_row(family, family, "search", trial.number, params, runs))
    if transfer is not None:
        runs = final_runs(cfg, "transfer", transfer, {}, output_dir, names)
        rows.append(leaderboard_row("transfer", "transfer", "transfer", None, {"path": transfer["path"]}, runs))
    return rank(rows)


def _summary(cfg: DictConfig, search: Search, rows: list, seconds: float) -> dict[str, Any]:
    trials = search.study.get_trials(deepcopy=False)
    states = {state.name.lower(): sum(t.state == state for t in trials) for state in {t.state for t in trials}}
    return {
        "study_name": search.study.study_name,
        "storage": search.storage_location,
        "objectives": list(search.objectives),
        "trials": states,
        "finished_trials": sum(t.state in FINISHED for t in trials),
        "best": rows[0] if rows else None,
        "correlation": correlation(search.study),
        "leaderboard": "leaderboard.csv",
        "report": "report.html",
        "wall_seconds": round(seconds, 1),
        "config": {"search": plain(cfg.search), "task": plain(cfg.task), "model": plain(cfg.model)},
    }


def _save_best_policy(rows: list, output_dir: Path) -> None:
    """The best configuration, ready for ``policy=artifact`` or as a policy config."""
    if not rows:
        return
    best = rows[0]
    learned = sorted(output_dir.glob(f"final/{best['label']}/seed-*/learning/policy"))
    if learned:
        staging = Path(tempfile.mkdtemp(dir=output_dir, prefix=".best_policy."))
        shutil.copytree(learned[0], staging / "policy")
        shutil.rmtree(output_dir / "best_policy", ignore_errors=True)
        os.replace(staging / "policy", output_dir / "best_policy")
        shutil.rmtree(staging)
        return
    first = sorted(output_dir.glob(f"final/{best['label']}/seed-*/results.json"))[0]
    policy = OmegaConf.create(json.loads(first.read_text())["policy"]["params"])
    with tempfile.NamedTemporaryFile("w", dir=output_dir, prefix=".best_policy.yaml.", delete=False) as handle:
        handle.write(OmegaConf.to_yaml(policy))
    replace_readable(handle.name, output_dir / "best_policy.yaml")


def _write_report(output_dir: Path, search: Search, rows: list, correlation_summary: dict | None) -> None:
    from .report import write_report  # matplotlib and the report's figures load only here

    curves = {}
    for row in rows:
        runs = sorted(output_dir.glob(f"final/{row['label']}/seed-*/results.json"))
        if runs:
            mll = json.loads(runs[0].read_text()).get("mll") or {}
            if mll.get("per_rate"):
                curves[row["label"]] = {"rate": mll["per_rate"]["rate"], "S": mll["per_rate"]["S"]}
    write_report(output_dir / "report.html", search.study, rows, correlation_summary, curves, search.objectives)


register_plugin_policies()


@hydra.main(version_base="1.3", config_path="pkg://maskpolicy.conf", config_name="search")
def main(cfg: DictConfig) -> float | None:
    hydra_config = HydraConfig.get()
    runtime = hydra_config.runtime
    names = Names(runtime.choices.get("task", "custom"), runtime.choices.get("model", "custom"))
    summary = run_search(cfg, Path(runtime.output_dir), list(hydra_config.overrides.task), names)
    best = summary.get("best")
    return None if not best else best["dev_em"]


if __name__ == "__main__":
    main()
