"""Two bioworld measurements the real-models issue asks for, closed-book test EM over several seeds.

``--experiment base``: the tiny BERT from scratch against the same model started from a base
pre-trained on Wikipedia's lead sections (``base.corpus=wikipedia``; its tokenizer keeps every
bioworld word whole), with entity, random and learned masking at the same intermediate steps.

``--experiment format``: Ye et al.'s output-format finding on the tiny BART: masked-spans-only
targets against full-sentence targets (``pretrain.corruption.target=spans|full``), with entity
and random masking.

Every run is a real ``maskpolicy-pretrain`` process (``maskpolicy-learn`` first for the learned
policy), ``--parallel`` at a time with one thread each; finished runs are read back, so a killed
benchmark resumes. Defaults are the demo's world and budget (``task=bioworld_small``, 400
pre-training steps, 15 fine-tuning epochs). The last line printed is one JSON object.

Run: ``python benchmarks/bioworld_ablations.py --experiment base|format [--seeds 0 1 2] [--override ...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from processes import run_at_most  # benchmarks/ is on sys.path when a script here runs

from maskpolicy.meta.results import schema

BUDGET = ["task=bioworld_small", "pretrain.steps=400", "pretrain.checkpoint_every=400", "finetune.epochs=15",
          "score.max_sequences=100", "trainer.enable_progress_bar=false", "logger=[csv]", "pretrain.save_model=false"]
POLICIES = {"entity": ["policy=entity", "policy.shortfall=top_up"], "random": ["policy=random"], "learned": []}
WIKIPEDIA_BASE = ["base.enabled=true", "base.corpus=wikipedia", "base.corpus_size=10033", "base.steps=2000",
                  "model.vocab_size=8000"]
EXPERIMENTS = {
    "base": {"starts": {"scratch": [], "wikipedia": WIKIPEDIA_BASE}, "policies": ["entity", "random", "learned"]},
    "format": {"starts": {"spans": ["model=tiny_bart", "pretrain.corruption.target=spans"],
                          "full": ["model=tiny_bart", "pretrain.corruption.target=full"]},
               "policies": ["entity", "random"]},
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", required=True, choices=list(EXPERIMENTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--override", nargs="*", default=[], help="extra overrides for every run")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "maskpolicy-bioworld-ablations")
    args = parser.parse_args()
    experiment = EXPERIMENTS[args.experiment]
    root = args.root / args.experiment
    env = {**ENV, "MASKPOLICY_CACHE": str(args.root / "cache")}
    if "learned" in experiment["policies"]:
        learn = {seed: ([sys.executable, "-m", "maskpolicy.meta.commands.learn", "task=bioworld_small",
                         "learning.method=supervised", "learning.supervised.epochs=30", f"seed={seed}",
                         f"hydra.run.dir={root / 'learned' / f'seed{seed}'}"], root / f"learn-seed{seed}.log")
                 for seed in args.seeds}
        root.mkdir(parents=True, exist_ok=True)
        run_at_most(learn, args.parallel, env,
                    finished=lambda seed: (root / "learned" / f"seed{seed}" / "policy").is_dir())
    runs = {(start, policy, seed): root / start / policy / f"seed{seed}"
            for start in experiment["starts"] for policy in experiment["policies"] for seed in args.seeds}
    jobs = {}
    for (start, policy, seed), path in runs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        chosen = POLICIES[policy] or ["policy=artifact", f"policy.path={root / 'learned' / f'seed{seed}' / 'policy'}"]
        jobs[start, policy, seed] = ([sys.executable, "-m", "maskpolicy.meta.commands.pretrain", *BUDGET,
                                      *experiment["starts"][start], *chosen, *args.override, f"seed={seed}",
                                      f"hydra.run.dir={path}"], path.parent / f"seed{seed}.log")
    # the first run that needs the base builds it while the from-scratch runs go; the others then find it cached
    first = [key for key in jobs if key[0] == "wikipedia"][:1]
    order = [*first, *(key for key in jobs if key[0] != "wikipedia"), *(key for key in jobs if key[0] == "wikipedia"
                                                                         and key not in first)]
    run_at_most({key: jobs[key] for key in order}, args.parallel, env,
                finished=lambda key: (runs[key] / "results.json").exists())
    table = {f"{start}/{policy}": summarise([schema.load(runs[start, policy, seed]) for seed in args.seeds])
             for start in experiment["starts"] for policy in experiment["policies"]}
    print(f"{'start/policy':<22}{'test EM':>16}{'dev EM':>16}{'wall s':>9}")
    for name, row in table.items():
        print(f"{name:<22}{row['test_em'][0]:>9.3f} ± {row['test_em'][1]:.3f}{row['dev_em'][0]:>9.3f} ± "
              f"{row['dev_em'][1]:.3f}{row['wall_seconds']:>9.0f}")
    print(json.dumps({"experiment": args.experiment, "seeds": args.seeds, "budget": BUDGET + args.override,
                      "starts": experiment["starts"], "rows": table}))


def summarise(results: list) -> dict:
    def spread(values: list[float]) -> list[float]:
        return [round(statistics.fmean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0]

    return {"test_em": spread([r.downstream.test_em for r in results]),
            "dev_em": spread([r.downstream.dev_em for r in results]),
            "per_seed_test_em": [r.downstream.test_em for r in results],
            "wall_seconds": round(statistics.fmean(r.wall_seconds for r in results), 1)}


if __name__ == "__main__":
    main()
