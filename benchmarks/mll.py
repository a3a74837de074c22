"""Marginal-likelihood estimators: error against forward passes, PPCA fits, targeted exactness, MLM scoring time.

Four measurements in one run:

1. **Error vs budget on PPCA, D = 50.** For ``rates``, ``stratified`` and
   pseudo-log-likelihood (``pll``: D passes, biased), the relative error
   |estimate − exact| / |exact| of the total over ``--sequences`` vectors, and the
   median of the per-sequence relative errors, as a function of masked forward
   passes per sequence; means over ``--repeats`` mask seeds. The reported standard
   error is shown next to the error it should bound.
2. **Training PPCA by masked prediction (D = 10).** Fits by Adam on the exact LML,
   on the cumulative estimate, and on one fixed rate; each fit's exact LML against
   the closed-form maximum, and the fixed-rate estimate's bias against Σ_k (S_m − S_k).
3. **Targeted exactness.** On PPCA (D = 10) and the HMM (T = 10), the exhaustive
   estimate over a target set A (several sets, rows with an empty A among them) against
   the exact ``log p(x_A | x_rest) = log p(x) − log p(x_rest)``: the largest relative error.
4. **MLM scoring time.** One stratified scoring of 1,000 held-out biographies of
   the default task (bioworld with 1,000 people) by the default tiny BERT, for
   ``score.target=all`` and ``score.target=entities``.

Run: ``python benchmarks/mll.py [--json mll.json] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from maskpolicy.meta.scoring.estimate import estimate_mll
from maskpolicy.meta.scoring.estimators import Estimator, Exhaustive, PseudoLogLikelihood, Rates, Stratified
from maskpolicy.meta.scoring.targets import exact_target_log_likelihood, position_mask
from maskpolicy.meta.scoring.text import score_targets
from maskpolicy.meta.scoring.tractable import OBJECTIVES, fit_ppca, fixed_rate_bias
from maskpolicy.tasks.data.bioworld import BioWorld
from maskpolicy.tasks.tractable.hmm import HMMTask
from maskpolicy.tasks.tractable.ppca import PPCATask

# pll's D = 50 single-position masks are all of them: one seed gives its only value
COMPARED: list[tuple[Estimator, bool]] = [
    (PseudoLogLikelihood(passes=50), False),
    *((Rates(passes), True) for passes in (50, 100, 200, 400)),
    *((Stratified(passes), True) for passes in (10, 25, 50, 100, 200, 400)),
]


def error_vs_budget(sequences: int, repeats: int) -> list[dict]:
    task = PPCATask(dim=50, latent=5, noise=0.5, n_sequences=sequences, seed=0)
    data = task.data()
    exact = task.log_likelihood(data)
    rows = []
    for estimator, sampled in COMPARED:
        total_errors, median_errors, stderrs, seconds = [], [], [], []
        for seed in range(repeats if sampled else 1):
            started = time.perf_counter()
            estimate = estimate_mll(task.masked_log_probs, data, estimator=estimator,
                                    generator=torch.Generator().manual_seed(seed))
            seconds.append(time.perf_counter() - started)
            relative = (estimate.per_sequence - exact).abs() / exact.abs()
            total_errors.append(abs(estimate.total - float(exact.sum())) / abs(float(exact.sum())))
            median_errors.append(float(relative.median()))
            stderrs.append(estimate.total_stderr / abs(float(exact.sum())))
        rows.append({
            "estimator": estimator.name, "passes_per_sequence": estimate.forward_passes // sequences,
            "total_relative_error": statistics.mean(total_errors),
            "median_sequence_relative_error": statistics.mean(median_errors),
            "reported_relative_stderr": statistics.mean(stderrs),
            "seconds": statistics.median(seconds),
        })
    return rows


def ppca_fits(steps: int) -> dict:
    data = PPCATask(dim=10, latent=2, noise=0.5, n_sequences=500, seed=1).data()
    fits = {objective: fit_ppca(data, latent=2, objective=objective, steps=steps, seed=0) for objective in OBJECTIVES}
    bias = fixed_rate_bias(fits["fixed_rate"].model, data, rate=0.15)
    return {
        "fits": [{"objective": o, "exact_lml": f.exact_lml, "ml_lml": f.ml_lml, "relative_gap": f.relative_gap}
                 for o, f in fits.items()],
        "fixed_rate_bias": {"m": bias.size, "fixed_rate_estimate": bias.fixed_rate_estimate,
                            "exact_lml": bias.exact_lml, "measured": bias.measured, "predicted": bias.predicted},
    }


def targeted_exactness() -> list[dict]:
    tasks = {"ppca": PPCATask(dim=10, n_sequences=50, seed=0), "hmm": HMMTask(length=10, n_sequences=50, seed=0)}
    rows = []
    for name, task in tasks.items():
        data = task.data()
        ragged = torch.rand(data.shape, generator=torch.Generator().manual_seed(0)) < 0.4
        ragged[:5] = False  # five rows without a target: they must add exactly 0
        targets = {"[3]": position_mask([3], *data.shape), "[1, 4, 6]": position_mask([1, 4, 6], *data.shape),
                   "all ten": position_mask(range(10), *data.shape), "ragged, 40%": ragged}
        for label, scored in targets.items():
            estimate = estimate_mll(task.masked_log_probs, data, scored, Exhaustive())
            exact = exact_target_log_likelihood(task, data, scored)
            present = scored.any(1)
            relative = (estimate.per_sequence - exact)[present].abs() / exact[present].abs()
            rows.append({"model": name, "target": label, "empty_sequences": estimate.empty_sequences,
                         "empty_rows_exactly_zero": bool((estimate.per_sequence[~present] == 0).all()),
                         "max_relative_error": float(relative.max())})
    return rows


def mlm_scoring_time(passes: list[int]) -> list[dict]:
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose("pretrain")
    world = BioWorld(n_people=1000)
    spec = instantiate(cfg.model)
    tokenizer = spec.build_tokenizer(d.text for d in world.corpus())
    torch.manual_seed(0)
    model = spec.build_model(tokenizer)
    rows = []
    for budget in passes:
        for target in ("all", "entities"):
            started = time.perf_counter()
            (estimate,) = score_targets(model, tokenizer, world, spec.max_length, Stratified(budget), [target],
                                        max_sequences=1000).values()
            seconds = time.perf_counter() - started
            rows.append({"target": target, "sequences": len(estimate.lengths), "tokens": estimate.tokens,
                         "empty_sequences": estimate.empty_sequences, "passes_per_sequence": budget,
                         "forward_passes": estimate.forward_passes, "seconds": seconds,
                         "masked_rows_per_second": estimate.forward_passes / seconds,
                         "nats_per_token": estimate.nats_per_token,
                         "relative_stderr": estimate.total_stderr / abs(estimate.total)})
    return rows


def markdown(results: dict) -> str:
    lines = ["PPCA, D = 50: relative error of the total (and median per sequence) against passes per sequence",
             "", "| estimator | passes/seq | total rel. error | median seq. rel. error | reported rel. stderr | s |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in results["error_vs_budget"]:
        lines.append(f"| {row['estimator']} | {row['passes_per_sequence']} | {row['total_relative_error']:.2e} | "
                     f"{row['median_sequence_relative_error']:.2e} | {row['reported_relative_stderr']:.2e} | "
                     f"{row['seconds']:.2f} |")
    lines += ["", "PPCA, D = 10, 500 vectors: exact LML of each fit vs the closed-form maximum", "",
              "| objective | exact LML of fit | ML LML | relative gap |", "|---|---:|---:|---:|"]
    for fit in results["ppca_fits"]["fits"]:
        lines.append(f"| {fit['objective']} | {fit['exact_lml']:.2f} | {fit['ml_lml']:.2f} | "
                     f"{fit['relative_gap']:.2e} |")
    bias = results["ppca_fits"]["fixed_rate_bias"]
    lines += ["", f"fixed-rate fit, m = {bias['m']}: D·S_m = {bias['fixed_rate_estimate']:.2f}, exact "
              f"{bias['exact_lml']:.2f}, bias {bias['measured']:.4f} vs Σ_k (S_m − S_k) = {bias['predicted']:.4f}",
              "", "Exhaustive targeted estimate vs exact log p(x_A | x_rest), 50 rows", "",
              "| model | target A | empty rows | empty rows exactly 0 | max relative error |",
              "|---|---|---:|---|---:|"]
    for row in results["targeted_exactness"]:
        lines.append(f"| {row['model']} | {row['target']} | {row['empty_sequences']} | "
                     f"{row['empty_rows_exactly_zero']} | {row['max_relative_error']:.1e} |")
    lines += ["", "MLM scoring, 1,000 held-out bioworld biographies, default tiny BERT (untrained)", "",
              "| target | passes/seq | forward passes | tokens | nats/token | seconds | masked rows/s | rel. stderr |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in results["mlm_scoring"]:
        lines.append(f"| {row['target']} | {row['passes_per_sequence']} | {row['forward_passes']} | {row['tokens']} | "
                     f"{row['nats_per_token']:.3f} | {row['seconds']:.1f} | {row['masked_rows_per_second']:.0f} | "
                     f"{row['relative_stderr']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fit-steps", type=int, default=800)
    parser.add_argument("--mlm-passes", default="16,64")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine()},
        "error_vs_budget": error_vs_budget(args.sequences, args.repeats),
        "ppca_fits": ppca_fits(args.fit_steps),
        "targeted_exactness": targeted_exactness(),
        "mlm_scoring": mlm_scoring_time([int(p) for p in args.mlm_passes.split(",")]),
    }
    print(markdown(results))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
