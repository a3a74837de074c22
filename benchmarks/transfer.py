"""Where does a learned policy transfer, and where does it hurt? Mask quality and downstream EM.

``--part quality`` (minutes): masked-token precision / recall at rate 0.15 of a policy trained on
one task and judged on another, next to a policy trained on the target itself, ``entity`` and
``random`` (seeds 0-2, mean ± std):

* bioworld world A → world B (different attributes and value lists);
* bioworld → SQuAD (each shared article) and SQuAD (all four articles) → bioworld;
* across tokenizers: trained with the cased WordPiece of the model config (4,000 tokens: nearly
  every word whole), judged on a held-out SQuAD article tokenised by a lower-cased WordPiece and
  by a byte-level BPE (``Ġ``), both trained locally with 600 tokens, so most words split; the
  policy's default features hold no word hash.

``--part downstream`` (about 15 minutes on 2 cores): intermediate pre-training on world B
(``bioworld_small``, 400 steps, 15 fine-tuning epochs) with the policy learned on A, the policy
learned on B, ``entity`` and ``random``; test EM over ``--seeds`` (default 0 1 2). Runs go two at
a time, one thread each; finished runs are read back, so a killed benchmark resumes.

Run: ``python benchmarks/transfer.py [--part quality downstream] [--root DIR] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from policy_quality import SAMPLE_FILES, SHARED, contenders, read_articles, write_articles  # benchmarks/ on sys.path
from processes import run_at_most
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from maskpolicy.meta.config import build
from maskpolicy.meta.learning.evaluation import mask_quality
from maskpolicy.meta.learning.supervised import ALL, AnswerRows, encode_answers, feature_spec
from maskpolicy.meta.learning.train import TrainedPolicy, train_policy
from maskpolicy.meta.results import schema
from maskpolicy.meta.results.schema import PretrainResults
from maskpolicy.policies import LearnedPolicy
from maskpolicy.tasks.base import Task
from maskpolicy.tasks.text.tokenization import train_wordpiece

WORLD_A = ["task=bioworld_small", "task.seed=0", "task.attributes=[birth_city,birth_year,university]"]
WORLD_B = ["task=bioworld_small", "task.seed=1", "task.attributes=[major,employer,employer_city]"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SMALL_VOCABULARY = 600
SHOWN = ("transferred", "in_target", "entity", "random")


def trained(task_overrides: Sequence[str], seed: int, train_split: str = "train") -> TrainedPolicy:
    """A policy trained by ``maskpolicy-learn``'s defaults on the task the overrides describe."""
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose("learn", overrides=[*task_overrides, f"seed={seed}", f"learning.train_split={train_split}"])
    return train_policy(cfg)


def target(task_overrides: Sequence[str]) -> tuple[Task, PreTrainedTokenizerBase, int]:
    """The task the overrides describe, its tokenizer as its own run would build it, and the row length."""
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose("learn", overrides=list(task_overrides))
    task, spec = build(cfg.task, "task"), build(cfg.model, "model")
    return task, spec.build_tokenizer(document.text for document in task.corpus()), spec.max_length


def target_rows(task: Task, split: str, tokenizer: PreTrainedTokenizerBase, max_length: int) -> AnswerRows:
    return encode_answers(task, split, tokenizer, max_length, feature_spec(task, LearnedPolicy().features))


def scores(transferred: LearnedPolicy, in_target: LearnedPolicy, rows: AnswerRows, pad: int, seed: int) -> dict:
    baselines = contenders(transferred)
    policies = {"transferred": transferred, "in_target": in_target, "entity": baselines["entity"],
                "random": baselines["random"]}
    return {name: _pr(mask_quality(policy, rows, pad, seed)) for name, policy in policies.items()}


def _pr(quality) -> dict:
    return {"precision": quality.precision, "recall": quality.recall}


def world_to_world(seed: int) -> dict:
    source, target = trained(WORLD_A, seed), trained(WORLD_B, seed)
    rows = target_rows(target.task, "dev", target.tokenizer, target.spec.max_length)
    return scores(source.policy, target.policy, rows, target.tokenizer.pad_token_id, seed)


def squad_files(tmp: Path) -> list[Path]:
    return [write_articles([article], tmp / f"article-{k}.json")
            for k, article in enumerate(read_articles([SHARED / name for name in SAMPLE_FILES]))]


@dataclass(frozen=True)
class Fold:
    """One held-out SQuAD article: the policy trained on the other three, and the article as its own run sees it."""

    trained: TrainedPolicy
    task: Task
    tokenizer: PreTrainedTokenizerBase
    max_length: int


def leave_one_out(seed: int, articles: list[Path]) -> list[Fold]:
    """Every fold once per seed; both the bioworld → SQuAD and the tokenizer comparisons read them."""
    folds = []
    for k, article in enumerate(articles):
        others = write_articles(read_articles([a for i, a in enumerate(articles) if i != k]),
                                article.with_name(f"others-{k}.json"))
        folds.append(Fold(trained(["task=squad", f"task.path={others}"], seed, ALL),
                          *target(["task=squad", f"task.path={article}"])))
    return folds


def bioworld_to_squad(seed: int, folds: list[Fold]) -> dict:
    """Per held-out article: the bioworld policy vs one trained on the other three articles."""
    source = trained(["task=bioworld"], seed)
    per_article = []
    for fold in folds:
        rows = target_rows(fold.task, ALL, fold.tokenizer, fold.max_length)
        per_article.append(scores(source.policy, fold.trained.policy, rows, fold.tokenizer.pad_token_id, seed))
    return _mean_of(per_article)


def squad_to_bioworld(seed: int, all_articles: Path) -> dict:
    source, target = trained(["task=squad", f"task.path={all_articles}"], seed, ALL), trained(["task=bioworld"], seed)
    rows = target_rows(target.task, "dev", target.tokenizer, target.spec.max_length)
    return scores(source.policy, target.policy, rows, target.tokenizer.pad_token_id, seed)


def byte_level_bpe(texts: Sequence[str], vocab_size: int = 4000) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE (``Ġ`` marks a leading space), trained here, with BERT-style specials."""
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")), ("[SEP]", tokenizer.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def across_tokenizers(seed: int, folds: list[Fold]) -> dict:
    """Trained with cased WordPiece on three articles; the fourth tokenised three ways."""
    out: dict[str, list[dict]] = {}
    for fold in folds:
        source = fold.trained
        texts = [document.text for document in fold.task.corpus()]
        # small vocabularies, so that most words split into several tokens unlike in training
        for name, tokenizer in (("wordpiece_cased", fold.tokenizer),
                                ("wordpiece_lower_600", train_wordpiece(texts, SMALL_VOCABULARY, lowercase=True)),
                                ("byte_level_bpe_600", byte_level_bpe(texts, SMALL_VOCABULARY))):
            rows = target_rows(fold.task, ALL, tokenizer, source.spec.max_length)
            entity = contenders(source.policy)["entity"]
            out.setdefault(name, []).append({
                "transferred": _pr(mask_quality(source.policy, rows, tokenizer.pad_token_id, seed)),
                "entity": _pr(mask_quality(entity, rows, tokenizer.pad_token_id, seed))})
    return {name: _mean_of(runs) for name, runs in out.items()}


def _mean_of(runs: Sequence[dict]) -> dict:
    return {name: {metric: statistics.fmean(run[name][metric] for run in runs) for metric in ("precision", "recall")}
            for name in runs[0]}


def quality(seeds: Sequence[int]) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        articles = squad_files(Path(tmp))
        all_articles = write_articles(read_articles(articles), Path(tmp) / "all.json")
        for seed in seeds:
            results.setdefault("world A → world B", []).append(world_to_world(seed))
            folds = leave_one_out(seed, articles)
            results.setdefault("bioworld → SQuAD article", []).append(bioworld_to_squad(seed, folds))
            results.setdefault("SQuAD (4 articles) → bioworld", []).append(squad_to_bioworld(seed, all_articles))
            for name, result in across_tokenizers(seed, folds).items():
                results.setdefault(f"SQuAD → held-out article, {name}", []).append(result)
            print(f"seed {seed} done", flush=True)
    return results


def quality_table(results: dict[str, list[dict]]) -> str:
    lines = ["| source → target | " + " | ".join(f"{name} P" for name in SHOWN) + " |", "|---|" + "---:|" * len(SHOWN)]
    for pair, runs in results.items():
        cells = []
        for name in SHOWN:
            values = [run[name]["precision"] for run in runs if name in run]
            cells.append(f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"
                         if len(values) > 1 else (f"{values[0]:.3f}" if values else "—"))
        lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def downstream(root: Path, seeds: Sequence[int], parallel: int) -> dict[str, list[float]]:
    """Test EM on world B after pre-training with each policy, every seed."""
    policies = {}
    for world, overrides in (("A", WORLD_A), ("B", WORLD_B)):
        out = root / f"learned-{world}"
        if not (out / "policy" / "card.json").exists():
            with initialize_config_module("maskpolicy.conf", version_base="1.3"):
                cfg = compose("learn", overrides=[*overrides])
            from maskpolicy.meta.learning.train import learn_policy  # saves the artifact like maskpolicy-learn
            learn_policy(cfg, out, "bioworld_small")
        policies[world] = out / "policy"
    families = {"transferred": ["policy=artifact", f"policy.path={policies['A']}"],
                "in_target": ["policy=artifact", f"policy.path={policies['B']}"],
                "entity": ["policy=entity", "policy.shortfall=top_up"], "random": ["policy=random"]}
    runs = {(family, seed): root / f"{family}-{seed}" for family in families for seed in seeds}
    jobs = {key: ([sys.executable, "-m", "maskpolicy.meta.commands.pretrain", *families[key[0]], *WORLD_B,
                   f"seed={key[1]}", "pretrain.steps=400", "pretrain.checkpoint_every=400", "finetune.epochs=15",
                   "score.enabled=false", "pretrain.save_model=false", "trainer.enable_progress_bar=false",
                   "logger=[csv]", f"hydra.run.dir={out}"], root / f"{out.name}.log") for key, out in runs.items()}
    run_at_most(jobs, parallel, ENV, lambda key: (runs[key] / schema.RESULTS_FILE).exists())
    em: dict[str, list[float]] = {}
    for (family, _), out in runs.items():
        em.setdefault(family, []).append(schema.load(out, PretrainResults).downstream.test_em)
    return em


def downstream_table(em: dict[str, list[float]]) -> str:
    lines = ["| policy on world B | test EM (mean ± std) | per seed |", "|---|---:|---|"]
    for family, values in em.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {family} | {statistics.fmean(values):.3f} ± {spread:.3f} | "
                     + ", ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["quality", "downstream"], choices=["quality", "downstream"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--root", default=None, help="keep the downstream runs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started, report = time.perf_counter(), {}
    if "quality" in args.part:
        report["quality"] = quality(args.seeds)
        print(quality_table(report["quality"]), flush=True)
    if "downstream" in args.part:
        root = Path(args.root or tempfile.mkdtemp(prefix="maskpolicy-transfer-"))
        root.mkdir(parents=True, exist_ok=True)
        report["downstream"] = downstream(root, args.seeds, args.parallel)
        print(downstream_table(report["downstream"]))
        print(f"runs kept in {root}")
    print(f"{time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
