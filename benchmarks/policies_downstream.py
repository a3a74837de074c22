"""The policies side by side downstream: test EM on bioworld after intermediate pre-training, several seeds.

Each variant is a real ``maskpolicy-pretrain`` run (pre-training, then fine-tuning with the best dev
epoch kept, then test); the table gives mean ± standard deviation over seeds of test and dev EM, the
share of tokens masked, the corpus-table build time (``pmi``, ``informative``) and the wall time.
Defaults are the demo's world and budget (``task=bioworld_small``, 400 pre-training steps ≈ 40 epochs,
15 fine-tuning epochs). Runs go ``--parallel`` at a time with one thread each; finished runs are read
back, so a killed benchmark resumes. The last line printed is one JSON object.

Run: ``python benchmarks/policies_downstream.py [--variants pmi entity random] [--seeds 0 1 2] [--root DIR]
[--override pretrain.steps=1500 ...]``.
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

VARIANTS = {
    "random": ["policy=random"],
    "whole_word": ["policy=whole_word"],
    "entity": ["policy=entity", "policy.shortfall=top_up"],
    "pmi": ["policy=pmi"],
    "informative": ["policy=informative"],
    "random_linear_0.30-0.15": ["policy=random", "policy.schedule.kind=linear", "policy.schedule.start=0.3",
                                "policy.schedule.end=0.15"],
    "entity_linear_0.30-0.15": ["policy=entity", "policy.shortfall=top_up", "policy.schedule.kind=linear",
                                "policy.schedule.start=0.3", "policy.schedule.end=0.15"],
}
BUDGET = ["task=bioworld_small", "pretrain.steps=400", "pretrain.checkpoint_every=400", "finetune.epochs=15",
          "score.max_sequences=100", "trainer.enable_progress_bar=false", "logger=[csv]"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--override", nargs="*", default=[], help="extra overrides for every run")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "maskpolicy-policies-downstream")
    args = parser.parse_args()
    runs = {(variant, seed): args.root / variant / f"seed{seed}" for variant in args.variants for seed in args.seeds}
    jobs = {key: ([sys.executable, "-m", "maskpolicy.meta.commands.pretrain", *VARIANTS[key[0]], f"seed={key[1]}",
                   *BUDGET, *args.override, f"pretrain.tables_cache={args.root / 'tables'}",
                   f"hydra.run.dir={path}"], path.parent / f"seed{key[1]}.log")
            for key, path in runs.items()}
    for path in runs.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    run_at_most(jobs, args.parallel, ENV, finished=lambda key: (runs[key] / "results.json").exists())
    summary = {variant: summarise([schema.load(runs[variant, seed] / "results.json") for seed in args.seeds])
               for variant in args.variants}
    print(f"{'variant':<26}{'test EM':>16}{'dev EM':>16}{'masked':>9}{'tables s':>10}{'wall s':>9}")
    for variant, row in summary.items():
        print(f"{variant:<26}{row['test_em'][0]:>9.3f} ± {row['test_em'][1]:.3f}{row['dev_em'][0]:>9.3f} ± "
              f"{row['dev_em'][1]:.3f}{row['masked_share']:>9.3f}{row['tables_seconds']:>10.2f}"
              f"{row['wall_seconds']:>9.0f}")
    print(json.dumps({"seeds": args.seeds, "budget": BUDGET + args.override, "variants": summary}))


def summarise(results) -> dict:
    def spread(values):
        return [round(statistics.fmean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0]

    tables = [table["seconds"] for r in results for table in r.pretrain.tables if table["source"] == "built"]
    return {
        "test_em": spread([r.downstream.test_em for r in results]),
        "dev_em": spread([r.downstream.dev_em for r in results]),
        "per_seed_test_em": [r.downstream.test_em for r in results],
        "masked_share": round(statistics.fmean(r.pretrain.masked_tokens / r.pretrain.tokens for r in results), 4),
        "tables_seconds": round(max(tables, default=0.0), 2),
        "wall_seconds": round(statistics.fmean(r.wall_seconds for r in results), 1),
    }


if __name__ == "__main__":
    main()
