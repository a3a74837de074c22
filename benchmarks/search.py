"""Search strategies at equal trial budgets: TPE vs random vs a grid, with and without pruning.

Each arm is one real ``maskpolicy-search`` study (a subprocess, one thread, two arms at
a time) on the same space (``search/space=grid``: 4 families, 10 configurations, so
the grid arm — Optuna's BruteForceSampler, the grid of a conditional space — is
exhaustive) and the same small bioworld (``--people``, ``--steps``, ``--epochs``). Final
re-runs are off: this measures the search. Read back from each study's SQLite file:

* best-so-far dev EM after each trial (trial order = completion order);
* compute seconds (sum of trial durations) spent until the arm first reached its best
  value, and in total;
* pruning's saving: for each sampler, 1 − seconds(pruned arm) / seconds(unpruned arm)
  to reach the unpruned arm's best value (if the pruned arm reaches it at all).

Run: ``python benchmarks/search.py [--trials 10] [--people 100] [--steps 300] [--epochs 6]
[--json search.json] [--parallel 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

SAMPLERS = {"tpe": "tpe", "random": "random", "grid": "brute_force"}
PRUNERS = {"none": ["search/pruner=none"],
           "median": ["search/pruner=median", "search.pruner.n_startup_trials=2", "search.pruner.n_warmup_steps=2"]}


def arm_command(sampler: str, pruner: str, out: Path, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "maskpolicy.meta.commands.search", "search/space=grid",
            f"search/sampler={SAMPLERS[sampler]}", *PRUNERS[pruner], f"search.n_trials={args.trials}",
            "search.every_family_first=false",
            "search.n_workers=1", "search.final.n_seeds=0", f"task.n_people={args.people}",
            f"pretrain.steps={args.steps}", f"pretrain.checkpoint_every={args.steps}", f"finetune.epochs={args.epochs}",
            f"seed={args.seed}", "trainer.enable_progress_bar=false", f"hydra.run.dir={out}"]


def run_arms(arms: list[tuple[str, str]], root: Path, args: argparse.Namespace) -> dict[tuple[str, str], Path]:
    """Runs the arms ``args.parallel`` at a time; returns each arm's run directory."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pending, running, done = list(arms), [], {}
    while pending or running:
        while pending and len(running) < args.parallel:
            arm = pending.pop(0)
            out = root / f"{arm[0]}-{arm[1]}"
            log = open(root / f"{arm[0]}-{arm[1]}.log", "w")  # noqa: SIM115 (closed when the arm ends)
            running.append((arm, out, log, subprocess.Popen(arm_command(*arm, out, args), stdout=log,
                                                            stderr=subprocess.STDOUT, env=env)))
        for entry in list(running):
            arm, out, log, process = entry
            if process.poll() is not None:
                log.close()
                if process.returncode != 0:
                    raise RuntimeError(f"arm {arm} failed; see {log.name}")
                done[arm] = out
                running.remove(entry)
        time.sleep(1)
    return done


def curve(run_dir: Path) -> dict:
    """Best-so-far value and cumulative compute seconds per finished trial, in completion order."""
    study = optuna.load_study(study_name="maskpolicy", storage=f"sqlite:///{run_dir / 'study.db'}")
    trials = sorted((t for t in study.get_trials() if t.datetime_complete), key=lambda t: t.datetime_complete)
    best, spent, points = float("-inf"), 0.0, []
    for trial in trials:
        spent += (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.state == TrialState.COMPLETE:
            best = max(best, trial.value)
        points.append({"trial": trial.number, "state": trial.state.name, "family": trial.params.get("family"),
                       "value": trial.value, "best": best, "seconds": spent})
    return {"points": points, "best": best, "seconds": spent,
            "pruned": sum(p["state"] == "PRUNED" for p in points)}


def seconds_to_reach(points: list[dict], target: float) -> float | None:
    return next((p["seconds"] for p in points if p["best"] >= target - 1e-12), None)


def markdown(results: dict) -> str:
    lines = ["| sampler | pruner | best dev EM | trials pruned | compute s (all) | compute s to its best |",
             "|---|---|---:|---:|---:|---:|"]
    for name, arm in results["arms"].items():
        sampler, pruner = name.split("-")
        lines.append(f"| {sampler} | {pruner} | {arm['best']:.3f} | {arm['pruned']} | {arm['seconds']:.0f} | "
                     f"{seconds_to_reach(arm['points'], arm['best']):.0f} |")
    lines += ["", "| sampler | unpruned best | pruned reaches it? | compute to reach it: unpruned / pruned | saving |",
              "|---|---:|---|---:|---:|"]
    for sampler, saving in results["pruning"].items():
        reached = "yes" if saving["pruned_seconds"] is not None else "no"
        shown = "—" if saving["saving"] is None else f"{saving['saving']:.0%}"
        pruned = "—" if saving["pruned_seconds"] is None else f"{saving['pruned_seconds']:.0f}"
        lines.append(f"| {sampler} | {saving['target']:.3f} | {reached} | {saving['unpruned_seconds']:.0f} / "
                     f"{pruned} | {shown} |")
    lines += ["", "Best-so-far dev EM after each trial:", ""]
    for name, arm in results["arms"].items():
        lines.append(f"- {name}: " + ", ".join(f"{p['best']:.3f}" for p in arm["points"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--people", type=int, default=100)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--root", default=None, help="keep the studies here (default: a temporary folder)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="maskpolicy-search-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    arms = [(sampler, pruner) for sampler in SAMPLERS for pruner in PRUNERS]
    started = time.perf_counter()
    dirs = run_arms(arms, root, args)
    results = {"settings": vars(args) | {"root": str(root)},
               "arms": {f"{s}-{p}": curve(dirs[(s, p)]) for s, p in arms}, "pruning": {}}
    for sampler in SAMPLERS:
        plain, pruned = results["arms"][f"{sampler}-none"], results["arms"][f"{sampler}-median"]
        target = plain["best"]
        unpruned_seconds = seconds_to_reach(plain["points"], target)
        pruned_seconds = seconds_to_reach(pruned["points"], target)
        saving = None if pruned_seconds is None else 1 - pruned_seconds / unpruned_seconds
        results["pruning"][sampler] = {"target": target, "unpruned_seconds": unpruned_seconds,
                                       "pruned_seconds": pruned_seconds, "saving": saving,
                                       "total_saving": 1 - pruned["seconds"] / plain["seconds"]}
    results["wall_seconds"] = time.perf_counter() - started
    print(markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
