"""Cost of a meta-learning step (hypergradient through K inner SGD steps) against a plain masked-LM step.

On the project's tiny default BERT (architecture read from ``conf/model/tiny_bert.yaml``; the
vocabulary is ``--vocab``, about what WordPiece learns on the default corpus) and one batch of
``--rows`` × ``--length`` random token ids with 15% of the positions labelled (and replaced by
``[MASK]``), it times:

* **plain**: one masked-LM training step: forward with labels, backward, AdamW step;
* **meta**: one policy update: per-token weights ``sigmoid(policy(features))`` for each of the K
  inner batches, ``maskpolicy.meta.learning.inner.hypergradient`` (K inner SGD steps, the outer loss on a
  second random batch of the same shape standing in for cloze QA, the policy gradient), and an
  Adam step on the policy (a 16→32→1 MLP over random per-token features); for each engine, for
  K = 1, 2, 4, with the full (second-order) and the first-order hypergradient (``maskpolicy-learn``'s
  ``learning.meta_learning.engine``, ``inner_steps`` and ``first_order``).

Each time is the median over ``--repeats`` rounds after ``--warmup`` untimed calls; the
configurations are timed round-robin (one call of each per round) so load drift on a shared
machine spreads evenly over them. "spread" is the interquartile range over the median.

Peak memory: every configuration runs in a fresh subprocess that builds the same model, batches,
policy and optimizers, runs the step twice, and reads its peak resident set size. The column is
that peak minus the peak of a baseline subprocess that built everything and ran nothing. On Linux
the peak is ``VmHWM`` from ``/proc/self/status``, not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux
keeps ``ru_maxrss`` across ``fork`` + ``execve``, so a child started by this (large) process
reports at least the parent's peak and every row reads 0; ``VmHWM`` belongs to the child's own
address space. Both import torch's forward-AD decompositions up front (first-order
mode loads them on its first JVP, a one-time cost that is not the step's). RSS counts what the CPU
allocator keeps mapped, so this is an upper bound on the step's working set and a fair comparison
between rows; torch's profiler was not used because it reports allocations per op, not the peak.

Run: ``OMP_NUM_THREADS=1 python benchmarks/meta_step.py [--threads 1] [--repeats 7] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers
from machine import busy_cpu_seconds  # benchmarks/ is on sys.path when a script here runs
from omegaconf import OmegaConf
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForMaskedLM

from maskpolicy.meta.learning.inner import InnerBatch, hypergradient

MASK_ID, FIRST_ORDINARY_ID, RATE, FEATURES = 4, 5, 0.15, 16
ENGINES = ("higher", "torch_func")
STEPS = (1, 2, 4)


@dataclass
class Bench:
    """Everything a step needs, built identically in the parent and in each memory subprocess."""

    model: nn.Module
    policy: nn.Module
    model_optimizer: torch.optim.Optimizer
    policy_optimizer: torch.optim.Optimizer
    inner: list[dict[str, Tensor]]
    features: list[Tensor]
    outer: dict[str, Tensor]


def tiny_bert(vocab: int, attn_implementation: str | None) -> nn.Module:
    """The ``tiny_bert`` model config's architecture with ``vocab`` ids, in train mode."""
    spec = OmegaConf.load(importlib.resources.files("maskpolicy.conf") / "model" / "tiny_bert.yaml")
    config = AutoConfig.for_model(spec.architecture, vocab_size=vocab, **OmegaConf.to_container(spec.config))
    attention = attn_implementation or spec.attn_implementation
    return AutoModelForMaskedLM.from_config(config, attn_implementation=attention).train()


def masked_batch(rows: int, length: int, vocab: int, generator: torch.Generator) -> dict[str, Tensor]:
    """``input_ids`` / ``attention_mask`` / ``labels``, each ``Long[rows, length]``, RATE of positions labelled."""
    ids = torch.randint(FIRST_ORDINARY_ID, vocab, (rows, length), generator=generator)
    scores = torch.rand(rows, length, generator=generator)
    chosen = scores <= scores.kthvalue(max(1, round(RATE * length)), dim=1, keepdim=True).values
    return {
        "input_ids": torch.where(chosen, torch.full_like(ids, MASK_ID), ids),
        "attention_mask": torch.ones_like(ids),
        "labels": torch.where(chosen, ids, torch.full_like(ids, -100)),
    }


def make_bench(rows: int, length: int, vocab: int, attn_implementation: str | None, seed: int = 0) -> Bench:
    """Model, policy, optimizers, max(STEPS) inner batches with per-token features, one outer batch."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = tiny_bert(vocab, attn_implementation)
    policy = nn.Sequential(nn.Linear(FEATURES, 32), nn.Tanh(), nn.Linear(32, 1))
    inner = [masked_batch(rows, length, vocab, generator) for _ in range(max(STEPS))]
    features = [torch.randn(rows, length, FEATURES, generator=generator) for _ in inner]
    return Bench(
        model=model,
        policy=policy,
        model_optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4),
        policy_optimizer=torch.optim.Adam(policy.parameters(), lr=1e-3),
        inner=inner,
        features=features,
        outer=masked_batch(rows, length, vocab, generator),
    )


def plain_step(bench: Bench) -> None:
    """Forward with labels, backward, AdamW: what one ordinary masked-LM training step costs."""
    loss = bench.model(**bench.inner[0]).loss
    loss.backward()
    bench.model_optimizer.step()
    bench.model_optimizer.zero_grad(set_to_none=True)


def meta_step(bench: Bench, engine: str, k: int, first_order: bool) -> None:
    """Policy weights for K batches, the hypergradient, and an Adam step on the policy."""
    batches = [
        InnerBatch(b["input_ids"], b["attention_mask"], b["labels"], torch.sigmoid(bench.policy(f).squeeze(-1)))
        for b, f in zip(bench.inner[:k], bench.features[:k], strict=True)
    ]
    params = list(bench.policy.parameters())
    step = hypergradient(bench.model, params, batches, bench.outer, engine=engine, first_order=first_order)
    for param, grad in zip(params, step.policy_grads, strict=True):
        param.grad = grad
    bench.policy_optimizer.step()
    bench.policy_optimizer.zero_grad(set_to_none=True)


def configurations() -> dict[str, Callable[[Bench], None]]:
    """Row name → step; names are also the subprocess argument for the memory measurement."""
    steps: dict[str, Callable[[Bench], None]] = {"plain": plain_step}
    for first_order in (False, True):
        for k in STEPS:
            for engine in ENGINES:
                name = f"meta {engine} K={k}" + (" first-order" if first_order else "")
                steps[name] = lambda bench, e=engine, k=k, f=first_order: meta_step(bench, e, k, f)
    return steps


def time_configurations(
    bench: Bench, steps: dict[str, Callable[[Bench], None]], repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each step: ``warmup`` untimed calls each, then ``repeats`` round-robin rounds."""
    for step in steps.values():
        for _ in range(warmup):
            step(bench)
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step(bench)
            samples[name].append(time.perf_counter() - start)
    return samples


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB: ``VmHWM`` on Linux, else ``ru_maxrss`` (see module doc)."""
    try:
        with open("/proc/self/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024


def memory_child(name: str, args: argparse.Namespace) -> None:
    """Subprocess body: build the bench, run ``name`` twice (nothing for ``baseline``), print the peak RSS."""
    import torch._decomp.decompositions_for_jvp  # noqa: F401  (one-time cost of the first JVP; see module doc)

    bench = make_bench(args.rows, args.length, args.vocab, args.attn_implementation)
    if name != "baseline":
        step = configurations()[name]
        for _ in range(2):
            step(bench)
    print(json.dumps({"peak_mib": peak_rss_mib()}))


def measure_memory(names: list[str], args: argparse.Namespace) -> dict[str, float]:
    """Peak RSS over the baseline, in MiB, for each configuration, each in a fresh subprocess."""
    common = [
        "--threads", str(args.threads), "--rows", str(args.rows), "--length", str(args.length),
        "--vocab", str(args.vocab),
    ]
    if args.attn_implementation:
        common += ["--attn-implementation", args.attn_implementation]

    def peak(name: str) -> float:
        command = [sys.executable, __file__, "--memory-of", name, *common]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        return json.loads(output.strip().splitlines()[-1])["peak_mib"]

    baseline = peak("baseline")
    return {"baseline": baseline, **{name: peak(name) - baseline for name in names}}


def summarise(samples: dict[str, list[float]], memory: dict[str, float]) -> dict[str, dict]:
    """Median, spread, ratio to the plain step and extra peak memory per configuration."""
    plain = statistics.median(samples["plain"])
    results = {}
    for name, times in samples.items():
        median = statistics.median(times)
        q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (median, median, median)
        results[name] = {
            "median_ms": 1e3 * median,
            "spread": (q3 - q1) / median,
            "vs_plain": median / plain,
            "peak_mib_over_baseline": memory.get(name),
            "samples_s": times,
        }
    return results


def print_table(results: dict[str, dict]) -> None:
    """Markdown table, one row per configuration."""
    print("| step | median ms | spread | × plain | peak MiB over baseline |")
    print("|---|---:|---:|---:|---:|")
    for name, entry in results.items():
        mib = entry["peak_mib_over_baseline"]
        mib_text = "—" if mib is None else f"{mib:.0f}"
        print(f"| {name} | {entry['median_ms']:.1f} | {entry['spread']:.0%} | {entry['vs_plain']:.2f} | {mib_text} |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=870, help="vocabulary size of the tiny BERT")
    parser.add_argument("--attn-implementation", default=None, help="default: the model config's (eager)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per configuration (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-configuration memory subprocesses")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers to this JSON file ('-': stdout)")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_of:
        memory_child(args.memory_of, args)
        return {}
    start = time.perf_counter()
    bench = make_bench(args.rows, args.length, args.vocab, args.attn_implementation)
    steps = configurations()
    busy, own, wall = busy_cpu_seconds(), time.process_time(), time.perf_counter()
    samples = time_configurations(bench, steps, args.repeats, args.warmup)
    others = None
    if busy is not None:
        others = max(0.0, busy_cpu_seconds() - busy - (time.process_time() - own)) / (time.perf_counter() - wall)
    memory = {} if args.no_memory else measure_memory(list(steps), args)
    results = summarise(samples, memory)

    n_params = sum(p.numel() for p in bench.model.parameters())
    print(f"meta step benchmark: tiny BERT ({n_params:,} parameters, attention "
          f"{bench.model.config._attn_implementation}), batch {args.rows} x {args.length}, {RATE:.0%} labelled, "
          f"inner SGD, policy 16→32→1 MLP with Adam")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
          f"higher {importlib.metadata.version('higher')}, Python "
          f"{platform.python_version()}; median of {args.repeats} round-robin rounds after {args.warmup} warm-up")
    if others is not None:
        print(f"other processes kept {others:.2f} of {os.cpu_count()} CPUs busy while timing")
    if memory:
        print(f"baseline process (model built, nothing run) peak RSS {memory['baseline']:.0f} MiB")
    print()
    print_table(results)
    print()
    for engine in ENGINES:
        ratio = results[f"meta {engine} K=1"]["vs_plain"]
        print(f"meta step K=1 / plain step, {engine}: {ratio:.2f}x (target ≤ 4x)")
    print(f"total {time.perf_counter() - start:.0f}s")

    report = {
        "rows": args.rows, "length": args.length, "vocab": args.vocab, "threads": torch.get_num_threads(),
        "repeats": args.repeats, "warmup": args.warmup, "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "attn_implementation": bench.model.config._attn_implementation, "parameters": n_params,
        "baseline_peak_mib": memory.get("baseline"), "other_processes_cpus": others, "steps": results,
    }
    if args.json == "-":
        print(json.dumps(report, indent=2))
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
