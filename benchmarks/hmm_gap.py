"""How close a tiny masked LM's cumulative-masking estimate gets to an HMM's exact log marginal likelihood.

A seeded HMM (``maskpolicy.tasks.tractable.hmm.HMMTask``) gives training sequences and a
held-out sample from the same chain. A tiny BERT is trained with the cumulative
masking objective (m uniform in 1..T, a uniform subset of m positions masked) and,
after each number of steps in ``--steps``, scored on the held-out sample with
``maskpolicy.meta.scoring.estimate.estimate_mll``: the estimate Σ_m S_m from the model's
conditionals against the exact ``log p(x)`` from the forward algorithm. The table
gives both in nats per token and their gap (estimate − exact); a masked LM's
conditionals need not come from one joint, so the gap can have either sign.

Run: ``OMP_NUM_THREADS=1 python benchmarks/hmm_gap.py [--steps 0,100,300,1000,3000] [--seed 0]``;
``--estimator`` names a config of ``conf/score/estimator/`` (``rates``, ``stratified``, …).
"""

from __future__ import annotations

import argparse
import time

import torch
from hydra import compose, initialize_config_module

from maskpolicy.meta.config import build
from maskpolicy.meta.scoring.estimate import estimate_mll
from maskpolicy.meta.scoring.estimators import MAX_EXHAUSTIVE_LENGTH, Estimator, Exhaustive
from maskpolicy.meta.scoring.predictors import MaskedLMPredictor
from maskpolicy.tasks.tractable.hmm import HMMTask, tiny_masked_lm, train_masked_lm


def masked_lm_gap(
    model,
    task: HMMTask,
    sequences: torch.Tensor | None = None,
    estimator: Estimator | None = None,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(MLM estimate, exact LML, gap) in nats per token on ``sequences`` ``Long[B, T]`` (``task.data()`` if None).

    The model's mask token is the id after the last symbol, as ``tiny_masked_lm`` builds; every
    non-empty mask is scored when no ``estimator`` is given.
    """
    sequences = task.data() if sequences is None else sequences
    predictor = MaskedLMPredictor(model, mask_token_id=task.n_symbols)
    generator = torch.Generator().manual_seed(seed)
    estimate = estimate_mll(predictor, sequences, estimator=estimator or Exhaustive(), generator=generator)
    exact = float(task.log_likelihood(sequences).sum()) / sequences.numel()
    return estimate.nats_per_token, exact, estimate.nats_per_token - exact


def configured_estimator(name: str, passes: int) -> Estimator:
    """The estimator of ``conf/score/estimator/<name>.yaml`` with ``passes`` masks per sequence."""
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose("score", overrides=[f"score/estimator={name}", f"score.passes={passes}"])
    return build(cfg.score.estimator, "score estimator")


def parse_steps(text: str) -> list[int]:
    """``"0,100,300"`` → ``[0, 100, 300]``, sorted and checked non-negative."""
    try:
        steps = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--steps must be comma-separated integers, got {text!r}") from error
    if not steps or steps[0] < 0:
        raise argparse.ArgumentTypeError(f"--steps needs at least one integer ≥ 0, got {text!r}")
    return steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=parse_steps, default=parse_steps("0,100,300,1000,3000"),
                        help="training steps at which to score, comma-separated (cumulative)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the HMM, the model, training and the masks")
    parser.add_argument("--states", type=int, default=3)
    parser.add_argument("--symbols", type=int, default=6)
    parser.add_argument("--length", type=int, default=8)
    parser.add_argument("--train-sequences", type=int, default=2000)
    parser.add_argument("--heldout", type=int, default=200, help="held-out sequences to score")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--estimator", default=None,
                        help="a conf/score/estimator config name; exhaustive when length ≤ 12, else stratified")
    parser.add_argument("--passes", type=int, default=200, help="masks per sequence for sampled estimators")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    task = HMMTask(args.states, args.symbols, args.length, args.train_sequences, seed=args.seed)
    heldout = task.sample(args.heldout, torch.Generator().manual_seed(args.seed + 1))
    name = args.estimator or ("exhaustive" if args.length <= min(12, MAX_EXHAUSTIVE_LENGTH) else "stratified")
    estimator = configured_estimator(name, args.passes)
    model = tiny_masked_lm(args.symbols, args.hidden, args.layers, args.heads, seed=args.seed,
                           max_length=max(args.length, 8))
    generator = torch.Generator().manual_seed(args.seed + 2)

    print(f"HMM K={args.states} V={args.symbols} T={args.length} seed={args.seed}; "
          f"{args.train_sequences} training sequences, {args.heldout} held-out; estimator={estimator}; "
          f"BERT hidden={args.hidden} layers={args.layers} heads={args.heads}, batch {args.batch_size}, lr {args.lr}")
    print()
    print("| training steps | MLM estimate (nats/token) | exact LML (nats/token) | gap (nats/token) | seconds |")
    print("|---:|---:|---:|---:|---:|")
    trained, started = 0, time.perf_counter()
    for steps in args.steps:
        train_masked_lm(model, task.data(), steps - trained, args.batch_size, args.lr, generator)
        trained = steps
        estimate, exact, gap = masked_lm_gap(model, task, heldout, estimator, args.seed)
        print(f"| {steps} | {estimate:.4f} | {exact:.4f} | {gap:+.4f} | {time.perf_counter() - started:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
