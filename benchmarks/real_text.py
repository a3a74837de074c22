"""Real models, real text: does intermediate pre-training help, and which masking policy helps most?

On real SQuAD articles from ``../shared/data/squad-sample`` (questions split into train/dev/test
*within* the articles, so the pre-training corpus holds every context), for the
real MiniLM-L6 encoder (from its base: the new masked-LM head trained on Wikipedia) and for the
tiny BERT from the Wikipedia base: no intermediate pre-training against intermediate
pre-training with each policy, the same steps, several seeds. Each run is judged by
extractive QA (dev/test F1 and EM, the epoch chosen on dev F1) and, from the same pre-trained
weights, by closed-book QA (test EM); its targeted scores (all tokens, entity tokens, QA-dev
answer tokens given the rest) are put against extractive test F1 by Spearman's rho across runs.

Every run is a real ``maskpolicy-pretrain`` process (``maskpolicy-learn`` first for the learned
policy); finished runs are read back, so a killed benchmark resumes. ``--size cpu`` (the
default) fits 2 CPU cores in about an hour: the three articles of the SQuAD 2.0 sample (485
answerable questions, split 0.6/0.2/0.2), short budgets; ``--size full`` is the GPU size: all four
articles (1,295 questions, 0.5/0.25/0.25), more steps and epochs, the full context window. The
last line printed is one JSON object.

Run: ``python benchmarks/real_text.py [--models minilm tiny] [--policies none entity ...] [--seeds 0 1 2]
[--size cpu|full] [--parallel 2] [--root DIR]``.
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
from scipy.stats import spearmanr

from maskpolicy.meta.results import schema

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad-sample"
ARTICLES = [SHARED / "dev-sample.json", SHARED / "dev-v2-three-articles.json"]
POLICIES = {
    "none": [],
    "random": ["policy=random"],
    "whole_word": ["policy=whole_word"],
    "span": ["policy=span"],
    "entity": ["policy=entity", "policy.shortfall=top_up"],
    "informative": ["policy=informative"],
    "learned": [],   # policy=artifact, trained first by maskpolicy-learn on the QA-train answers
}
TASKS = {"cpu": ["task=squad", f"task.path={ARTICLES[1]}", "task.subject=question",
                 "task.split_fractions=[0.6,0.2,0.2]"],
         "full": ["task=squad", f"task.path=[{','.join(map(str, ARTICLES))}]", "task.subject=question"]}
COMMON = ["trainer.enable_progress_bar=false", "logger=[csv]", "score.targets=[all,entities,answers]",
          "pretrain.save_model=true"]
# Sizes: the model, its base, intermediate pre-training and fine-tuning budgets. cpu: ~1 hour on 2 cores.
SIZES = {
    "cpu": {
        "minilm": ["model=minilm", "model.max_length=192", "base.enabled=true", "base.corpus=wikipedia",
                   "base.train=head", "base.steps=300", "base.corpus_size=2400", "base.batch_size=16",
                   "base.learning_rate=1e-3", "pretrain.steps=40", "pretrain.batch_size=8",
                   "pretrain.learning_rate=1e-4", "finetune.epochs=1", "finetune.batch_size=8",
                   "finetune.learning_rate=1e-4", "score.max_sequences=48", "score.passes=4"],
        "tiny": ["model=tiny_bert", "model.vocab_size=12000", "model.max_length=128", "base.enabled=true",
                 "base.corpus=wikipedia",
                 "base.steps=1500", "base.corpus_size=10033", "pretrain.steps=300", "pretrain.batch_size=32",
                 "finetune.epochs=8", "finetune.batch_size=32", "finetune.learning_rate=5e-4",
                 "score.max_sequences=48", "score.passes=4"],
    },
    "full": {
        "minilm": ["model=minilm", "model.max_length=384", "base.enabled=true", "base.corpus=wikipedia",
                   "base.train=head", "base.steps=2000", "base.corpus_size=10033", "base.batch_size=32",
                   "base.learning_rate=1e-3", "pretrain.steps=500", "pretrain.batch_size=32",
                   "pretrain.learning_rate=1e-4", "finetune.epochs=4", "finetune.batch_size=32",
                   "finetune.learning_rate=1e-4", "score.max_sequences=400", "score.passes=16",
                   "trainer=gpu", "trainer.precision=bf16-mixed"],
        "tiny": ["model=tiny_bert", "model.vocab_size=12000", "model.max_length=128", "base.enabled=true",
                 "base.corpus=wikipedia",
                 "base.steps=10000", "base.corpus_size=10033", "pretrain.steps=1500", "pretrain.batch_size=32",
                 "finetune.epochs=20", "finetune.batch_size=32", "finetune.learning_rate=5e-4",
                 "score.max_sequences=400", "trainer=gpu"],
    },
}
SCORES = ("all", "entities", "answers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "tiny"], choices=["minilm", "tiny"])
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--size", default="cpu", choices=list(SIZES))
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--override", nargs="*", default=[], help="extra overrides for every run")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "maskpolicy-real-text")
    args = parser.parse_args()
    if not all(path.is_file() for path in ARTICLES):
        sys.exit(f"the shared SQuAD articles are not at {SHARED}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "MASKPOLICY_CACHE": str(args.root / "cache")}
    root = args.root / args.size
    build_bases(args, root, env)
    if "learned" in args.policies:
        learn_policies(args, root, env)
    runs = {(model, policy, seed): root / model / policy / f"seed{seed}"
            for model in args.models for policy in args.policies for seed in args.seeds}
    jobs = {}
    for key, path in runs.items():
        path.mkdir(parents=True, exist_ok=True)
        jobs[(*key, "extractive")] = (pretrain_command(args, root, *key, path / "extractive"), path / "extractive.log")
        jobs[(*key, "closed_book")] = (closed_book_command(args, root, *key, path), path / "closed_book.log")
    # the closed-book run reads the extractive run's pre-trained weights: run them in two waves
    for wave in ("extractive", "closed_book"):
        wave_jobs = {key: job for key, job in jobs.items() if key[3] == wave}
        run_at_most(wave_jobs, args.parallel, env,
                    finished=lambda key: (runs[key[:3]] / key[3] / "results.json").exists())
    table = {(model, policy): summarise([runs[model, policy, seed] for seed in args.seeds])
             for model in args.models for policy in args.policies}
    correlations = {model: rank_correlations([runs[model, policy, seed] for policy in args.policies
                                              for seed in args.seeds]) for model in args.models}
    print_table(table, correlations)
    print(json.dumps({"size": args.size, "seeds": args.seeds, "sizes": {m: SIZES[args.size][m] for m in args.models},
                      "rows": {f"{model}/{policy}": row for (model, policy), row in table.items()},
                      "spearman_vs_extractive_test_f1": correlations}))


def model_overrides(args: argparse.Namespace, model: str) -> list[str]:
    return [*TASKS[args.size], *SIZES[args.size][model], *COMMON, *args.override]


def build_bases(args: argparse.Namespace, root: Path, env: dict) -> None:
    """Each model's base, built once (a zero-step run builds and caches it) before the runs share it."""
    jobs = {model: ([sys.executable, "-m", "maskpolicy.meta.commands.pretrain", *model_overrides(args, model),
                     "pretrain.steps=0", "finetune.epochs=1", "score.enabled=false",
                     f"hydra.run.dir={root / model / 'base'}"], root / model / "base.log")
            for model in args.models}
    for model in args.models:
        (root / model).mkdir(parents=True, exist_ok=True)
    run_at_most(jobs, args.parallel, env, finished=lambda model: (root / model / "base" / "results.json").exists())


def learn_policies(args: argparse.Namespace, root: Path, env: dict) -> None:
    """The learned policy of each (model, seed): direct supervision from the QA-train answers."""
    jobs = {(model, seed): ([sys.executable, "-m", "maskpolicy.meta.commands.learn", *TASKS[args.size],
                             *[o for o in SIZES[args.size][model] if o.startswith("model")],
                             "learning.method=supervised", f"seed={seed}",
                             f"hydra.run.dir={learned(root, model, seed)}"],
                            root / model / f"learn-seed{seed}.log")
            for model in args.models for seed in args.seeds}
    run_at_most(jobs, args.parallel, env, finished=lambda key: (learned(root, *key) / "policy").is_dir())


def learned(root: Path, model: str, seed: int) -> Path:
    return root / model / "learned-policy" / f"seed{seed}"


def policy_overrides(root: Path, model: str, policy: str, seed: int) -> list[str]:
    if policy == "none":
        return ["pretrain.steps=0"]
    if policy == "learned":
        return ["policy=artifact", f"policy.path={learned(root, model, seed) / 'policy'}"]
    return POLICIES[policy]


def pretrain_command(args: argparse.Namespace, root: Path, model: str, policy: str, seed: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "maskpolicy.meta.commands.pretrain", *model_overrides(args, model),
            *policy_overrides(root, model, policy, seed), "downstream=extractive_qa", f"seed={seed}",
            f"hydra.run.dir={out}"]


def closed_book_command(args: argparse.Namespace, root: Path, model: str, policy: str, seed: int,
                        path: Path) -> list[str]:
    """Closed-book QA from the same pre-trained weights: the extractive run's ``pretrained/`` (its base for none)."""
    weights = [] if policy == "none" else [
        "model=hf_masked_lm", f"model.pretrained={path / 'extractive' / 'pretrained'}",
        f"model.tokenizer={path / 'extractive' / 'pretrained'}", "base.enabled=false"]
    # the saved weights replace the model and its base; the context length stays the extractive run's
    size = [o for o in SIZES[args.size][model]
            if not (weights and o.startswith(("model", "base")) and not o.startswith("model.max_length"))]
    return [sys.executable, "-m", "maskpolicy.meta.commands.pretrain", *TASKS[args.size], *size, *COMMON,
            *args.override,
            *weights, "pretrain.steps=0", "score.enabled=false", "downstream=closed_book_qa", f"seed={seed}",
            f"hydra.run.dir={path / 'closed_book'}"]


def spread(values: list[float]) -> list[float]:
    return [round(statistics.fmean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0]


def summarise(paths: list[Path]) -> dict:
    extractive = [schema.load(path / "extractive") for path in paths]
    closed = [schema.load(path / "closed_book") for path in paths]
    return {
        "extractive_dev_f1": spread([r.downstream.dev_f1 for r in extractive]),
        "extractive_test_f1": spread([r.downstream.test_f1 for r in extractive]),
        "extractive_test_em": spread([r.downstream.test_em for r in extractive]),
        "closed_book_test_em": spread([r.downstream.test_em for r in closed]),
        "per_seed_extractive_test_f1": [round(r.downstream.test_f1, 4) for r in extractive],
        "scores": {target: spread([r.mll_targets[target].nats_per_token for r in extractive])
                   for target in SCORES if all(target in r.mll_targets for r in extractive)},
        "wall_seconds": round(statistics.fmean(r.wall_seconds for r in extractive), 1),
    }


def rank_correlations(paths: list[Path]) -> dict:
    """Spearman's rho of each targeted score with extractive test F1 across the runs with intermediate pre-training."""
    runs = [schema.load(path / "extractive") for path in paths]
    runs = [run for run in runs if run.pretrain.steps > 0]
    result = {}
    for target in SCORES:
        pairs = [(r.mll_targets[target].nats_per_token, r.downstream.test_f1) for r in runs if target in r.mll_targets]
        if len(pairs) >= 3:
            statistic = spearmanr(*zip(*pairs, strict=True))
            result[target] = {"rho": round(float(statistic.statistic), 3), "p": round(float(statistic.pvalue), 4),
                              "runs": len(pairs)}
    return result


def print_table(table: dict, correlations: dict) -> None:
    def cell(pair: list[float]) -> str:
        return f"{pair[0]:.3f} ± {pair[1]:.3f}"

    print(f"{'model':<8}{'policy':<13}{'extr. dev F1':>16}{'extr. test F1':>16}{'extr. test EM':>16}"
          f"{'closed-book EM':>16}{'entities nats':>16}{'answers nats':>16}")
    for (model, policy), row in table.items():
        scores = row["scores"]
        print(f"{model:<8}{policy:<13}{cell(row['extractive_dev_f1']):>16}{cell(row['extractive_test_f1']):>16}"
              f"{cell(row['extractive_test_em']):>16}{cell(row['closed_book_test_em']):>16}"
              f"{cell(scores['entities']) if 'entities' in scores else '—':>16}"
              f"{cell(scores['answers']) if 'answers' in scores else '—':>16}")
    for model, found in correlations.items():
        print(f"{model}: Spearman rho with extractive test F1 — " +
              ", ".join(f"{target} {value['rho']:+.2f} (p {value['p']:.2f}, {value['runs']} runs)"
                        for target, value in found.items()))


if __name__ == "__main__":
    main()
