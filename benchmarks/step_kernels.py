"""Attention kernel and optimiser implementation for one pre-training step, side by side in one run.

Each row times the step ``MaskedPretraining`` takes (the masked-LM head at the labelled positions only,
``masked_lm_loss``; backward; AdamW) with one combination of

* attention: ``eager`` (the project's default: the meta-learning engines need its double backward) or
  PyTorch's ``sdpa`` (``scaled_dot_product_attention``);
* AdamW: PyTorch's default (``foreach``) or ``fused=True``;
* the loss (forward included) eager or through ``torch.compile`` (``pretrain.compile=true``), whose first
  step (tracing and building kernels) is reported apart as ``first step s``;

on the model shapes of ``sparse_head.py`` (the tiny BERT, vocabularies 867 and 4,000, 32 × 128; a
MiniLM-L6-shaped BERT, 8 × 128), every combination a copy of the same initial weights. Whether they compute
the same thing is checked on the same batch in eval mode (no dropout: the kernels draw attention dropout
differently): the loss of each combination against eager's, and the weights after one AdamW step from the
same gradients (fused against foreach). Times are medians over ``--repeats`` round-robin rounds after
``--warmup`` steps, with the CPU time other processes used during the timing.

Run: ``python benchmarks/step_kernels.py [--threads 2] [--repeats 5] [--models tiny-867,minilm] [--json out.json]``.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import time

import torch
import transformers
from machine import time_round_robin  # benchmarks/ is on sys.path when a script here runs
from sparse_head import masked_batch, parse_args, shapes, sparse_loss, training_step
from transformers import AutoConfig, AutoModelForMaskedLM

# name -> (attention, fused AdamW, compiled loss)
COMBINATIONS = {"eager, AdamW": ("eager", False, False), "sdpa, AdamW": ("sdpa", False, False),
                "eager, fused AdamW": ("eager", True, False), "sdpa, fused AdamW": ("sdpa", True, False),
                "eager, fused AdamW, compiled": ("eager", True, True),
                "sdpa, fused AdamW, compiled": ("sdpa", True, True)}
BASELINE = "eager, AdamW"


def loss_for(name: str):
    return torch.compile(sparse_loss) if COMBINATIONS[name][2] else sparse_loss


def models_for(shape, seed: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(seed)
    config = AutoConfig.for_model("bert", vocab_size=shape.vocab, **shape.config)
    reference = AutoModelForMaskedLM.from_config(config, attn_implementation="eager")
    built = {}
    for name, (attention, _, _) in COMBINATIONS.items():
        model = AutoModelForMaskedLM.from_config(config, attn_implementation=attention)
        model.load_state_dict(reference.state_dict())
        built[name] = model
    return built


def same_results(models: dict[str, torch.nn.Module], batch: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Eval-mode loss against eager's, and the weights one step later, fused against foreach AdamW."""
    checks = {}
    for name, model in models.items():
        copied = copy.deepcopy(model).eval()
        loss = loss_for(name)(copied, batch)
        loss.backward()
        torch.optim.AdamW(copied.parameters(), lr=1e-3, fused=COMBINATIONS[name][1]).step()
        checks[name] = {"loss": float(loss.detach()), "weights": [p.detach() for p in copied.parameters()]}
    base = checks[BASELINE]
    return {name: {"loss_difference": abs(check["loss"] - base["loss"]),
                   "largest_weight_difference": max(float((a - b).abs().max())
                                                    for a, b in zip(check["weights"], base["weights"], strict=True))}
            for name, check in checks.items()}


def time_shape(shape, repeats: int, warmup: int, seed: int = 0) -> dict:
    models = models_for(shape, seed)
    batch = masked_batch(shape, torch.Generator().manual_seed(seed))
    checks = same_results(models, batch)
    optimizers = {name: torch.optim.AdamW(model.train().parameters(), lr=1e-4, fused=COMBINATIONS[name][1])
                  for name, model in models.items()}
    losses = {name: loss_for(name) for name in models}
    first = {}
    for name in models:
        start = time.perf_counter()
        training_step(models[name], optimizers[name], losses[name], batch)
        first[name] = time.perf_counter() - start
    for _ in range(warmup - 1):
        for name in models:
            training_step(models[name], optimizers[name], losses[name], batch)
    steps = {name: lambda name=name: training_step(models[name], optimizers[name], losses[name], batch)
             for name in models}
    timed, others = time_round_robin(steps, repeats)
    rows = {name: {**row, **checks[name], "first_step_s": first[name]} for name, row in timed.items()}
    base = rows[BASELINE]["median_ms"]
    for row in rows.values():
        row["speedup"] = base / row["median_ms"]
    return {"model": shape.name, "rows": shape.rows, "length": shape.length, "combinations": rows,
            "other_processes_cpus": others}


def print_table(results: list[dict]) -> None:
    print("| model | batch | attention, optimiser, loss | ms per step | spread | vs eager, AdamW | first step s | "
          "loss Δ (eval) | weight Δ after a step |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for result in results:
        for name, row in result["combinations"].items():
            print(f"| {result['model']} | {result['rows']} × {result['length']} | {name} | {row['median_ms']:.0f} | "
                  f"{row['spread']:.0%} | {row['speedup']:.2f}× | {row['first_step_s']:.1f} | "
                  f"{row['loss_difference']:.1e} | {row['largest_weight_difference']:.1e} |")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)  # sparse_head's options: --models, --repeats, --warmup, --threads, --json
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = [time_shape(shapes()[name], args.repeats, args.warmup) for name in args.models.split(",")]
    print(f"one pre-training step (sparse masked-LM head, backward, AdamW), train mode; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, Python "
          f"{platform.python_version()}, {os.cpu_count()} CPUs; others' CPUs per model: "
          + ", ".join(f"{r['other_processes_cpus']:.2f}" if r["other_processes_cpus"] is not None else "—"
                      for r in results))
    print_table(results)
    report = {"threads": torch.get_num_threads(), "repeats": args.repeats, "torch": torch.__version__,
              "results": results}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
