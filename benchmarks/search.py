"""Search strategies and pruning at equal trial budgets, repeated over sampler seeds.

Each arm is one real ``maskpolicy-search`` study (a subprocess, one thread, ``--parallel``
arms at a time) on the same space (``search/space=grid``: 4 families, 10 configurations,
so the grid arm, Optuna's BruteForceSampler, is exhaustive) and the same small bioworld
(``--people``, ``--steps``, ``--epochs``). Final re-runs are off: this measures the search.
Pruning modes:

* ``none``: no pruner, no probe (every trial runs to the end);
* ``epochs``: the median pruner on dev EM after each fine-tuning epoch only (the probe off);
* ``probe``: the median pruner on the pre-training probe every ``--probe-every`` steps
  (the entity-token score on a small held-out slice), then on dev EM per epoch.

Every (sampler, mode) arm runs once per repetition; repetition ``r`` uses ``seed=--seed+r``
in every arm, so arms of a repetition share the sampler seed. Read back from each study's
SQLite file: best-so-far dev EM after each trial (in completion order), compute seconds
(sum of trial durations) until the arm first reached its best value and in total, and,
per repetition, pruning's saving: 1 − seconds(pruned arm) / seconds(unpruned arm) to reach
the unpruned arm's best value (``None`` when the pruned arm never reaches it).

Run: ``python benchmarks/search.py [--samplers tpe] [--modes none probe] [--repeats 3] [--trials 10]
[--people 100] [--steps 300] [--epochs 6] [--json search.json] [--parallel 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState
from processes import run_at_most  # benchmarks/ is on sys.path when a script here runs

SAMPLERS = {"tpe": "tpe", "random": "random", "grid": "brute_force"}
MEDIAN = ["search/pruner=median", "search.pruner.n_startup_trials=2"]
MODES = {"none": ["search/pruner=none", "search.pruning.pretraining=false"],
         "epochs": [*MEDIAN, "search.pruning.pretraining=false"],
         "probe": [*MEDIAN, "search.pruning.pretraining=true"]}
Arm = tuple[str, str, int]  # sampler, pruning mode, repetition


def arm_name(arm: Arm) -> str:
    return f"{arm[0]}-{arm[1]}-r{arm[2]}"


def arm_command(arm: Arm, out: Path, args: argparse.Namespace) -> list[str]:
    sampler, mode, repetition = arm
    return [sys.executable, "-m", "maskpolicy.meta.commands.search", "search/space=grid",
            f"search/sampler={SAMPLERS[sampler]}", *MODES[mode], *(
                [f"pretrain.probe.every={args.probe_every}", f"pretrain.probe.target={args.probe_target}",
                 f"search.pruner.n_warmup_steps={args.warmup}"]
                if mode == "probe" else ["pretrain.probe.every=0"]), f"search.n_trials={args.trials}",
            "search.every_family_first=false", "search.n_workers=1", "search.final.n_seeds=0",
            f"task.n_people={args.people}", f"pretrain.steps={args.steps}", f"pretrain.checkpoint_every={args.steps}",
            f"finetune.epochs={args.epochs}", f"seed={args.seed + repetition}", "trainer.enable_progress_bar=false",
            f"hydra.run.dir={out}"]


def run_arms(arms: list[Arm], root: Path, args: argparse.Namespace) -> dict[Arm, Path]:
    """Runs the arms ``args.parallel`` at a time (a finished arm is read back); returns each arm's run directory."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = {arm: root / arm_name(arm) for arm in arms}
    jobs = {arm: (arm_command(arm, out[arm], args), root / f"{arm_name(arm)}.log") for arm in arms}
    run_at_most(jobs, args.parallel, env, lambda arm: (out[arm] / "search.json").exists())
    return out


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


def saving(plain: dict, pruned: dict) -> dict:
    """What pruning saved to reach the unpruned arm's best value (same sampler, same seed)."""
    target = plain["best"]
    unpruned_seconds = seconds_to_reach(plain["points"], target)
    pruned_seconds = seconds_to_reach(pruned["points"], target)
    return {"target": target, "unpruned_seconds": unpruned_seconds, "pruned_seconds": pruned_seconds,
            "pruned_best": pruned["best"],
            "saving": None if pruned_seconds is None else 1 - pruned_seconds / unpruned_seconds,
            "total_saving": 1 - pruned["seconds"] / plain["seconds"]}


def mean_spread(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{statistics.fmean(values):.0%} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.0%}"


def markdown(results: dict) -> str:
    lines = ["| arm | best dev EM | trials pruned | compute s (all) | compute s to its best |",
             "|---|---:|---:|---:|---:|"]
    for name, arm in results["arms"].items():
        lines.append(f"| {name} | {arm['best']:.3f} | {arm['pruned']} | {arm['seconds']:.0f} | "
                     f"{seconds_to_reach(arm['points'], arm['best']):.0f} |")
    lines += ["", "| sampler | mode | reps reaching the unpruned best | saving to reach it (mean ± sd) | "
              "saving in total compute | per rep: unpruned s / pruned s |", "|---|---|---:|---:|---:|---|"]
    for key, reps in results["pruning"].items():
        reached = [rep["saving"] for rep in reps if rep["saving"] is not None]
        per_rep = "; ".join(f"{rep['unpruned_seconds']:.0f} / "
                            + ("never" if rep["pruned_seconds"] is None else f"{rep['pruned_seconds']:.0f}")
                            for rep in reps)
        lines.append(f"| {key.replace('-', ' | ')} | {len(reached)}/{len(reps)} | {mean_spread(reached)} | "
                     f"{mean_spread([rep['total_saving'] for rep in reps])} | {per_rep} |")
    lines += ["", "Best-so-far dev EM after each trial:", ""]
    for name, arm in results["arms"].items():
        lines.append(f"- {name}: " + ", ".join(f"{p['best']:.3f}" if p["best"] > -1 else "—" for p in arm["points"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--people", type=int, default=100)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--probe-every", type=int, default=100)
    parser.add_argument("--probe-target", default="answers", choices=["answers", "entities", "all"])
    parser.add_argument("--warmup", type=int, default=200, help="no pruning before this pre-training step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--root", default=None, help="keep the studies here (default: a temporary folder)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if "none" not in args.modes:
        parser.error("--modes must include none: savings are measured against it")
    root = Path(args.root or tempfile.mkdtemp(prefix="maskpolicy-search-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    arms = [(sampler, mode, rep) for rep in range(args.repeats) for sampler in args.samplers for mode in args.modes]
    started = time.perf_counter()
    dirs = run_arms(arms, root, args)
    curves = {arm: curve(dirs[arm]) for arm in arms}
    results = {"settings": vars(args) | {"root": str(root)},
               "arms": {arm_name(arm): curves[arm] for arm in arms},
               "pruning": {f"{sampler}-{mode}": [saving(curves[(sampler, "none", rep)], curves[(sampler, mode, rep)])
                                                 for rep in range(args.repeats)]
                           for sampler in args.samplers for mode in args.modes if mode != "none"},
               "wall_seconds": time.perf_counter() - started}
    print(markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
