"""GPU check: the project's costs on one accelerator, in one script (about 8 minutes at most on one GPU).

Four measurements, each the median of timed repetitions after warm-up, with the device
synchronised around every timed call:

* **masking**: every registered policy's ``select`` + ``mlm_corrupt`` (80/10/10) on CUDA tensors
  (the batch of ``benchmarks/masking.py``: realistic WordPiece rows, padding, entity spans),
  against Hugging Face's ``DataCollatorForLanguageModeling.torch_mask_tokens`` on the same
  tensors; tokens/s counts every position of the batch;
* **pre-training**: one masked-LM training step (random policy, corruption, forward, backward,
  AdamW) of a BERT-base-sized model built from a config (12 layers, hidden 768, no download),
  in fp32 and in bf16 autocast: tokens/s and peak GPU memory;
* **meta-step**: the K = 1 hypergradient step of ``benchmarks/meta_step.py`` on that model, as a
  multiple of its plain masked-LM step (both engines, second order);
* **scoring**: the stratified masked-LM score of ``maskpolicy-score`` (``estimate_mll`` with the
  model as predictor): masked rows/s.

Without a GPU (or with ``--tiny``) every size shrinks so the script runs on a CPU in seconds:
a check that it works, not a measurement.

Run: ``make gpu-check`` or ``python benchmarks/gpu_check.py [--tiny] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import masking  # benchmarks/ is on sys.path when a script here runs
import meta_step
import torch
import transformers
from torch import nn
from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling

from maskpolicy.meta.scoring.estimate import estimate_mll
from maskpolicy.meta.scoring.estimators import Stratified
from maskpolicy.meta.scoring.predictors import MaskedLMPredictor
from maskpolicy.policies import RandomPolicy, TokenBatch, available, build, mlm_corrupt


@dataclass(frozen=True)
class Sizes:
    mask_rows: int          # masking batch [rows, length]
    mask_length: int
    layers: int             # the masked LM
    hidden: int
    heads: int
    vocab: int
    train_rows: int         # pre-training batch [rows, length]
    train_length: int
    meta_rows: int          # meta-step batches [rows, length]
    meta_length: int
    score_rows: int         # scored sequences [rows, length], stratified passes per row
    score_length: int
    passes: int
    repeats: int
    warmup: int


FULL = Sizes(mask_rows=64, mask_length=512, layers=12, hidden=768, heads=12, vocab=30522, train_rows=32,
             train_length=512, meta_rows=8, meta_length=128, score_rows=64, score_length=128, passes=32, repeats=10,
             warmup=3)
TINY = Sizes(mask_rows=8, mask_length=64, layers=2, hidden=64, heads=2, vocab=1000, train_rows=4, train_length=64,
             meta_rows=2, meta_length=32, score_rows=4, score_length=32, passes=4, repeats=2, warmup=1)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(run: Callable[[], object], device: torch.device, sizes: Sizes) -> float:
    """Median wall time of ``run`` over ``sizes.repeats`` calls after ``sizes.warmup`` untimed ones."""
    for _ in range(sizes.warmup):
        run()
    times = []
    for _ in range(sizes.repeats):
        synchronise(device)
        start = time.perf_counter()
        run()
        synchronise(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------ masking


def on_device(batch: TokenBatch, device: torch.device) -> TokenBatch:
    def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.to(device)

    return TokenBatch(move(batch.input_ids), move(batch.maskable), move(batch.word_ids), move(batch.entity_ids),
                      move(batch.features), batch.feature_names)


def masking_throughput(device: torch.device, sizes: Sizes) -> dict[str, dict]:
    """Tokens/s of every policy (select + 80/10/10) and of the HF collator's tensor path, on ``device``."""
    bench = masking.make_bench(sizes.mask_rows, sizes.mask_length)
    batch = on_device(bench.batch, device)
    replacement_ids = bench.replacement_ids.to(device)
    mask_id, n_tokens = bench.tokenizer.mask_token_id, batch.input_ids.numel()
    configs = masking.policy_configs()
    names = [name for name in configs if name in available()] + [n for n in available() if n not in configs]
    results: dict[str, dict] = {}
    for seed, name in enumerate(names, start=10):
        for label, params in configs.get(name, [(f"{name} (defaults)", {})]):
            generator = torch.Generator(device=device).manual_seed(seed)
            try:
                policy = build(name, **params)
                if callable(getattr(policy, "fit", None)):  # corpus statistics (pmi, informative): not timed
                    policy.fit(bench.batch)
                if isinstance(policy, nn.Module):
                    policy.to(device)

                def step(p=policy, g=generator) -> object:
                    return mlm_corrupt(batch.input_ids, p.select(batch, g), mask_token_id=mask_id,
                                       replacement_ids=replacement_ids, generator=g)

                seconds = median_seconds(step, device, sizes)
            except Exception as error:  # noqa: BLE001 - a policy that cannot run on this device is reported
                results[label] = {"error": f"{type(error).__name__}: {error}"}
                continue
            results[label] = {"tokens_per_s": n_tokens / seconds, "ms": 1e3 * seconds}
    collator = DataCollatorForLanguageModeling(bench.tokenizer, mlm_probability=masking.RATE)
    # the collator runs in DataLoader workers; where its tensor path refuses device tensors, it is timed on the CPU
    for where in dict.fromkeys([device, torch.device("cpu")]):
        ids, special = bench.batch.input_ids.to(where), bench.special_tokens_mask.to(where)
        label = f"HF DataCollatorForLanguageModeling (tensor path, {where.type})"
        try:
            seconds = median_seconds(lambda i=ids, s=special: collator.torch_mask_tokens(i.clone(),
                                                                                         special_tokens_mask=s),
                                     where, sizes)
        except RuntimeError as error:
            results[label] = {"error": f"{type(error).__name__}: {error}"}
            continue
        results[label] = {"tokens_per_s": n_tokens / seconds, "ms": 1e3 * seconds}
    return results


# ------------------------------------------------------------------------------------------- pre-training


def masked_lm(sizes: Sizes, device: torch.device) -> BertForMaskedLM:
    """A BERT of the given size built from a config (random weights), in train mode."""
    config = BertConfig(vocab_size=sizes.vocab, hidden_size=sizes.hidden, num_hidden_layers=sizes.layers,
                        num_attention_heads=sizes.heads, intermediate_size=4 * sizes.hidden,
                        max_position_embeddings=max(512, sizes.train_length))
    torch.manual_seed(0)
    return BertForMaskedLM(config).to(device).train()


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def pretraining_throughput(device: torch.device, sizes: Sizes, precision: str) -> dict[str, float | None]:
    """Tokens/s and peak memory of one pre-training step: random policy, 80/10/10, forward, backward, AdamW."""
    model = masked_lm(sizes, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(5, sizes.vocab, (sizes.train_rows, sizes.train_length), generator=generator, device=device)
    batch = TokenBatch(ids, torch.ones_like(ids, dtype=torch.bool))
    policy, replacement_ids = RandomPolicy(masking.RATE), torch.arange(5, sizes.vocab, device=device)

    def step() -> None:
        inputs, labels = mlm_corrupt(ids, policy.select(batch, generator), mask_token_id=4,
                                     replacement_ids=replacement_ids, generator=generator)
        with autocast(device, precision):
            loss = model(input_ids=inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_seconds(step, device, sizes)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"tokens_per_s": ids.numel() / seconds, "ms_per_step": 1e3 * seconds, "peak_gib": peak,
            "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6}


# -------------------------------------------------------------------------------------------- meta-step


def meta_step_ratio(device: torch.device, sizes: Sizes) -> dict[str, float]:
    """Seconds of the K = 1 meta-step over the plain masked-LM step, on the same model and batch shape."""
    model = masked_lm(sizes, device)
    policy = nn.Sequential(nn.Linear(meta_step.FEATURES, 32), nn.Tanh(), nn.Linear(32, 1)).to(device)
    generator = torch.Generator().manual_seed(0)

    def batch() -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in
                meta_step.masked_batch(sizes.meta_rows, sizes.meta_length, sizes.vocab, generator).items()}

    bench = meta_step.Bench(
        model=model, policy=policy, model_optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4),
        policy_optimizer=torch.optim.Adam(policy.parameters(), lr=1e-3), inner=[batch()],
        features=[torch.randn(sizes.meta_rows, sizes.meta_length, meta_step.FEATURES, generator=generator).to(device)],
        outer=batch())
    plain = median_seconds(lambda: meta_step.plain_step(bench), device, sizes)
    ratios = {"plain_ms": 1e3 * plain}
    for engine in meta_step.ENGINES:
        seconds = median_seconds(lambda e=engine: meta_step.meta_step(bench, e, 1, False), device, sizes)
        ratios[f"{engine}_k1_vs_plain"] = seconds / plain
    return ratios


# ---------------------------------------------------------------------------------------------- scoring


def scoring_throughput(device: torch.device, sizes: Sizes, precision: str) -> dict[str, float]:
    """Masked rows/s of the stratified masked-LM score (every masked row is one forward pass's row)."""
    model = masked_lm(sizes, device)
    inputs = torch.randint(5, sizes.vocab, (sizes.score_rows, sizes.score_length),
                           generator=torch.Generator().manual_seed(1))
    predictor = MaskedLMPredictor(model, mask_token_id=4)
    estimator = Stratified(passes=sizes.passes)
    rows = 0

    def score() -> None:
        nonlocal rows
        with autocast(device, precision):
            rows = estimate_mll(predictor, inputs, estimator=estimator, batch_size=256).forward_passes

    seconds = median_seconds(score, device, sizes)
    return {"masked_rows_per_s": rows / seconds, "masked_rows": rows, "seconds": seconds}


# -------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (automatic without a GPU)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers to this JSON file")
    return parser.parse_args(argv)


def device_record(device: torch.device) -> dict[str, str]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": name, "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda or "none"}


def print_results(results: dict) -> None:
    print(f"device: {results['machine']['device']} (torch {results['machine']['torch']}); sizes: "
          f"{'tiny' if results['tiny'] else 'full'}")
    print("\nmasking (select + 80/10/10):")
    for label, entry in results["masking"].items():
        text = entry.get("error") or f"{entry['tokens_per_s'] / 1e6:10.1f} M tokens/s  {entry['ms']:8.2f} ms"
        print(f"  {label:55s} {text}")
    print("\npre-training step:")
    for precision, entry in results["pretraining"].items():
        peak = "n/a" if entry["peak_gib"] is None else f"{entry['peak_gib']:.1f} GiB"
        print(f"  {precision:5s} {entry['tokens_per_s']:12.0f} tokens/s  {entry['ms_per_step']:9.1f} ms/step  "
              f"peak {peak}  ({entry['parameters_m']:.0f} M parameters)")
    meta = results["meta_step"]
    print(f"\nmeta-step K=1: plain step {meta['plain_ms']:.1f} ms; " + ", ".join(
        f"{key.removesuffix('_k1_vs_plain')} {value:.2f}× plain" for key, value in meta.items() if key != "plain_ms"))
    print("\nscoring (stratified masked-LM score):")
    for precision, entry in results["scoring"].items():
        print(f"  {precision:5s} {entry['masked_rows_per_s']:12.0f} masked rows/s ({entry['masked_rows']} rows)")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or device.type != "cuda"
    if device.type != "cuda":
        print("no GPU found: running the tiny sizes on the CPU (a check that the script works, not a measurement)",
              file=sys.stderr)
    sizes = TINY if tiny else FULL
    started = time.perf_counter()
    results = {"machine": device_record(device), "tiny": tiny, "sizes": asdict(sizes),
               "masking": masking_throughput(device, sizes),
               "pretraining": {p: pretraining_throughput(device, sizes, p) for p in ("fp32", "bf16")},
               "meta_step": meta_step_ratio(device, sizes),
               "scoring": {p: scoring_throughput(device, sizes, p) for p in ("fp32", "bf16")}}
    results["seconds"] = round(time.perf_counter() - started, 1)
    print_results(results)
    print(f"\ntotal {results['seconds']} s")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
