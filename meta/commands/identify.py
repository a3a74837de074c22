"""``maskpolicy-identify``: which masked-prediction tasks identify an HMM's parameters.

Reads straight through: compose config → build each model (``identify.models``) and task
(``identify.tasks``: masking patterns, visible → predicted) → for every model × task, train
``identify.restarts`` randomly started predictors with the optimal predictor's parametric form
(:mod:`maskpolicy.tasks.tractable.masked_hmm`) on the exact population or on samples, read their
parameters off, match states to the truth (Hungarian) and judge: a task identifies the model
when every restart that reaches the optimal loss recovers the true parameters
(:mod:`maskpolicy.meta.identifiability`) → ``results.json`` and ``recovery.png``.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from maskpolicy.meta.config import ConfigError, build, modern_overrides, plain
from maskpolicy.meta.identifiability.cell import Settings, measure_cell
from maskpolicy.meta.identifiability.plots import recovery_figure
from maskpolicy.meta.identifiability.recovery import IDENTIFIED
from maskpolicy.meta.results.files import write_png
from maskpolicy.meta.results.schema import IdentifyResults, Named, save
from maskpolicy.tasks.tractable.hmm_models import HMM

log = logging.getLogger(__name__)
FIGURE = "recovery.png"
SETTINGS = ("data", "n_samples", "restarts", "adam_steps", "lr", "lbfgs_steps", "stationary_start", "loss_tolerance",
            "recovery_tolerance")


def run_identify(cfg: DictConfig, output_dir: Path) -> IdentifyResults:
    """The whole job; writes and returns its results."""
    started = time.perf_counter()
    options = cfg.identify
    _check_options(options)
    model_nodes = _selected(options.models, options.only_models, "models")
    models = {name: _build_model(node, name) for name, node in model_nodes.items()}
    tasks = {name: build(node, f"identify task {name}", name=name)
             for name, node in _selected(options.tasks, options.only_tasks, "tasks").items()}
    settings = Settings(**{key: options[key] for key in SETTINGS}, seed=cfg.seed)
    cells = [measure_cell(model_name, model, task, settings) for model_name, model in models.items()
             for task in tasks.values()]
    results = IdentifyResults(
        models={name: Named(name, plain(node)) for name, node in model_nodes.items()},
        conditions={name: model.conditions() for name, model in models.items()},
        tasks={name: task.label for name, task in tasks.items()}, data=options.data, restarts=options.restarts,
        loss_tolerance=options.loss_tolerance, recovery_tolerance=options.recovery_tolerance,
        training={key: options[key] for key in ("adam_steps", "lr", "lbfgs_steps", "n_samples", "stationary_start")},
        cells=cells, seed=cfg.seed, wall_seconds=round(time.perf_counter() - started, 2))
    save(output_dir, results)
    if options.plot:
        write_png(output_dir / FIGURE, recovery_figure(results))
    return results


def _check_options(options: DictConfig) -> None:
    """Numbers that must be non-negative (steps, tolerances) or positive (restarts, the recovery tolerance)."""
    for key, low in (("restarts", 1), ("adam_steps", 0), ("lbfgs_steps", 0)):
        if not isinstance(options[key], int) or isinstance(options[key], bool) or options[key] < low:
            raise ConfigError(f"identify.{key} must be an integer ≥ {low}, got {options[key]!r}")
    for key, positive in (("lr", True), ("loss_tolerance", False), ("recovery_tolerance", True)):
        value = options[key]
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0 or (positive and value == 0):
            raise ConfigError(f"identify.{key} must be a number {'> 0' if positive else '≥ 0'}, got {value!r}")


def _selected(nodes: DictConfig, names: list[str] | None, what: str) -> dict[str, DictConfig]:
    """The config entries named in ``identify.only_<what>`` (all of them when it is null)."""
    chosen = list(nodes) if names is None else list(names)
    unknown = [name for name in chosen if name not in nodes]
    if unknown or not chosen:
        raise ConfigError(f"identify.only_{what} names unknown {what[:-1]}(s) {unknown}; known: {', '.join(nodes)}"
                          if unknown else f"identify.{what} needs at least one entry")
    return {name: nodes[name] for name in chosen}


def _build_model(node: DictConfig, name: str) -> HMM:
    """A model, its warnings (conditions the paper assumes but the model breaks) logged under its name."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build(node, f"identify model {name}")
    for warning in caught:
        log.warning("model %s: %s", name, warning.message)
    return model


@hydra.main(version_base="1.3", config_path="pkg://maskpolicy.conf", config_name="identify")
def identify(cfg: DictConfig) -> int:
    results = run_identify(cfg, Path(HydraConfig.get().runtime.output_dir))
    return sum(cell.verdict == IDENTIFIED for cell in results.cells)


def main() -> None:
    sys.argv[1:] = modern_overrides(sys.argv[1:])
    identify()


if __name__ == "__main__":
    main()
