"""``maskpolicy-score``: the cumulative marginal-likelihood estimate of a model on data.

Reads straight through: compose config → build the estimator and the task → estimate
(a tractable task with its exact conditionals, against its exact log-likelihood; a text
task with a masked LM saved by ``maskpolicy-pretrain``, ``score.checkpoint=<run>/pretrained``,
on its held-out text) → ``results.json``, ``per_rate.png`` and, with
``task.save_data=true``, ``data.npz``. The estimator is a config group:
``score/estimator=exhaustive``. ``score.target`` picks the tokens scored, the rest staying
visible (:mod:`maskpolicy.meta.scoring.targets`): ``all``; ``entities`` or ``answers`` on
text; ``positions`` with ``score.positions=[1,4,6]`` on a tractable task, against the exact
``log p(x_A | x_rest)``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from transformers import AutoModelForMaskedLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from maskpolicy.meta.config import ConfigError, build, modern_overrides, plain
from maskpolicy.meta.console import quiet_libraries
from maskpolicy.meta.results.files import write_npz, write_png
from maskpolicy.meta.results.schema import FixedRatePoint, Named, RateCurveRecord, ScoreResults, save
from maskpolicy.meta.scoring.estimate import MaskedPredictor, MLLEstimate, estimate_mll
from maskpolicy.meta.scoring.estimators import Estimator, FixedRate
from maskpolicy.meta.scoring.plots import rate_curve_figure
from maskpolicy.meta.scoring.targets import check_target, exact_target_log_likelihood, position_mask
from maskpolicy.meta.scoring.text import score_text, target_documents
from maskpolicy.tasks.base import Task, TractableTask

log = logging.getLogger(__name__)
DATA_FILE = "data.npz"


def run_score(cfg: DictConfig, output_dir: Path, task_name: str) -> ScoreResults:
    """The whole job; writes and returns its results."""
    started = time.perf_counter()
    options = cfg.score
    estimator = build(options.estimator, "score estimator")  # a bad estimator fails before any work
    comparisons = [FixedRate(rate, options.passes) for rate in options.fixed_rates]
    task = build(cfg.task, "task")
    positions = _positions(options.positions)
    check_target(options.target, positions, task_name, tractable=isinstance(task, TractableTask))
    if isinstance(task, TractableTask):
        data = task.data()
        scored = None if positions is None else position_mask(positions, *data.shape[:2])
        measured = score_tractable(cfg, task, data, scored, estimator, comparisons)
        if getattr(task, "save_data", False):
            write_npz(output_dir / DATA_FILE, {**task.arrays(), **target_arrays(options.target, scored, data)})
            measured["data_file"] = DATA_FILE
    else:
        measured = score_masked_lm(cfg, task, estimator, comparisons)
    record = ScoreResults(task=Named(task_name, plain(cfg.task)), seed=cfg.seed,
                          wall_seconds=round(time.perf_counter() - started, 2), **measured)
    save(output_dir, record)
    if options.plot:
        exact_label = "exact log p(x)/D" if record.target == "all" else "exact log p(x_A | x_rest)/|A|"
        figure = rate_curve_figure(record.per_rate, per_rate_title(task_name, record), record.exact_nats_per_token,
                                   record.nats_per_token, record.fixed_rates, exact_label)
        write_png(output_dir / "per_rate.png", figure)
    log.info("%s, target %s: estimate %.4f ± %.4f (%s, %s estimator, %d passes), %.4f nats/token, %d empty rows",
             task_name, _target_label(record), record.estimate, record.stderr or 0.0, record.reduction,
             record.estimator, record.forward_passes, record.nats_per_token, record.empty_sequences)
    return record


def _positions(value: Any) -> list[int] | None:
    """``score.positions`` as a list; a bare number (``score.positions=3``) is one position."""
    if value is None:
        return None
    return [value] if isinstance(value, int) else list(value)


def per_rate_title(task_name: str, record: ScoreResults) -> str:
    """The title of ``per_rate.png``: task, estimator and target."""
    return f"{task_name}: S_m, {record.estimator} estimator, target {_target_label(record)}"


def _target_label(record: ScoreResults) -> str:
    return record.target if record.positions is None else f"{record.target} {record.positions}"


def score_tractable(cfg: DictConfig, task: TractableTask, data: torch.Tensor, scored: torch.Tensor | None,
                    estimator: Estimator, comparisons: Sequence[FixedRate]) -> dict[str, Any]:
    """The estimate and fixed-rate points on ``data``'s ``scored`` positions (all when None), next to the exact value.

    The exact value is ``log p(x_A | x_rest)`` for the scored positions A: ``log p(x)`` when A is everything.
    """
    reduction = cfg.score.reduction
    estimate = _estimate(cfg, task.masked_log_probs, data, scored, estimator)
    exact = exact_target_log_likelihood(task, data, scored)
    exact_lml = float(exact.sum() if reduction == "sum" else exact.mean())
    summary = estimate.summary(reduction)
    dim = int(estimate.lengths.max())
    points = [_fixed_point(_estimate(cfg, task.masked_log_probs, data, scored, fixed), reduction, fixed.rate,
                           fixed.masked_count(dim) / dim, float(exact.sum())) for fixed in comparisons]
    return {**_estimate_fields(summary), "fixed_rates": points, "exact_lml": exact_lml,
            "exact_nats_per_token": float(exact.sum()) / estimate.tokens,
            "relative_error": abs(summary["estimate"] - exact_lml) / abs(exact_lml),
            "positions": None if scored is None else scored[0].nonzero().flatten().tolist()}


def target_arrays(target: str, scored: torch.Tensor | None, data: torch.Tensor) -> dict[str, np.ndarray]:
    """What ``data.npz`` adds so that a recomputation knows the target: its name and the scored positions."""
    positions = np.arange(data.shape[1]) if scored is None else scored[0].nonzero().flatten().numpy()
    return {"target": np.array(target), "scored_positions": positions}


def score_masked_lm(cfg: DictConfig, task: Task, estimator: Estimator,
                    comparisons: Sequence[FixedRate]) -> dict[str, Any]:
    """The estimate and fixed-rate points of ``score.checkpoint`` on the task's text for ``score.target``."""
    options = cfg.score
    documents = target_documents(task, options.target)
    model, tokenizer = load_masked_lm(options.checkpoint, task.name)

    def measure(method: Estimator) -> MLLEstimate:
        return score_text(model, tokenizer, documents, options.max_length, method, options.max_sequences,
                          options.batch_size, cfg.seed, options.target)

    summary = measure(estimator).summary(options.reduction)
    points = [_fixed_point(measure(fixed), options.reduction, fixed.rate, fixed.rate) for fixed in comparisons]
    return {**_estimate_fields(summary), "fixed_rates": points, "checkpoint": str(options.checkpoint)}


def load_masked_lm(checkpoint: str | None, task_name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The masked LM and tokenizer saved at ``checkpoint`` (a run's ``pretrained/`` or a Hugging Face name)."""
    if not checkpoint:
        raise ConfigError(
            f"scoring text task {task_name!r} needs a masked LM: set score.checkpoint=<run dir>/pretrained "
            "(written by maskpolicy-pretrain) or a Hugging Face model name"
        )
    try:
        return AutoModelForMaskedLM.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint)
    except (OSError, ValueError) as error:
        raise ConfigError(f"could not load a masked LM and tokenizer from score.checkpoint={checkpoint!r}: {error}"
                          ) from error


def _estimate(cfg: DictConfig, predictor: MaskedPredictor, data: torch.Tensor, scored: torch.Tensor | None,
              estimator: Estimator) -> MLLEstimate:
    return estimate_mll(predictor, data, scored, estimator, torch.Generator().manual_seed(cfg.seed),
                        cfg.score.batch_size, target=cfg.score.target)


def _estimate_fields(summary: dict[str, Any]) -> dict[str, Any]:
    """An estimate's summary as :class:`ScoreResults` fields (its per-rate curve typed)."""
    return {**summary, "per_rate": RateCurveRecord(**summary["per_rate"])}


def _fixed_point(estimate: MLLEstimate, reduction: str, rate: float, rate_used: float,
                 exact_total: float | None = None) -> FixedRatePoint:
    """One fixed-rate estimate D·S_m; with the exact total, its bias D·S_m − log p(x) (a total, nats).

    ``rate_used`` is m/D after rounding m when every sequence has the same D, else the rate asked for.
    """
    summary = estimate.summary(reduction)
    return FixedRatePoint(rate=rate, rate_used=rate_used,
                          estimate=summary["estimate"], stderr=summary["stderr"],
                          nats_per_token=summary["nats_per_token"], forward_passes=summary["forward_passes"],
                          bias_total=None if exact_total is None else estimate.total - exact_total)


@hydra.main(version_base="1.3", config_path="pkg://maskpolicy.conf", config_name="score")
def score(cfg: DictConfig) -> float:
    quiet_libraries()
    runtime = HydraConfig.get().runtime
    return run_score(cfg, Path(runtime.output_dir), runtime.choices.get("task", "custom")).estimate


def main() -> None:
    # Hydra reads sys.argv itself; earlier releases' spellings are renamed before it does
    sys.argv[1:] = modern_overrides(sys.argv[1:])
    score()


if __name__ == "__main__":
    main()
