"""``maskpolicy-search``: the framework's main job, an Optuna search over masking policies.

compose config → check space, objectives, sampler, pruner, storage and final seeds → optimise
(with ``search.n_workers`` processes on one storage; trials are judged on dev only) → re-run
the best configuration of each family with seeds the search never used and score it on test →
``leaderboard.csv``/``.json``, ``report.html``, ``search.json`` and the best policy
(``best_policy/``, a policy folder for any family — ``MaskingCollator.from_pretrained`` reads it — and
``best_policy.yaml``, its config).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from maskpolicy.meta.config import modern_overrides, plain, register_plugin_policies
from maskpolicy.meta.console import quiet_libraries
from maskpolicy.meta.cores import share_cores
from maskpolicy.meta.pipeline import RunNames
from maskpolicy.meta.results.files import write_json
from maskpolicy.meta.search.final import rate_curves, run_finals, save_best_policy
from maskpolicy.meta.search.leaderboard import (
    SCORES,
    correlation,
    format_leaderboard,
    leaderboard,
    write_leaderboard,
)
from maskpolicy.meta.search.objectives import downstream_axis
from maskpolicy.meta.search.study import FINISHED, Search, optimize, prepare, start_workers

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="pkg://maskpolicy.conf", config_name="search")
def run(cfg: DictConfig) -> float | None:
    quiet_libraries()
    started = time.perf_counter()
    hydra_config = HydraConfig.get()
    output_dir = Path(hydra_config.runtime.output_dir)
    names = RunNames("", *(hydra_config.runtime.choices.get(group, "custom") for group in ("task", "model")))
    search = prepare(cfg, output_dir)
    workers = []
    if cfg.search.role == "main" and cfg.search.n_workers > 1:
        threads = share_cores(cfg.search.n_workers)
        workers = start_workers(cfg.search.n_workers - 1, list(hydra_config.overrides.task), output_dir,
                                search.storage_location, threads)
    try:
        optimize(cfg, search, output_dir, names)
    finally:  # a study stopped by repeated failures stops its workers too, after their current trial
        for worker in workers:
            worker.wait()
    if cfg.search.role == "worker":
        return None
    processes = cfg.search.final.get("n_workers") or 1
    share_cores(processes)  # the final re-runs share the cores, as the workers did
    finals = run_finals(cfg, search, output_dir, names, processes)
    rows = leaderboard(finals, search.objectives[0])
    write_leaderboard(output_dir, rows)
    print(format_leaderboard(rows))
    if rows:
        save_best_policy(next(c for c in finals if c.label == rows[0]["label"]), output_dir)
    y = downstream_axis(search.objectives).metric  # the downstream's dev metric (EM or F1)
    agreement = correlation(search.study, SCORES[0], y)
    targeted = correlation(search.study, SCORES[1], y)
    _write_report(output_dir, search, rows, agreement, targeted, rate_curves(finals))
    summary = _summary(cfg, search, rows, agreement, time.perf_counter() - started) | {"correlation_entities": targeted}
    write_json(output_dir / "search.json", summary)
    return rows[0][search.objectives[0].metric] if rows else None


def _write_report(output_dir: Path, search: Search, rows: list, agreement: dict | None, targeted: dict | None,
                  curves: dict) -> None:
    from maskpolicy.meta.search.report import write_report  # matplotlib and Jinja2 load only here

    write_report(output_dir / "report.html", search.study, rows, agreement, curves, search.objectives,
                 targeted=targeted)


def _summary(cfg: DictConfig, search: Search, rows: list, agreement: dict | None, seconds: float) -> dict[str, Any]:
    trials = search.study.get_trials(deepcopy=False)
    return {
        "study_name": search.study.study_name,
        "storage": search.storage_location_shown,
        "objectives": [objective.name for objective in search.objectives],
        "final_seeds": list(search.final_seeds),
        "trials": {state.name.lower(): sum(t.state == state for t in trials) for state in {t.state for t in trials}},
        "finished_trials": sum(t.state in FINISHED for t in trials),
        "best": rows[0] if rows else None,
        "correlation": agreement,
        "leaderboard": "leaderboard.csv",
        "report": "report.html",
        "wall_seconds": round(seconds, 1),
        "config": {"search": plain(cfg.search), "task": plain(cfg.task), "model": plain(cfg.model)},
    }


def main() -> None:
    register_plugin_policies()
    sys.argv[1:] = modern_overrides(sys.argv[1:])
    run()


if __name__ == "__main__":
    main()
