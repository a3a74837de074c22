"""Collation throughput: a PyTorch DataLoader with workers feeding Hugging Face's MLM collator or MaskingCollator.

One run builds tokenized examples of generated English-shaped text with known entity spans (the text world of
``benchmarks/masking.py``, a WordPiece tokenizer trained here, offline), the shape ``datasets.Dataset.map``
gives: one dict of Python lists per example. Then, side by side in one run, it measures batches/s of a
``DataLoader(num_workers=W, persistent_workers=True, collate_fn=...)`` for:

* ``transformers.DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)`` (its list path:
  ``tokenizer.pad`` + Bernoulli selection + 80/10/10), and the same with ``whole_word_mask=True`` (in
  transformers 5.x the replacement of ``DataCollatorForWholeWordMask``, which no longer exists; it finds
  words from offsets and forces all-[MASK] corruption). Its list path cannot pad ``offset_mapping``
  (``tokenizer.pad`` raises "Unable to create tensor"), so its examples come padded to ``--length`` already;
  every other method pads each batch to its longest row;
* ``maskpolicy.MaskingCollator`` with ``random``, ``whole_word``, ``entity`` (``shortfall=top_up``, spans from
  the features' character spans) and ``span``: padding, word and entity ids, policy selection and the
  project's 80/10/10.

Every method's examples carry only the keys it reads (a user keeps those columns): ``input_ids`` and
``special_tokens_mask`` for all; ``attention_mask`` and ``offset_mapping`` for HF whole-word; ``word_ids``
for whole_word; ``offset_mapping`` and ``entity_spans`` for entity. All loaders are started first and warmed
up; then rounds take ``--per-round`` batches from each in turn (round-robin, so load drift on the machine
spreads evenly), and batches/s is the mean over the rounds. A loader's queue (workers x prefetch_factor
batches, filled while the others were timed) is emptied untimed at the start of its turn, so the timed
batches are made while timed. With ``--workers 0`` everything runs in the main process.

With CUDA available it also times the device-side mode: workers run ``collator.prepare`` (padding, ids) and
the main process moves the batch to the GPU and calls ``collator.mask`` there (selection + corruption on the
device, synchronised per batch). Without CUDA that part is skipped, and the output says so.

The last line of the output is the whole report as JSON.

Run: ``python benchmarks/collator.py [--threads 1] [--workers 2] [--batch-size 32] [--length 256]
[--examples 4096] [--rounds 8] [--per-round 16]``.
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
from collections.abc import Callable, Iterator

import torch
import transformers
from machine import busy_cpu_seconds  # benchmarks/ is on sys.path when a script here runs
from masking import TextWorld, train_tokenizer
from torch.utils.data import DataLoader
from transformers import DataCollatorForLanguageModeling

from maskpolicy import MaskingCollator

RATE = 0.15
HF_KEYS = ("input_ids", "special_tokens_mask")


def make_examples(n: int, length: int, seed: int = 0) -> tuple[object, list[dict], list[dict]]:
    """``n`` tokenized documents (truncated at ``length``) with every key any method reads, and the same padded to
    ``length`` for HF's whole-word mode (``tokenizer.pad`` cannot pad ``offset_mapping``)."""
    rng = random.Random(seed)
    world = TextWorld(rng)
    docs = [world.document(rng.randint(length // 3, length)) for _ in range(n)]
    tokenizer = train_tokenizer([text for text, _ in docs[:400]], vocab_size=3000)
    encoded = tokenizer([text for text, _ in docs], max_length=length, truncation=True,
                        return_offsets_mapping=True, return_special_tokens_mask=True)
    examples = [{"input_ids": encoded["input_ids"][i], "special_tokens_mask": encoded["special_tokens_mask"][i],
                 "offset_mapping": [list(pair) for pair in encoded["offset_mapping"][i]],
                 "word_ids": encoded.word_ids(i), "entity_spans": [list(span) for span in docs[i][1]]}
                for i in range(n)]
    padded = tokenizer([text for text, _ in docs], max_length=length, truncation=True, padding="max_length",
                       return_offsets_mapping=True, return_special_tokens_mask=True)
    padded = [{key: padded[key][i] for key in ("input_ids", "attention_mask", "special_tokens_mask",
                                               "offset_mapping")} for i in range(n)]
    return tokenizer, examples, padded


def only(examples: list[dict], keys: tuple[str, ...]) -> list[dict]:
    return [{key: example[key] for key in keys} for example in examples]


def methods(tokenizer, examples: list[dict], padded: list[dict]) -> dict[str, tuple[Callable, list[dict]]]:
    """name → (collate_fn, the examples it reads)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # whole_word_mask warns that it forces mask_replace_prob=1
        hf = DataCollatorForLanguageModeling(tokenizer, mlm_probability=RATE, seed=0)
        hf_wwm = DataCollatorForLanguageModeling(tokenizer, mlm_probability=RATE, whole_word_mask=True, seed=0)
    return {
        "HF DataCollatorForLanguageModeling": (hf, only(examples, HF_KEYS)),
        "HF ... whole_word_mask=True": (hf_wwm, padded),
        "MaskingCollator random": (MaskingCollator(tokenizer, "random", rate=RATE), only(examples, HF_KEYS)),
        "MaskingCollator whole_word": (MaskingCollator(tokenizer, "whole_word", rate=RATE),
                                       only(examples, (*HF_KEYS, "word_ids"))),
        "MaskingCollator entity": (MaskingCollator(tokenizer, "entity", rate=RATE, shortfall="top_up"),
                                   only(examples, (*HF_KEYS, "offset_mapping", "entity_spans"))),
        "MaskingCollator span": (MaskingCollator(tokenizer, "span", rate=RATE), only(examples, HF_KEYS)),
    }


def queued(workers: int, prefetch_factor: int = 2) -> int:
    """Batches a loader's workers hold ready (DataLoader's default prefetch_factor is 2 per worker)."""
    return workers * prefetch_factor


def endless(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


def time_loaders(loaders: dict[str, Iterator], rounds: int, per_round: int, warmup: int, queued: int,
                 step: Callable[[str, object], None] | None = None) -> dict[str, list[float]]:
    """Seconds per batch of each loader: ``per_round`` batches of each per round after ``warmup`` each.

    While one loader is timed the others' workers fill their queues (``queued`` batches: workers x
    prefetch_factor); those are taken untimed at the start of the loader's turn, so the timed batches are ones
    its workers produce while timed, not ones waiting in its queue."""
    def take(name: str, batches: Iterator, count: int) -> None:
        for _ in range(count):
            batch = next(batches)
            if step:
                step(name, batch)

    for name, batches in loaders.items():
        take(name, batches, warmup)
    samples: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(rounds):
        for name, batches in loaders.items():
            take(name, batches, queued)
            start = time.perf_counter()
            take(name, batches, per_round)
            samples[name].append((time.perf_counter() - start) / per_round)
    return samples


def background_cpus(seconds: float = 2.0) -> float | None:
    """CPUs other programs keep busy while this one sleeps (before any worker starts)."""
    busy0, wall0 = busy_cpu_seconds(), time.perf_counter()
    if busy0 is None:
        return None
    time.sleep(seconds)
    return max(0.0, busy_cpu_seconds() - busy0) / (time.perf_counter() - wall0)


def masked_share(batch: dict) -> float:
    labels = batch["labels"]
    return float((labels != -100).sum()) / float(batch["attention_mask"].sum())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--length", type=int, default=256, help="truncation length in tokens")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per method (0: main)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--per-round", type=int, default=16, help="timed batches from each loader per round")
    parser.add_argument("--warmup", type=int, default=4, help="untimed batches per loader after its workers start")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the main process")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    background = background_cpus()
    started = time.perf_counter()
    tokenizer, examples, padded = make_examples(args.examples, args.length)
    chosen = methods(tokenizer, examples, padded)
    loaders = {name: endless(DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                        collate_fn=collate, persistent_workers=args.workers > 0,
                                        generator=torch.Generator().manual_seed(0)))
               for name, (collate, data) in chosen.items()}
    shares = {name: masked_share(next(batches)) for name, batches in loaders.items()}
    setup_s = time.perf_counter() - started
    busy0, wall0 = busy_cpu_seconds(), time.perf_counter()
    samples = time_loaders(loaders, args.rounds, args.per_round, args.warmup, queued(args.workers))
    busy1, wall1 = busy_cpu_seconds(), time.perf_counter()
    busy = None if busy0 is None else (busy1 - busy0) / (wall1 - wall0)  # everything, this run's workers included

    results = {}
    for name, seconds in samples.items():
        per_batch = sum(seconds) / len(seconds)
        q1, _, q3 = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else (0, 0, 0)
        results[name] = {"batches_per_s": 1 / per_batch, "ms_per_batch": 1000 * per_batch,
                         "spread": (q3 - q1) / statistics.median(seconds), "masked_share": shares[name]}
    reference = results["HF DataCollatorForLanguageModeling"]["batches_per_s"]
    for entry in results.values():
        entry["vs_hf"] = entry["batches_per_s"] / reference

    gpu = device_side(tokenizer, examples, padded, args) if torch.cuda.is_available() else None
    lengths = [len(e["input_ids"]) for e in examples]
    print(f"collator benchmark: {args.examples} examples of {min(lengths)}-{max(lengths)} tokens "
          f"(mean {statistics.mean(lengths):.0f}), batch {args.batch_size}, {args.workers} DataLoader workers per "
          f"method, rate {RATE}")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} main-process threads), transformers "
          f"{transformers.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs")
    print(f"{args.rounds} rounds x {args.per_round} batches per method after {args.warmup} warm-up batches; "
          "round-robin between methods")
    if background is not None:
        print(f"other programs kept {background:.2f} of {os.cpu_count()} CPUs busy before the run (2 s idle "
              f"sample); during the timing all processes together kept {busy:.2f} busy")
        if background > 0.15:
            print("WARNING: the machine was not idle; absolute numbers are low, compare the ratios")
    print()
    header = f"{'method':<36} {'batches/s':>10} {'ms/batch':>9} {'vs HF':>7} {'spread':>7} {'masked':>7}"
    print(header)
    print("-" * len(header))
    for name, entry in results.items():
        print(f"{name:<36} {entry['batches_per_s']:>10.1f} {entry['ms_per_batch']:>9.2f} {entry['vs_hf']:>6.2f}x "
              f"{entry['spread']:>7.0%} {entry['masked_share']:>7.1%}")
    if gpu is None:
        print("\ndevice-side mode (prepare in workers, mask on the GPU): skipped, no CUDA device")
    else:
        print(f"\ndevice-side mode on {gpu['device']}:")
        for name, entry in gpu["methods"].items():
            print(f"  {name:<34} {entry['batches_per_s']:>10.1f} batches/s")
    print(f"\nsetup {setup_s:.1f}s, total {time.perf_counter() - started:.1f}s")
    report = {"examples": args.examples, "length": args.length, "batch_size": args.batch_size,
              "workers": args.workers, "rounds": args.rounds, "per_round": args.per_round, "rate": RATE,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__,
              "python": platform.python_version(), "cpu_count": os.cpu_count(), "background_cpus": background,
              "busy_cpus_while_timing": busy,
              "methods": results, "device_side": gpu if gpu is not None else "skipped: no CUDA device"}
    print(json.dumps(report))
    return report


def device_side(tokenizer, examples: list[dict], padded: list[dict], args) -> dict:
    """Workers prepare (pad, word and entity ids); the main process masks on the GPU, synchronised per batch."""
    device = torch.device("cuda")
    chosen = {name: (collate, data) for name, (collate, data) in methods(tokenizer, examples, padded).items()
              if isinstance(collate, MaskingCollator)}
    loaders = {name: endless(DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                        collate_fn=collate.prepare, persistent_workers=args.workers > 0,
                                        pin_memory=True, generator=torch.Generator().manual_seed(0)))
               for name, (collate, data) in chosen.items()}

    def step(name: str, batch: dict) -> None:
        chosen[name][0].mask({key: value.to(device, non_blocking=True) for key, value in batch.items()})
        torch.cuda.synchronize()

    samples = time_loaders(loaders, args.rounds, args.per_round, args.warmup, queued(args.workers), step)
    return {"device": torch.cuda.get_device_name(0),
            "methods": {f"{name} (device)": {"batches_per_s": len(s) / sum(s)} for name, s in samples.items()}}


if __name__ == "__main__":
    main()
