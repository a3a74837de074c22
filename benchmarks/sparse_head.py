"""The masked-LM head at every position against the head at the labelled positions only, per training step.

``MaskedPretraining`` computes its loss with ``maskpolicy.tasks.training.heads.masked_lm_loss``,
which runs the encoder once and the head (dense transform and full-vocabulary decoder) only
where a label is. This script times one training step both ways, side by side in one run:

* **full**: ``model(input_ids, attention_mask, labels=labels).loss``, backward, AdamW step;
* **sparse**: ``masked_lm_loss(model, input_ids, attention_mask, labels)``, backward, AdamW step;

on random token ids with 15% of the positions of every row labelled (and replaced by
``[MASK]``), models in train mode (dropout on) built from configs, for:

* the project's tiny BERT (``conf/model/tiny_bert.yaml``: 2 layers, hidden 128) with a
  vocabulary of 867 (what WordPiece learns on the default corpus) and of 4,000 (the config's
  ``vocab_size``), batch 32 × 128;
* a MiniLM-L6-shaped BERT (6 layers, hidden 384, 12 heads, intermediate 1,536, vocabulary
  30,522), batch 8 × 128.

Each model gets two identical copies (same seed), one per way, each with its own AdamW, so
both start from the same weights; the first step's two losses are compared as a check that
both ways compute the same thing. Each time is the median over ``--repeats`` rounds after
``--warmup`` untimed steps, the two ways alternating (round-robin) so load drift on the machine
spreads evenly; "spread" is the interquartile range over the median. How many CPUs other
processes kept busy during each row's timed rounds is shown beside it (Linux ``/proc/stat``,
steal time included): on a small or shared machine that load distorts the numbers.

Run: ``python benchmarks/sparse_head.py [--threads 2] [--repeats 5] [--models tiny-867,minilm]
[--json out.json]``. The last line printed is the report as one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import importlib.resources
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers
from machine import time_round_robin  # benchmarks/ is on sys.path when a script here runs
from omegaconf import OmegaConf
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForMaskedLM

from maskpolicy.tasks.training.heads import masked_lm_loss

MASK_ID, FIRST_ORDINARY_ID, RATE = 4, 5, 0.15
MINILM = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
          "max_position_embeddings": 512}


@dataclass(frozen=True)
class Shape:
    """One model and batch to time."""

    name: str
    config: dict
    vocab: int
    rows: int
    length: int


def tiny_bert_config() -> dict:
    """The ``tiny_bert`` model config's architecture keywords."""
    spec = OmegaConf.load(importlib.resources.files("maskpolicy.conf") / "model" / "tiny_bert.yaml")
    return OmegaConf.to_container(spec.config)


def shapes() -> dict[str, Shape]:
    tiny = tiny_bert_config()
    return {
        "tiny-867": Shape("tiny BERT, vocab 867", tiny, 867, 32, 128),
        "tiny-4000": Shape("tiny BERT, vocab 4,000", tiny, 4000, 32, 128),
        "minilm": Shape("MiniLM-L6-shaped BERT, vocab 30,522", MINILM, 30522, 8, 128),
    }


def masked_batch(shape: Shape, generator: torch.Generator) -> dict[str, Tensor]:
    """``input_ids`` / ``attention_mask`` / ``labels``, each ``Long[rows, length]``, RATE of each row labelled."""
    ids = torch.randint(FIRST_ORDINARY_ID, shape.vocab, (shape.rows, shape.length), generator=generator)
    scores = torch.rand(shape.rows, shape.length, generator=generator)
    chosen = scores <= scores.kthvalue(max(1, round(RATE * shape.length)), dim=1, keepdim=True).values
    return {"input_ids": torch.where(chosen, MASK_ID, ids), "attention_mask": torch.ones_like(ids),
            "labels": torch.where(chosen, ids, -100)}


def full_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(**batch).loss


def sparse_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return masked_lm_loss(model, **batch)


WAYS: dict[str, Callable[[nn.Module, dict[str, Tensor]], Tensor]] = {"full": full_loss, "sparse": sparse_loss}


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_of, batch: dict[str, Tensor]) -> float:
    """Forward, backward, AdamW step; the loss."""
    loss = loss_of(model, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def time_shape(shape: Shape, repeats: int, warmup: int, seed: int = 0) -> dict:
    """Both ways on one model shape: first-step losses, then the seconds per step of each."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model("bert", vocab_size=shape.vocab, **shape.config)
    model = AutoModelForMaskedLM.from_config(config, attn_implementation="eager").train()
    models = {way: model if way == "full" else copy.deepcopy(model) for way in WAYS}
    optimizers = {way: torch.optim.AdamW(m.parameters(), lr=1e-4) for way, m in models.items()}
    batch = masked_batch(shape, torch.Generator().manual_seed(seed))

    def step(way: str) -> float:
        return training_step(models[way], optimizers[way], WAYS[way], batch)

    first = {}
    for way in WAYS:  # the first step of each copy from the same weights, under the same dropout masks
        torch.manual_seed(seed + 1)
        first[way] = step(way)
    for _ in range(warmup - 1):
        for way in WAYS:
            step(way)
    ways, others = time_round_robin({way: lambda way=way: step(way) for way in WAYS}, repeats)
    return {
        "model": shape.name, "vocab": shape.vocab, "rows": shape.rows, "length": shape.length,
        "labelled": int((batch["labels"] != -100).sum()), "parameters": sum(p.numel() for p in model.parameters()),
        "first_loss": first, "first_loss_difference": abs(first["full"] - first["sparse"]),
        "ways": ways, "speedup": ways["full"]["median_ms"] / ways["sparse"]["median_ms"],
        "other_processes_cpus": others,
    }


def print_table(results: list[dict]) -> None:
    print("| model | batch | labelled | full ms | spread | sparse ms | spread | full / sparse | first-loss Δ | "
          "others' CPUs |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        full, sparse = r["ways"]["full"], r["ways"]["sparse"]
        print(f"| {r['model']} | {r['rows']} × {r['length']} | {r['labelled']} | {full['median_ms']:.0f} | "
              f"{full['spread']:.0%} | {sparse['median_ms']:.0f} | {sparse['spread']:.0%} | {r['speedup']:.2f}× | "
              f"{r['first_loss_difference']:.1e} | {_cpus(r['other_processes_cpus'])} |")


def _cpus(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(shapes()), help=f"comma-separated, from {', '.join(shapes())}")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per way (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per way, the first included (≥ 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; default: torch's own")
    parser.add_argument("--json", metavar="PATH", help="also write the report to this JSON file")
    args = parser.parse_args(argv)
    unknown = set(args.models.split(",")) - set(shapes())
    if unknown:
        parser.error(f"unknown --models {sorted(unknown)}; choose from {', '.join(shapes())}")
    if args.warmup < 1 or args.repeats < 1:
        parser.error("--warmup and --repeats must be ≥ 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = [time_shape(shapes()[name], args.repeats, args.warmup) for name in args.models.split(",")]

    print(f"sparse masked-LM head: one training step (forward + backward + AdamW), head at every position (full) or "
          f"at the {RATE:.0%} labelled positions (sparse); models in train mode, attention eager")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
          f"Python {platform.python_version()}; median of {args.repeats} round-robin rounds after {args.warmup} "
          f"warm-up steps")
    print(f"others' CPUs: how many of the {os.cpu_count()} CPUs other processes (or the host, as steal time) kept "
          f"busy during a row's timed rounds; well above 0, the row's numbers are distorted")
    print()
    print_table(results)
    print()
    print(f"total {time.perf_counter() - start:.0f}s")
    report = {
        "threads": torch.get_num_threads(), "repeats": args.repeats, "warmup": args.warmup, "rate": RATE,
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "results": results,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
