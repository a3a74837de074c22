"""Do a policy's masks hit the answers of articles it never saw? Leave-one-article-out on real SQuAD text.

Every policy masks the held-out article's paragraphs at the same rate (0.15 of the maskable
tokens of every row); its masked-token precision and recall are counted against the tokens
of the answers to that article's questions. The learned policy is trained, with the
``maskpolicy-learn`` defaults unless ``--learn`` overrides them, on the *other* articles'
answers only. Contenders: ``learned`` (its default sampling), ``learned_topk`` (the same
scorer, greedy), ``entity`` (the rule tagger; ``entity_spacy`` too, spaCy's ``en_core_web_sm``
recogniser, when ``make real`` has installed spaCy and its model), ``pmi`` and ``informative``
(tables from the held-out article's own text), ``whole_word``, ``span``, ``random``. Each tagger's
cost is timed on every paragraph of the files, in the same run (seconds per 1,000 words).

``learned_states`` (and ``learned_states_topk``) is ``policy=learned_states``: the learned policy reading, besides
its word features, the contextual states of a frozen encoder (by default the preset's, MiniLM-L6's last and third-last
layers pooled over each word, when ``make real`` installed it; ``--states`` picks others, ``--states none`` leaves it
out), a seed ensemble of 5 trained by ``maskpolicy-learn``'s defaults (per-token cross-entropy with states) in the
same run on the same answers, with ``--states-learn`` overrides on top. Its ratio to ``entity`` per fold is printed
against the 1.3× target. ``--unseen``
files (by default any other ``*.json`` next to the shared sample) are judged by policies trained on
every article of ``--files``: articles that neither the policies nor their settings ever saw.

The held-out article is encoded as its own pre-training run would see it: a tokenizer
trained on its text, word frequencies counted on its text, entities from the tagger.

Run:
    python benchmarks/policy_quality.py                     # 4 folds × 3 seeds on ../shared/data/squad-sample
    python benchmarks/policy_quality.py --train a.json b.json --eval c.json
    python benchmarks/policy_quality.py --learn policy.sampling=topk learning.supervised.epochs=20
    python benchmarks/policy_quality.py --states minilm:-1,-3:word --unseen more.json
    python benchmarks/policy_quality.py --learn learning.method=meta_learning learning.meta_learning.outer=answers

The last line printed is one JSON object keyed by policy name, each ``{"precision", "recall"}``
(means over folds and seeds; ``--json`` also writes every fold).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from maskpolicy.meta.config import build
from maskpolicy.meta.context import CachedStates, frozen_encoder, source_stats, state_source
from maskpolicy.meta.learning.evaluation import mask_quality
from maskpolicy.meta.learning.supervised import ALL, AnswerRows, encode_answers, feature_spec
from maskpolicy.meta.learning.train import train_policy
from maskpolicy.policies import (
    FEATURES,
    EntityPolicy,
    InformativePolicy,
    LearnedPolicy,
    MaskingPolicy,
    PMIPolicy,
    PolicyError,
    RandomPolicy,
    SpanPolicy,
    WholeWordPolicy,
)
from maskpolicy.policies.context import ContextSpec
from maskpolicy.tasks.assets import skip_reason
from maskpolicy.tasks.base import TaskError
from maskpolicy.tasks.data.squad import SquadTask, articles_of, read_json
from maskpolicy.tasks.data.tagging import RuleTagger, SpacyTagger, Tagger, spacy_unavailable
from maskpolicy.tasks.text.encoding import token_batch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad-sample"
SAMPLE_FILES = ("dev-sample.json", "dev-v2-three-articles.json")
RATE = 0.15
STATES_PRESET = "learned_states"   # conf/policy/learned_states.yaml: its context is --states' default
TARGET = 1.3  # the target: learned_states precision over entity's, mean over folds


def read_articles(paths: Sequence[str | Path]) -> list[dict]:
    """Every article of the SQuAD-format files, in order."""
    return [article for path in paths for article in articles_of(read_json(path), str(path))]


def answerable(article: dict) -> bool:
    """Whether any question of the article has an answer (SQuAD 2.0 articles can hold only unanswerable ones)."""
    return any(qa.get("answers") and not qa.get("is_impossible")
               for paragraph in article.get("paragraphs", []) for qa in paragraph.get("qas", []))


def write_articles(articles: Sequence[dict], path: Path) -> Path:
    path.write_text(json.dumps({"version": "fold", "data": list(articles)}), encoding="utf-8")
    return path


def learn_config(train_path: Path, seed: int, overrides: Sequence[str]):
    """The ``maskpolicy-learn`` config: its defaults, SQuAD at ``train_path``, every question teaching the policy."""
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        return compose("learn", overrides=["task=squad", f"task.path={train_path}", f"seed={seed}",
                                           f"learning.train_split={ALL}", *overrides])


def heldout_rows(path: Path, tagger: Tagger, model_config, context: CachedStates | None = None
                 ) -> tuple[AnswerRows, int]:
    """The eval file's paragraphs encoded as its own pre-training run would, answer tokens marked (with
    ``context``, rows also carry that encoder's states)."""
    task = SquadTask(path=str(path), tagger=tagger)
    spec = build(model_config, "model")
    tokenizer = spec.build_tokenizer(document.text for document in task.corpus())
    rows = encode_answers(task, ALL, tokenizer, spec.max_length, feature_spec(task, FEATURES, context))
    return rows, tokenizer.pad_token_id


def states_spec(value: str | None) -> ContextSpec | None:
    """``--states``: ``ENCODER[:LAYERS[:UNIT]]`` (layers comma-separated) → the context settings, its ``dim`` read
    from the encoder; ``none`` → None. The default is ``policy=learned_states``'s context, when its encoder is
    installed."""
    if value is None:
        preset = preset_states()
        reason = skip_reason(preset.encoder)
        if reason:
            print(f"learned_states left out: {reason}")
            return None
        return preset
    if value.lower() == "none":
        return None
    encoder, _, rest = value.partition(":")
    layers, _, unit = rest.partition(":")
    picked = tuple(int(x) for x in layers.split(",")) if layers else (-1,)
    try:
        return ContextSpec(encoder, picked, unit or "word", frozen_encoder(encoder, picked, unit or "word").dim)
    except (PolicyError, TaskError) as error:
        raise SystemExit(f"policy_quality: --states {value}: {error}") from None


def preset_states() -> ContextSpec:
    """The contextual states ``policy=learned_states`` reads."""
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        node = compose("learn", overrides=[f"policy={STATES_PRESET}"]).policy.context
    return ContextSpec.of(OmegaConf.to_container(node))


def states_overrides(spec: ContextSpec, recipe: Sequence[str] = ()) -> list[str]:
    """The ``maskpolicy-learn`` overrides that make the policy ``policy=learned_states`` reading ``spec``'s
    contextual states, with the ``recipe`` overrides on top."""
    layers = ",".join(map(str, spec.layers))
    return [f"policy={STATES_PRESET}",
            f"policy.context={{encoder:'{spec.encoder}',layers:[{layers}],unit:{spec.unit},dim:{spec.dim}}}", *recipe]


def contenders(learned: LearnedPolicy, rows: AnswerRows, pad: int,
               with_states: LearnedPolicy | None = None) -> dict[str, MaskingPolicy]:
    """Every policy at the same rate; entity tops up with random tokens where a row has too few entities. ``pmi``
    and ``informative`` read tables of the held-out article's own text (no labels), as its pre-training run would."""
    corpus = token_batch(rows.batch(range(len(rows.rows)), pad)[0])
    fitted = {}
    for name, policy in {"pmi": PMIPolicy(RATE), "informative": InformativePolicy(RATE)}.items():
        try:
            policy.fit(corpus)
            fitted[name] = policy
        except PolicyError as error:
            print(f"{name} left out on this article: {error}")
    return {
        "learned": learned,
        "learned_topk": LearnedPolicy(learned.rate, sampling="topk", scorer=learned.scorer, context=learned.context),
        **({} if with_states is None else {
            "learned_states": with_states,
            "learned_states_topk": LearnedPolicy(with_states.rate, sampling="topk", scorer=with_states.scorer,
                                                 context=with_states.context)}),
        "entity": EntityPolicy(RATE, shortfall="top_up"),
        **fitted,
        "whole_word": WholeWordPolicy(RATE),
        "span": SpanPolicy(RATE),
        "random": RandomPolicy(RATE),
    }


@cache
def spacy_tagger() -> Tagger | None:
    """spaCy's en_core_web_sm recogniser (loaded once), or None when spaCy or the model is not installed."""
    return None if spacy_unavailable() else SpacyTagger()


def tagging_cost(taggers: dict[str, Tagger], texts: Sequence[str], repeats: int = 3) -> dict[str, dict]:
    """Per tagger: the fastest of ``repeats`` passes over ``texts``, in seconds per 1,000 words (words split on
    white space), and the spans it found. A tagger's one-off loading is not included."""
    words = max(sum(len(text.split()) for text in texts), 1)
    cost = {}
    for name, tagger in taggers.items():
        tagger(texts[0] if texts else "")  # a first call may build caches
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            spans = sum(len(tagger(text)) for text in texts)
            timings.append(time.perf_counter() - started)
        cost[name] = {"seconds_per_1000_words": round(1000 * min(timings) / words, 4), "spans": spans,
                      "words": words, "paragraphs": len(texts)}
    return cost


def judge(train_path: Path, eval_path: Path, seed: int, overrides: Sequence[str],
          states: ContextSpec | None = None, recipe: Sequence[str] = ()) -> dict[str, dict]:
    """Trains the learned policy on ``train_path`` (and, with ``states``, one that also reads those contextual
    states, trained with the ``recipe`` overrides); every contender's mask quality on ``eval_path``."""
    cfg = learn_config(train_path, seed, overrides)
    started = time.perf_counter()
    learned = train_policy(cfg).policy
    trained_s = time.perf_counter() - started
    with_states, states_s = None, None
    if states is not None:
        started = time.perf_counter()
        states_config = learn_config(train_path, seed, [*overrides, *states_overrides(states, recipe)])
        with_states = train_policy(states_config).policy
        states_s = time.perf_counter() - started
    for policy in (learned, with_states):
        if policy is not None and policy.rate != RATE:
            raise SystemExit(f"the learned policy's rate is {policy.rate}; every contender masks at {RATE}")
    source = None if with_states is None else state_source(with_states, cfg.learning.get("states_cache"))
    rows, pad = heldout_rows(eval_path, RuleTagger(), cfg.model, source)
    results = {name: _quality(policy, rows, pad, seed)
               for name, policy in contenders(learned, rows, pad, with_states).items()}
    tagger = spacy_tagger()
    if tagger is not None:
        spacy_rows, pad = heldout_rows(eval_path, tagger, cfg.model)
        results["entity_spacy"] = _quality(EntityPolicy(RATE, shortfall="top_up"), spacy_rows, pad, seed)
    results["learned"]["train_seconds"] = round(trained_s, 1)
    if states_s is not None:
        results["learned_states"]["train_seconds"] = round(states_s, 1)
    return results


def _quality(policy: MaskingPolicy, rows: AnswerRows, pad: int, seed: int) -> dict:
    quality = mask_quality(policy, rows, pad, seed)
    return {"precision": quality.precision, "recall": quality.recall, "overlap": mask_overlap(policy, rows, pad, seed),
            "masked_tokens": quality.masked_tokens, "answer_tokens": quality.answer_tokens,
            "select_ms_per_1000_tokens": select_cost(policy, rows, pad)}


def select_cost(policy: MaskingPolicy, rows: AnswerRows, pad: int, repeats: int = 3) -> float:
    """The fastest of ``repeats`` ``select`` calls on the whole held-out batch, in ms per 1,000 tokens (states and
    features precomputed: what a pre-training step pays)."""
    batch = token_batch(rows.batch(range(len(rows.rows)), pad)[0])
    timings = []
    for k in range(repeats):
        started = time.perf_counter()
        policy.select(batch, torch.Generator().manual_seed(k))
        timings.append(time.perf_counter() - started)
    return round(1e6 * min(timings) / max(int(batch.maskable.sum()), 1), 3)


def mask_overlap(policy: MaskingPolicy, rows: AnswerRows, pad: int, seed: int) -> float:
    """Jaccard overlap of two masks drawn with different seeds: 1 means the same tokens every epoch."""
    batch = token_batch(rows.batch(range(len(rows.rows)), pad)[0])
    first, second = (policy.select(batch, torch.Generator().manual_seed(s)) for s in (seed, seed + 10_000))
    return int((first & second).sum()) / max(int((first | second).sum()), 1)


def leave_one_article_out(paths: Sequence[Path], seeds: Sequence[int], overrides: Sequence[str],
                          progress: Callable[[str], None], states: ContextSpec | None = None,
                          recipe: Sequence[str] = ()) -> list[dict]:
    articles = read_articles(paths)
    skipped = [a.get("title", "?") for a in articles if not answerable(a)]
    if skipped:
        progress(f"skipped {len(skipped)} article(s) with no answerable question: {', '.join(skipped)}")
    articles = [a for a in articles if answerable(a)]
    if len(articles) < 2:
        raise SystemExit(f"leave-one-article-out needs at least 2 articles with answerable questions; "
                         f"{', '.join(map(str, paths))} hold {len(articles)}")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, held_out in enumerate(articles):
            train = write_articles([a for i, a in enumerate(articles) if i != k], Path(tmp) / f"train-{k}.json")
            heldout = write_articles([held_out], Path(tmp) / f"eval-{k}.json")
            for seed in seeds:
                result = judge(train, heldout, seed, overrides, states, recipe)
                runs.append({"fold": held_out.get("title", f"article-{k}"), "seed": seed, "policies": result})
                progress(_line(runs[-1]))
    return runs


def named_files(train: Sequence[str], evaluate: Sequence[str], seeds: Sequence[int],
                overrides: Sequence[str], progress: Callable[[str], None], states: ContextSpec | None = None,
                recipe: Sequence[str] = ()) -> list[dict]:
    for role, paths in (("--train", train), ("--eval", evaluate)):
        if not any(map(answerable, read_articles(paths))):
            raise SystemExit(f"policy_quality: {role} {' '.join(map(str, paths))}: no answerable question in these "
                             "files (SQuAD 2.0's unanswerable ones are dropped); give files with answered questions")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        train_path = write_articles(read_articles(train), Path(tmp) / "train.json")
        eval_path = write_articles(read_articles(evaluate), Path(tmp) / "eval.json")
        for seed in seeds:
            runs.append({"fold": "+".join(Path(p).name for p in evaluate), "seed": seed,
                         "policies": judge(train_path, eval_path, seed, overrides, states, recipe)})
            progress(_line(runs[-1]))
    return runs


def _line(run: dict) -> str:
    scores = "  ".join(f"{name} {q['precision']:.3f}/{q['recall']:.3f}" for name, q in run["policies"].items())
    return f"{run['fold']} seed {run['seed']}: {scores}"


def summary(runs: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Per policy: mean and standard deviation of precision and recall over every fold and seed."""
    names = list(runs[0]["policies"])
    out = {}
    for name in names:
        stats = {}
        for metric in ("precision", "recall", "overlap"):
            values = [run["policies"][name][metric] for run in runs]
            stats[metric] = round(statistics.fmean(values), 4)
            stats[f"{metric}_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
        out[name] = stats
    return out


def per_fold(runs: Sequence[dict], metric: str = "precision") -> dict[str, dict[str, float]]:
    """Per fold and policy: the mean of ``metric`` over seeds."""
    folds: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for name, quality in run["policies"].items():
            folds.setdefault(run["fold"], {}).setdefault(name, []).append(quality[metric])
    return {fold: {name: round(statistics.fmean(v), 4) for name, v in by.items()} for fold, by in folds.items()}


def ratios(runs: Sequence[dict], name: str = "learned", baseline: str = "entity") -> dict[str, float]:
    """Per fold, ``name``'s precision over ``baseline``'s (means over seeds); ``mean``: their mean."""
    folds = per_fold(runs)
    out = {fold: round(by[name] / by[baseline], 3) for fold, by in folds.items() if by[baseline] > 0}
    return {**out, "mean": round(statistics.fmean(out.values()), 3)}


def table(runs: Sequence[dict]) -> str:
    stats, folds = summary(runs), per_fold(runs)
    lines = ["| policy | precision | recall | mask overlap | " + " | ".join(f"{fold} P" for fold in folds) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(folds)]
    for name, s in stats.items():
        cells = " | ".join(f"{folds[fold][name]:.3f}" for fold in folds)
        lines.append(f"| {name} | {s['precision']:.3f} ± {s['precision_std']:.3f} | "
                     f"{s['recall']:.3f} ± {s['recall_std']:.3f} | {s['overlap']:.2f} | {cells} |")
    return "\n".join(lines)


def target_line(runs: Sequence[dict], name: str = "learned_states") -> str:
    """Whether ``name`` met the target: mean learned/entity precision ratio ≥ 1.3 and above entity on every fold."""
    by_fold = ratios(runs, name)
    mean = by_fold.pop("mean")
    every = all(ratio > 1 for ratio in by_fold.values())
    verdict = "met" if mean >= TARGET and every else "missed"
    return (f"target {TARGET}x entity ({name}): {verdict}: mean ratio {mean:.3f}, above entity on "
            f"{sum(r > 1 for r in by_fold.values())} of {len(by_fold)} folds")


def unseen_files(files: Sequence[Path]) -> list[Path]:
    """JSON files next to the shared sample that are not the sample (further held-out articles), sorted."""
    if not SHARED.is_dir():
        return []
    known = {Path(f).resolve() for f in files}
    return sorted(p for p in SHARED.glob("*.json") if p.resolve() not in known)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", nargs="+", help="SQuAD-format files to train the learned policy on")
    parser.add_argument("--eval", nargs="+", help="SQuAD-format files to judge every policy on")
    parser.add_argument("--files", nargs="+", type=Path, default=[SHARED / name for name in SAMPLE_FILES],
                        help="leave-one-article-out over the articles of these files (default: the shared sample)")
    parser.add_argument("--unseen", nargs="*", type=Path, default=None,
                        help="files judged by policies trained on every article of --files (default: any other "
                             "*.json next to the shared sample; give none to skip)")
    parser.add_argument("--states", default=None,
                        help="the contextual states of learned_states: ENCODER[:LAYERS[:UNIT]], e.g. minilm:-1,-3:word "
                             f"(default: policy={STATES_PRESET}'s, when installed; none: leave learned_states out)")
    parser.add_argument("--states-learn", nargs="*", default=[],
                        help="overrides that train learned_states only, after --learn and the preset "
                             "(e.g. learning.supervised.loss=listwise policy.members=1)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--learn", nargs="*", default=[], help="overrides of the maskpolicy-learn config")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", type=Path, help="write every run and the summary here")
    args = parser.parse_args(argv)
    if bool(args.train) != bool(args.eval):
        parser.error("--train and --eval go together")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    states = states_spec(args.states)
    unseen: list[dict] = []
    try:
        if args.train:
            runs = named_files(args.train, args.eval, args.seeds, args.learn, print, states, args.states_learn)
        else:
            runs = leave_one_article_out(args.files, args.seeds, args.learn, print, states, args.states_learn)
            extra = unseen_files(args.files) if args.unseen is None else list(args.unseen)
            if extra:
                unseen = named_files([str(p) for p in args.files], [str(p) for p in extra], args.seeds, args.learn,
                                     print, states, args.states_learn)
            else:
                print(f"unseen articles: none (no further *.json next to {SHARED}; give --unseen FILES)")
    except TaskError as error:  # bad input files: the message names the file and the problem
        raise SystemExit(f"policy_quality: {error}") from None
    stats = summary(runs)
    print(table(runs))
    for name in ("learned", "learned_topk", "learned_states", "learned_states_topk", "entity_spacy"):
        if name in stats:
            print(f"{name} / entity precision per fold: {ratios(runs, name)}")
    if "learned_states" in stats:
        print(target_line(runs))
    costs = {name: statistics.fmean(run["policies"][name]["select_ms_per_1000_tokens"] for run in runs)
             for name in ("learned", "learned_states", "entity") if name in stats}
    print("select cost (ms per 1,000 maskable tokens, states precomputed): "
          + ", ".join(f"{name} {value:.2f}" for name, value in costs.items()))
    if unseen:
        print("unseen articles (policies trained on every article of --files):")
        print(table(unseen))
        for name in ("learned", "learned_states"):
            if name in unseen[0]["policies"]:
                print(f"{name} / entity precision on unseen articles: {ratios(unseen, name)}")
    if spacy_tagger() is None:
        print(f"entity_spacy left out: {spacy_unavailable()}")
    paths = [*args.train, *args.eval] if args.train else args.files
    texts = [p["context"] for a in read_articles(paths) for p in a.get("paragraphs", []) if p.get("context")]
    taggers = {"rule": RuleTagger(), **({"spacy": spacy_tagger()} if spacy_tagger() is not None else {})}
    cost = tagging_cost(taggers, texts)
    print("tagging cost: " + ", ".join(f"{name} {c['seconds_per_1000_words']:.4f} s / 1,000 words ({c['spans']} spans)"
                                       for name, c in cost.items()) + f" over {len(texts)} paragraphs")
    states_cost = source_stats()
    if states_cost:
        print(f"contextual states: {states_cost}")
    print(f"{len(runs) + len(unseen)} runs in {time.perf_counter() - started:.0f} s; learn overrides: "
          f"{args.learn or 'none'}; states: {states.as_dict() if states else 'none'}, trained as "
          f"policy={STATES_PRESET} with {args.states_learn or 'no more overrides'}")
    if args.json:
        args.json.write_text(json.dumps({"learn": args.learn, "states": states.as_dict() if states else None,
                                         "states_learn": args.states_learn,
                                         "runs": runs, "summary": stats, "unseen": unseen,
                                         "unseen_summary": summary(unseen) if unseen else None,
                                         "learned_over_entity": ratios(runs),
                                         **({"learned_states_over_entity": ratios(runs, "learned_states")}
                                            if "learned_states" in stats else {}),
                                         "tagging_cost": cost, "states_cost": states_cost}, indent=1))
    print(json.dumps({name: {"precision": s["precision"], "recall": s["recall"]} for name, s in stats.items()}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
