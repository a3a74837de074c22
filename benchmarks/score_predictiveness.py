"""Does a label-free score predict downstream value? Spearman's rho between each score variant and test EM.

A grid of real ``maskpolicy-pretrain`` runs on bioworld — policy families × intermediate
pre-training budgets × start (from the cached base, from scratch) × seeds — each scored on
every target (``all``: every held-out token; ``entities``: only the tokens that carry facts,
the rest visible; ``answers``: QA-dev answer tokens, which uses labels) and probed during
pre-training. For each start, the rank correlation across runs between test EM and:

* each target's cumulative score of the final pre-trained model;
* the pre-training probe (the entity-targeted score on a small slice) at each probe step,
  which is what pruning during pre-training would compare.

The ``learned`` family uses a policy trained once by ``maskpolicy-learn`` (direct
supervision, defaults). Runs go two at a time, one thread each; finished runs are read
back, so a killed benchmark resumes.

Run: ``python benchmarks/score_predictiveness.py [--steps 300 1000] [--seeds 0] [--task task=bioworld_small]
[--override base.steps=1000] [--root DIR] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from processes import run_at_most  # benchmarks/ is on sys.path when a script here runs
from scipy.stats import spearmanr

from maskpolicy.meta.results import schema
from maskpolicy.meta.results.schema import PretrainResults

FAMILIES = {
    "random": ["policy=random"],
    "whole_word": ["policy=whole_word"],
    "span": ["policy=span"],
    "entity": ["policy=entity", "policy.shortfall=top_up"],
    "mixture": ["policy=mixture", "policy.components.entity.shortfall=top_up"],
    "learned": ["policy=artifact"],  # + policy.path, filled in once the policy is trained
}
TARGETS = ("all", "entities", "answers")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


TASK_OVERRIDES: list[str] = []  # --task: shared by the learned policy's training and every run


def learned_policy(root: Path) -> Path:
    out = root / "learned-policy"
    if not (out / "policy" / "card.json").exists():
        command = [sys.executable, "-m", "maskpolicy.meta.commands.learn", *TASK_OVERRIDES, f"hydra.run.dir={out}"]
        subprocess.run(command, check=True, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out / "policy"


def run_command(family: str, steps: int, start: str, seed: int, out: Path, policy_path: Path,
                args: argparse.Namespace) -> list[str]:
    policy = [*FAMILIES[family], *([f"policy.path={policy_path}"] if family == "learned" else [])]
    return [sys.executable, "-m", "maskpolicy.meta.commands.pretrain", *policy, f"pretrain.steps={steps}",
            f"pretrain.checkpoint_every={steps}", f"base.enabled={start == 'base'}", f"seed={seed}",
            f"score.targets=[{','.join(TARGETS)}]", f"pretrain.probe.every={args.probe_every}",
            "pretrain.save_model=false", "trainer.enable_progress_bar=false", "logger=[csv]",
            *([f"base.cache_dir={args.cache}"] if args.cache else []), *TASK_OVERRIDES, *args.override,
            f"hydra.run.dir={out}"]


def run_grid(args: argparse.Namespace, root: Path) -> dict[tuple, PretrainResults]:
    """Every run of the grid (finished ones read back), ``args.parallel`` at a time."""
    policy_path = learned_policy(root)
    grid = list(itertools.product(args.starts, args.steps, FAMILIES, args.seeds))
    out = {key: root / "-".join(map(str, key)) for key in grid}
    jobs = {key: (run_command(key[2], key[1], key[0], key[3], out[key], policy_path, args),
                  root / f"{out[key].name}.log") for key in grid}
    run_at_most(jobs, args.parallel, ENV, lambda key: (out[key] / schema.RESULTS_FILE).exists())
    return {key: schema.load(out[key], PretrainResults) for key in grid}


def rho(xs: list[float], ys: list[float]) -> dict:
    result = spearmanr(xs, ys)
    return {"rho": float(result.statistic), "p_value": float(result.pvalue), "runs": len(xs)}


def correlations(runs: dict[tuple, PretrainResults], start: str) -> dict:
    chosen = [run for key, run in runs.items() if key[0] == start]
    em = [run.downstream.test_em for run in chosen]
    table = {f"score[{target}]": rho([run.mll_targets[target].nats_per_token for run in chosen], em)
             for target in TARGETS}
    steps = sorted({step for run in chosen for step, _ in run.pretrain.probe})
    for step in steps:  # only steps every run reached (shorter budgets stop earlier)
        values = [dict(map(tuple, run.pretrain.probe)).get(step) for run in chosen]
        if None not in values:
            table[f"probe@{step}"] = rho(values, em)
    return table


def markdown(runs: dict[tuple, PretrainResults], starts: list[str]) -> str:
    lines = ["| start | steps | family | seed | test EM | " + " | ".join(f"score[{t}]" for t in TARGETS) + " |",
             "|---|---:|---|---:|---:|" + "---:|" * len(TARGETS)]
    for key, run in sorted(runs.items()):
        scores = " | ".join(f"{run.mll_targets[t].nats_per_token:.3f}" for t in TARGETS)
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {run.downstream.test_em:.3f} | {scores} |")
    for start in starts:
        lines += ["", f"Spearman's rho with test EM, start = {start}:", "", "| signal | rho | p | runs |",
                  "|---|---:|---:|---:|"]
        for name, value in correlations(runs, start).items():
            lines.append(f"| {name} | {value['rho']:+.2f} | {value['p_value']:.3g} | {value['runs']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--starts", nargs="+", default=["base", "scratch"], choices=["base", "scratch"])
    parser.add_argument("--probe-every", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--cache", default=None, help="base.cache_dir for the runs (default: the config's)")
    parser.add_argument("--root", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--task", nargs="*", default=[], help="task overrides, e.g. task=bioworld_small")
    parser.add_argument("--override", nargs="*", default=[], help="more run overrides, e.g. base.steps=1000")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    TASK_OVERRIDES[:] = args.task
    root = Path(args.root or tempfile.mkdtemp(prefix="maskpolicy-predictiveness-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs = run_grid(args, root)
    print(markdown(runs, args.starts))
    print(f"\n{len(runs)} runs in {time.perf_counter() - started:.0f} s; runs kept in {root}")
    if args.json:
        report = {"settings": vars(args), "correlations": {s: correlations(runs, s) for s in args.starts},
                  "runs": {"-".join(map(str, key)): schema.to_dict(run) for key, run in runs.items()}}
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
