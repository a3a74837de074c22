"""Masking throughput: every maskpolicy policy against Hugging Face's MLM collator.

One run builds a realistic pre-tokenised batch (``[CLS] … [SEP]`` rows, some padded,
multi-token words, entity spans) with a WordPiece tokenizer trained here, offline,
then times on that same batch:

* each registered policy's ``select`` followed by ``mlm_corrupt`` (80/10/10);
* a floor: ``mlm_corrupt`` alone on a precomputed Bernoulli(rate) mask, the least
  work any 80/10/10 pipeline does;
* ``transformers.DataCollatorForLanguageModeling.torch_mask_tokens`` on the
  tensorised batch, given ``special_tokens_mask`` (the collator's tensor path);
* the same method with ``whole_word_mask=True`` and ``offset_mapping`` (its
  whole-word path). It compares every pair of tokens in a row (``[B, L, L]``
  tensors), so it runs on at most ``2**24 / L**2`` rows (the whole batch at
  L=512) and for fewer rounds; its cost grows linearly with rows, so the subset's
  tokens/s stands for the batch.

Throughput counts every position of the ``[B, L]`` batch, padding included, and
is the median over timed repetitions after warm-up. Methods are timed round-robin
(one call of each per round) so load drift on the machine spreads evenly; the
"spread" column is the interquartile range over the median. The CPU time other
processes used during the timing is printed (Linux), because on a small machine
they distort the numbers: with 2 threads, a busy second core stalls each parallel
op (reductions, indexing) by a scheduler tick, several milliseconds.

Run: ``python benchmarks/masking.py [--json results.json] [--repeats 30]
[--batch-size 64] [--length 512] [--threads N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tokenizers
import torch
import transformers
from machine import busy_cpu_seconds  # benchmarks/ is on sys.path when a script here runs
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from torch import Tensor
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

from maskpolicy.policies import (
    DEFAULT_FEATURES,
    EntityPolicy,
    FitsCorpus,
    RandomPolicy,
    RemembersRows,
    TokenBatch,
    available,
    build,
    mlm_corrupt,
)
from maskpolicy.tasks.text.features import FeatureSpec, document_features, word_counts

RATE = 0.15
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)

# --------------------------------------------------------------------------- data


class TextWorld:
    """Generates English-shaped text with known entity character spans.

    Plain words are made of syllables and drawn from a Zipf law, so a small
    WordPiece vocabulary splits the rarer ones into several tokens. Entities are
    person names, places, dates and numbers, inserted often enough to cover about
    a quarter of the tokens.
    """

    SYLLABLES = (
        "ka", "lo", "mi", "ren", "tas", "vel", "dor", "in", "ex", "ul", "sa", "ber", "mon", "tri", "qua", "zel", "pho",
        "nar", "ist", "ga", "fe", "cor", "lun", "adr", "ot", "ive", "ment", "sion", "par", "ho", "bi", "stu", "wen",
    )

    def __init__(self, rng: random.Random, n_words: int = 6000) -> None:
        self.rng = rng
        self.words = [self._word(rng.randint(1, 4)) for _ in range(n_words)]
        self.weights = [1.0 / (rank + 2.7) for rank in range(n_words)]
        self.firsts = [self._word(rng.randint(2, 3)).capitalize() for _ in range(300)]
        self.lasts = [self._word(rng.randint(2, 4)).capitalize() for _ in range(600)]
        self.places = [self._word(rng.randint(2, 4)).capitalize() for _ in range(200)]

    def _word(self, n_syllables: int) -> str:
        return "".join(self.rng.choice(self.SYLLABLES) for _ in range(n_syllables))

    def _entity(self) -> str:
        rng, kind = self.rng, self.rng.random()
        if kind < 0.4:
            return f"{rng.choice(self.firsts)} {rng.choice(self.lasts)}"
        if kind < 0.6:
            return ("Port " if rng.random() < 0.3 else "") + rng.choice(self.places)
        if kind < 0.8:
            return f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(1700, 2024)}"
        return rng.choice([str(rng.randint(2, 99)), f"{rng.randint(1, 999)},{rng.randint(0, 999):03d}",
                           f"{rng.randint(1, 99)}.{rng.randint(0, 9)}"])

    def document(self, n_words: int) -> tuple[str, list[tuple[int, int]]]:
        """A text of about ``n_words`` words and its entity spans ``[start, end)``."""
        parts: list[str] = []
        spans: list[tuple[int, int]] = []
        length = written = 0
        while written < n_words:
            sentence = self.rng.choices(self.words, self.weights, k=self.rng.randint(6, 18))
            sentence[0] = sentence[0].capitalize()
            for i, word in enumerate(sentence):
                if self.rng.random() < 0.13:
                    entity = self._entity()
                    spans.append((length, length + len(entity)))
                    parts.append(entity)
                    length += len(entity) + 1
                    written += entity.count(" ") + 1
                punctuation = "," if i < len(sentence) - 1 and self.rng.random() < 0.08 else ""
                token = word + punctuation + ("." if i == len(sentence) - 1 else "")
                parts.append(token)
                length += len(token) + 1
                written += 1
        return " ".join(parts), spans


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A cased BERT-style WordPiece tokenizer trained on ``texts`` (offline, deterministic)."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )


@dataclass
class Bench:
    """The one batch every method sees, in both frameworks' formats."""

    tokenizer: PreTrainedTokenizerFast
    batch: TokenBatch
    special_tokens_mask: Tensor  # Long[B, L]: 1 at [CLS]/[SEP]/[PAD], HF's input
    offset_mapping: Tensor  # Long[B, L, 2]: HF whole-word masking derives words from it
    replacement_ids: Tensor  # Long[V']: non-special ids, for mlm_corrupt's random 10%


def entity_ids_from_offsets(offsets: np.ndarray, spans: list[tuple[int, int]], special: np.ndarray) -> np.ndarray:
    """Index of the entity span each token falls in, ``-1`` if none. ``offsets`` is ``[L, 2]``."""
    ids = np.full(len(offsets), -1, dtype=np.int64)
    if spans:
        starts, ends = np.asarray(spans, dtype=np.int64).T
        k = np.searchsorted(ends, offsets[:, 0], side="right")
        k_safe = np.minimum(k, len(spans) - 1)
        inside = (k < len(spans)) & (starts[k_safe] < offsets[:, 1]) & ~special
        ids[inside] = k[inside]
    return ids


def make_bench(batch_size: int, length: int, seed: int = 0) -> Bench:
    """Generates text, trains a tokenizer and tokenises ``batch_size`` documents to ``length``.

    About a quarter of the rows are short documents (padded); the rest are
    truncated at ``length``.
    """
    rng = random.Random(seed)
    world = TextWorld(rng)
    word_budget = int(length * 0.9)  # ~1.3 tokens per word: long documents overflow ``length``
    docs = [
        world.document(rng.randint(length // 6, length // 2) if rng.random() < 0.25 else word_budget)
        for _ in range(batch_size)
    ]
    extra = [world.document(word_budget)[0] for _ in range(max(0, 200 - batch_size))]
    tokenizer = train_tokenizer([text for text, _ in docs] + extra, vocab_size=3000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoded = tokenizer(
            [text for text, _ in docs], max_length=length, truncation=True, padding="max_length",
            return_offsets_mapping=True, return_special_tokens_mask=True, return_tensors="np",
        )
    input_ids = torch.from_numpy(encoded["input_ids"].astype(np.int64))
    attention = torch.from_numpy(encoded["attention_mask"].astype(bool))
    special = torch.from_numpy(encoded["special_tokens_mask"].astype(bool)) | ~attention
    maskable = ~special
    word_ids = torch.tensor([[-1 if w is None else w for w in encoded.word_ids(i)] for i in range(batch_size)])
    offsets = encoded["offset_mapping"].astype(np.int64)
    entity_ids = torch.from_numpy(np.stack([
        entity_ids_from_offsets(offsets[i], docs[i][1], special[i].numpy()) for i in range(batch_size)
    ]))
    special_ids = set(tokenizer.all_special_ids)
    replacement_ids = torch.tensor([i for i in range(len(tokenizer)) if i not in special_ids])
    features = word_features([text for text, _ in docs], offsets, word_ids, entity_ids, special)
    return Bench(
        tokenizer, TokenBatch(input_ids, maskable, word_ids, entity_ids, features, DEFAULT_FEATURES), special.long(),
        torch.from_numpy(offsets), replacement_ids,
    )


def word_features(texts: list[str], offsets: np.ndarray, word_ids: Tensor, entity_ids: Tensor,
                  special: Tensor) -> Tensor:
    """``Long[B, L, F]``: the learned policy's default word features of every row, as a data pipeline computes
    them once per document at encoding time (not part of any timed call)."""
    spec = FeatureSpec(DEFAULT_FEATURES, word_counts(texts))
    return torch.from_numpy(np.stack([
        document_features(text, offsets[i], word_ids[i].numpy(), entity_ids[i].numpy(), special[i].numpy(), spec)
        for i, text in enumerate(texts)
    ]))


def describe(bench: Bench) -> dict[str, float]:
    """Shape statistics of the batch, to show it is realistic."""
    b = bench.batch
    n_maskable = int(b.maskable.sum())
    words = b.word_ids.masked_fill(~b.maskable, -1)
    same_as_previous = (words[:, 1:] == words[:, :-1]) & (words[:, 1:] >= 0)
    n_words = n_maskable - int(same_as_previous.sum())
    return {
        "maskable_fraction": n_maskable / b.maskable.numel(),
        "padding_fraction": float((b.input_ids == bench.tokenizer.pad_token_id).float().mean()),
        "padded_rows": int((b.input_ids[:, -1] == bench.tokenizer.pad_token_id).sum()),
        "tokens_per_word": n_maskable / n_words,
        "entity_token_fraction": int(((b.entity_ids >= 0) & b.maskable).sum()) / n_maskable,
        "vocab_size": len(bench.tokenizer),
    }


# --------------------------------------------------------------------------- methods


@dataclass
class Method:
    name: str
    run: Callable[[], Tensor]  # one full call; returns the labels ([B, L], -100 where not masked)
    tokens: int  # positions processed per call
    rounds: int | None = None  # time only in the first ``rounds`` rounds (None: all)
    note: str = ""


def policy_configs() -> dict[str, list[tuple[str, dict]]]:
    """The benchmarked configuration(s) of each built-in policy, by registry name."""
    return {
        "random": [
            ("random (exact count)", {"rate": RATE}),
            ("random (Bernoulli, exact=False)", {"rate": RATE, "exact": False}),
        ],
        "whole_word": [("whole_word", {"rate": RATE})],
        "span": [("span (p=0.2, max 10 tokens)", {"rate": RATE})],
        "entity": [("entity (shortfall=top_up)", {"rate": RATE, "shortfall": "top_up"})],
        "learned": [("learned (defaults: BiLSTM, Gumbel T=0.3)", {"rate": RATE}),
                    ("learned, 5-member seed ensemble (members=5)", {"rate": RATE, "members": 5})],
        "pmi": [("pmi (n ≤ 5, min count 5, top 2000 per order)", {"rate": RATE})],
        "informative": [("informative (window 10, Gumbel T=0.5)", {"rate": RATE})],
        "mixture": [("mixture (50% entity, 50% random)", {
            "components": {"entity": EntityPolicy(RATE, shortfall="top_up"), "random": RandomPolicy(RATE)},
            "weights": {"entity": 0.5, "random": 0.5},
        })],
    }


def make_methods(bench: Bench, wwm_rows: int, wwm_rounds: int) -> list[Method]:
    batch = bench.batch
    n_tokens = batch.input_ids.numel()
    mask_id = bench.tokenizer.mask_token_id

    def corrupt(mask: Tensor, generator: torch.Generator) -> Tensor:
        _, labels = mlm_corrupt(batch.input_ids, mask, mask_token_id=mask_id,
                                replacement_ids=bench.replacement_ids, generator=generator)
        return labels

    floor_generator = torch.Generator().manual_seed(1)
    floor_mask = (torch.rand(batch.input_ids.shape, generator=floor_generator) < RATE) & batch.maskable
    methods = [Method("floor: mlm_corrupt of a Bernoulli mask", lambda: corrupt(floor_mask, floor_generator),
                      n_tokens, note="corruption only; the mask is drawn once, outside the timing")]

    configs = policy_configs()
    names = [name for name in configs if name in available()] + [name for name in available() if name not in configs]
    for seed, name in enumerate(names, start=10):
        for label, params in configs.get(name, [(f"{name} (plugin, defaults)", {})]):
            try:
                policy = build(name, **params)
                note = fit_tables(policy, batch)
                generator = torch.Generator().manual_seed(seed)
                policy.select(batch, generator)
            except Exception as error:  # noqa: BLE001 - a plugin that cannot run here is reported, not fatal
                print(f"skipping policy {name!r}: {type(error).__name__}: {error}")
                continue
            methods.append(Method(label, lambda p=policy, g=generator: corrupt(p.select(batch, g), g), n_tokens,
                                  note=note))
            if isinstance(policy, RemembersRows):  # the same tables, each row's fixed work done once beforehand
                remembered, remembered_generator = build(name, **params), torch.Generator().manual_seed(seed)
                remembered.load_tables(policy.tables)
                start = time.perf_counter()
                remembered.remember_rows(batch)
                note = (f"the same tables; each row's units/word scores worked out once, untimed: "
                        f"{time.perf_counter() - start:.2f} s for the batch's {batch.input_ids.shape[0]} rows")
                methods.append(Method(f"{label}, rows remembered",
                                      lambda p=remembered, g=remembered_generator: corrupt(p.select(batch, g), g),
                                      n_tokens, note=note))

    methods.append(pretraining_step(bench))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # whole_word_mask warns that it forces mask_replace_prob=1
        hf = DataCollatorForLanguageModeling(bench.tokenizer, mlm_probability=RATE, seed=0)
        hf_wwm = DataCollatorForLanguageModeling(bench.tokenizer, mlm_probability=RATE, whole_word_mask=True, seed=0)
    hf.create_rng()
    hf_wwm.create_rng()
    special = bench.special_tokens_mask
    # torch_mask_tokens writes into its input, so each call gets a fresh copy (as the collator's own batch is).
    methods.append(Method(
        "HF tensor path", lambda: hf.torch_mask_tokens(batch.input_ids.clone(), special_tokens_mask=special)[1],
        n_tokens, note=("DataCollatorForLanguageModeling(mlm_probability=0.15).torch_mask_tokens(inputs, "
                        "special_tokens_mask): Bernoulli selection + 80/10/10, like the random exact=False row"),
    ))
    n_rows, length = batch.input_ids.shape
    rows = slice(0, min(wwm_rows or max(1, 2**24 // length**2), n_rows))
    ids, sub_special, sub_offsets = batch.input_ids[rows], special[rows], bench.offset_mapping[rows]
    methods.append(Method(
        "HF whole-word path",
        lambda: hf_wwm.torch_mask_tokens(ids.clone(), special_tokens_mask=sub_special, offset_mapping=sub_offsets)[1],
        ids.numel(), rounds=wwm_rounds,
        note=(f"DataCollatorForLanguageModeling(whole_word_mask=True).torch_mask_tokens(inputs, "
              f"special_tokens_mask, offset_mapping) on {ids.shape[0]} of {n_rows} rows, {wwm_rounds} timed "
              "rounds; words come from offset gaps; HF forces mask_replace_prob=1 (all [MASK], no "
              "random/keep) in this mode, so it does less corruption work than 80/10/10"),
    ))
    return methods


def fit_tables(policy, batch: TokenBatch) -> str:
    """Fits a policy that reads corpus tables on the batch itself (its documents are the corpus), outside the
    timing; returns a note with the build time, which the pre-training pipeline pays once per corpus."""
    if not isinstance(policy, FitsCorpus):
        return ""
    start = time.perf_counter()
    tables = policy.fit(batch)
    entries = sum(t.numel() for name, t in tables.items() if name.startswith("keys"))
    return (f"tables built once, untimed: {time.perf_counter() - start:.2f} s for {entries:,} entries from this "
            f"batch's {batch.input_ids.shape[0]} documents")


def pretraining_step(bench: Bench, rounds: int = 3) -> Method:
    """What masking is cheap *next to*: one training step of a small BERT (2 layers, hidden 128: the
    tiny_bert config stretched to the batch's length) on the same batch, forward + backward + AdamW."""
    _, length = bench.batch.input_ids.shape
    config = transformers.BertConfig(vocab_size=len(bench.tokenizer), hidden_size=128, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=512, max_position_embeddings=length,
                                     attn_implementation="eager")
    model = transformers.BertForMaskedLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch, generator = bench.batch, torch.Generator().manual_seed(3)
    inputs, labels = mlm_corrupt(batch.input_ids, RandomPolicy(RATE).select(batch, generator),
                                 mask_token_id=bench.tokenizer.mask_token_id,
                                 replacement_ids=bench.replacement_ids, generator=generator)
    attention = bench.special_tokens_mask.new_ones(inputs.shape)

    def step() -> Tensor:
        loss = model(input_ids=inputs, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return labels

    return Method("reference: tiny-BERT pre-training step", step, batch.input_ids.numel(), rounds=rounds,
                  note=f"BertForMaskedLM (2 layers, hidden 128, length {length}) forward + backward + AdamW on this "
                       f"batch, {rounds} timed rounds: the step every mask is made for")


# --------------------------------------------------------------------------- timing


def time_methods(methods: list[Method], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each method: ``warmup`` untimed calls, then ``repeats`` timed
    rounds, one call of every method per round."""
    for method in methods:
        for _ in range(warmup):
            method.run()
    samples: dict[str, list[float]] = {m.name: [] for m in methods}
    for round_ in range(repeats):
        for method in methods:
            if method.rounds is not None and round_ >= method.rounds:
                continue
            start = time.perf_counter()
            method.run()
            samples[method.name].append(time.perf_counter() - start)
    return samples


def masked_fraction(method: Method, maskable: Tensor, calls: int = 5) -> float:
    """Mean fraction of maskable tokens that end up with a label (i.e. were selected)."""
    total = 0.0
    for _ in range(calls):
        labels = method.run()
        total += float((labels != -100).sum()) / float(maskable[: labels.shape[0]].sum())
    return total / calls


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds per method (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; default: torch's own")
    parser.add_argument("--wwm-rows", type=int, default=0,
                        help="rows given to HF whole-word masking; 0: as many as keep rows x L^2 <= 2^24")
    parser.add_argument("--wwm-repeats", type=int, default=5, help="timed rounds for HF whole-word masking")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    bench = make_bench(args.batch_size, args.length)
    stats = describe(bench)
    methods = make_methods(bench, args.wwm_rows, min(args.wwm_repeats, args.repeats))
    setup_s = time.perf_counter() - start
    busy0, own0, wall0 = busy_cpu_seconds(), time.process_time(), time.perf_counter()
    samples = time_methods(methods, args.repeats, args.warmup)
    busy1, own1, wall1 = busy_cpu_seconds(), time.process_time(), time.perf_counter()
    # CPUs kept busy by other processes (and the hypervisor), on average, while timing.
    others = None if busy0 is None else max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)
    results = {}
    for method in methods:
        seconds = statistics.median(samples[method.name])
        q1, _, q3 = statistics.quantiles(samples[method.name], n=4) if len(samples[method.name]) > 1 else (0, 0, 0)
        results[method.name] = {
            "tokens_per_s": method.tokens / seconds,
            "median_s": seconds,
            "spread": (q3 - q1) / seconds,
            "samples_s": samples[method.name],
            "tokens_per_call": method.tokens,
            "masked_fraction": masked_fraction(method, bench.batch.maskable),
            "note": method.note,
        }
    hf_tensor = results["HF tensor path"]["tokens_per_s"]
    hf_wwm = results["HF whole-word path"]["tokens_per_s"]
    for entry in results.values():
        entry["vs_hf_tensor"] = entry["tokens_per_s"] / hf_tensor
        entry["vs_hf_whole_word"] = entry["tokens_per_s"] / hf_wwm

    b, length = bench.batch.input_ids.shape
    print(f"maskpolicy masking benchmark: batch {b} x {length} = {b * length:,} positions per call, rate {RATE}")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads, {torch.get_num_interop_threads()} "
          f"interop), transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, "
          f"Python {platform.python_version()}, {platform.machine()}")
    print(f"batch: {stats['maskable_fraction']:.1%} maskable, {stats['padded_rows']} padded rows "
          f"({stats['padding_fraction']:.1%} padding), {stats['tokens_per_word']:.2f} tokens/word, "
          f"{stats['entity_token_fraction']:.1%} of maskable tokens in entities, vocab {stats['vocab_size']}")
    print(f"median of {args.repeats} timed rounds after {args.warmup} warm-up calls; tokens/s counts all B x L "
          "positions, padding included; every maskpolicy row is select + mlm_corrupt (80/10/10)")
    if others is not None:
        print(f"other processes kept {others:.2f} of {os.cpu_count()} CPUs busy during the timing")
        if others > 0.15:
            print("WARNING: the machine was not idle. With several threads a busy core stalls parallel ops by "
                  "a scheduler tick each, so these numbers can be several times too low; rerun on an idle "
                  "machine, or compare with --threads 1.")
    print()
    header = (f"{'method':<40} {'tokens/s (M)':>12} {'vs HF tensor':>13} {'vs HF WWM':>10} {'spread':>7} "
              f"{'masked':>7}")
    print(header)
    print("-" * len(header))
    for name, entry in results.items():
        print(f"{name:<40} {entry['tokens_per_s'] / 1e6:>12.4g} {entry['vs_hf_tensor']:>12.3g}x "
              f"{entry['vs_hf_whole_word']:>9.3g}x {entry['spread']:>7.0%} {entry['masked_fraction']:>7.1%}")
    print()
    for name, entry in results.items():
        if entry["note"]:
            print(f"* {name}: {entry['note']}")
    print(f"\nsetup {setup_s:.1f}s, total {time.perf_counter() - start:.1f}s")

    report = {
        "batch_size": b, "length": length, "rate": RATE, "repeats": args.repeats, "warmup": args.warmup,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "other_processes_cpus": others, "batch_stats": stats, "methods": results,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
