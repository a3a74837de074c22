"""``maskpolicy-score``: the cumulative marginal-likelihood estimate of a model on data.

Tractable tasks (``task=ppca``, ``task=hmm``) are scored with their exact conditionals
and compared with their exact log-likelihood; text tasks score a masked LM saved by
``maskpolicy-pretrain`` (``score.checkpoint=<run>/pretrained``) on the task's held-out text.
Writes ``results.json``, ``per_rate.png`` and, with ``task.save_data=true``, ``data.npz``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from transformers import AutoModelForMaskedLM, AutoTokenizer

from maskpolicy.tasks.base import TractableTask

from .io import plain, versions, write_json_atomic, write_npz_atomic
from .mll import FixedRate, MLLEstimate, build_estimator, estimate_mll
from .plots import plot_rate_curve
from .pretrain import ConfigError, build
from .scoring import heldout_documents, score_text

log = logging.getLogger(__name__)


def run_score(cfg: DictConfig, output_dir: Path, task_name: str) -> dict[str, Any]:
    """The whole job; returns and writes ``results.json``."""
    started = time.perf_counter()
    options = cfg.score
    build_estimator(options.estimator, options.passes, options.rate)  # bad names fail before any work
    task = build(cfg.task, "task")
    if isinstance(task, TractableTask):
        results, exact = _score_tractable(cfg, task, output_dir)
    else:
        results, exact = _score_text(cfg, task), None
    results.update(task={"name": task_name, "params": plain(cfg.task)}, seed=cfg.seed,
                   wall_seconds=round(time.perf_counter() - started, 2), versions=versions())
    write_json_atomic(output_dir / "results.json", results)
    if options.plot:
        curve = results["per_rate"]
        plot_rate_curve(output_dir / "per_rate.png", curve["rate"], curve["S"],
                        f"{task_name}: S_m, {results['estimator']} estimator", exact,
                        results["nats_per_token"], results["fixed_rates"])
    return results


def _score_tractable(cfg: DictConfig, task: TractableTask, output_dir: Path) -> tuple[dict, float]:
    data = task.data()
    estimate = _estimate(cfg, task.masked_log_probs, data, None, cfg.score.estimator)
    exact = task.log_likelihood(data)
    reduce = exact.sum() if cfg.score.reduction == "sum" else exact.mean()
    results = estimate.summary(cfg.score.reduction)
    results["exact_lml"] = float(reduce)
    results["exact_nats_per_token"] = float(exact.sum()) / estimate.tokens
    results["relative_error"] = abs(results["estimate"] - results["exact_lml"]) / abs(results["exact_lml"])
    results["fixed_rates"] = _fixed_rates(cfg, task.masked_log_probs, data, None, float(exact.sum()))
    if getattr(task, "save_data", False):
        write_npz_atomic(output_dir / "data.npz", task.arrays())
        results["data_file"] = "data.npz"
    log.info("%s: estimate %.4f ± %.4f, exact %.4f (%s, %d passes)", task.name, results["estimate"],
             results["stderr"] or 0.0, results["exact_lml"], results["reduction"], results["forward_passes"])
    return results, results["exact_nats_per_token"]


def _score_text(cfg: DictConfig, task) -> dict:
    checkpoint = cfg.score.checkpoint
    if not checkpoint:
        raise ConfigError(
            f"scoring text task {task.name!r} needs a masked LM: set score.checkpoint=<run dir>/pretrained "
            "(written by maskpolicy-pretrain) or a Hugging Face model name"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        model = AutoModelForMaskedLM.from_pretrained(checkpoint)
    except (OSError, ValueError) as error:
        raise ConfigError(f"could not load a masked LM and tokenizer from score.checkpoint={checkpoint!r}: {error}"
                          ) from error
    documents = heldout_documents(task)
    options = cfg.score
    score = lambda estimator, rate=options.rate: score_text(  # noqa: E731
        model, tokenizer, documents, options.max_length, estimator, options.passes, rate, options.max_sequences,
        options.batch_size, cfg.seed)
    results = score(options.estimator).summary(options.reduction)
    results["checkpoint"] = str(checkpoint)
    results["fixed_rates"] = [_fixed_point(score("fixed_rate", rate), rate, options.reduction)
                              for rate in options.fixed_rates]
    log.info("%s: %.4f nats/token over %d held-out rows (%s, %d passes)", task.name, results["nats_per_token"],
             results["sequences"], results["estimator"], results["forward_passes"])
    return results


def _estimate(cfg: DictConfig, predictor, data, scored, estimator: str, rate: float | None = None) -> MLLEstimate:
    options = cfg.score
    return estimate_mll(predictor, data, scored, estimator, options.passes, options.rate if rate is None else rate,
                        torch.Generator().manual_seed(cfg.seed), options.batch_size)


def _fixed_rates(cfg: DictConfig, predictor, data, scored, exact_total: float) -> list[dict]:
    dim = data.shape[1]
    return [_fixed_point(_estimate(cfg, predictor, data, scored, "fixed_rate", rate), rate, cfg.score.reduction,
                         exact_total, FixedRate(rate).masked_count(dim) / dim) for rate in cfg.score.fixed_rates]


def _fixed_point(estimate: MLLEstimate, rate: float, reduction: str, exact_total: float | None = None,
                 rate_used: float | None = None) -> dict:
    """One fixed-rate estimate D·S_m; with the exact total, its bias D·S_m − log p(x) (a total, nats).

    ``rate_used`` is m/D after rounding m, when every sequence has the same D.
    """
    summary = estimate.summary(reduction)
    point = {"rate": rate, "rate_used": rate if rate_used is None else rate_used,
             "estimate": summary["estimate"], "stderr": summary["stderr"],
             "nats_per_token": summary["nats_per_token"], "forward_passes": summary["forward_passes"]}
    if exact_total is not None:
        point["bias_total"] = estimate.total - exact_total
    return point


@hydra.main(version_base="1.3", config_path="pkg://maskpolicy.conf", config_name="score")
def main(cfg: DictConfig) -> float:
    runtime = HydraConfig.get().runtime
    return run_score(cfg, Path(runtime.output_dir), runtime.choices.get("task", "custom"))["estimate"]


if __name__ == "__main__":
    main()
