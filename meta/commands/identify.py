"""``maskpolicy-identify``: which masked-prediction tasks identify an HMM's parameters.

Reads straight through: compose config → build each model family (``identify.models``) at every
seed of ``identify.seeds`` and each task (``identify.tasks``: masking patterns, visible →
predicted) → for every model × task × predictor start (``identify.starts``: ``stationary``, the
paper's class, and ``free``, the ablation), train ``identify.restarts`` randomly started predictors
with the optimal predictor's parametric form (:mod:`maskpolicy.tasks.tractable.masked_hmm`) on
the exact population or on samples, read their parameters off, match states to the truth
(Hungarian) and judge: a task identifies the model when every restart that reaches the optimal
loss recovers the true parameters (:mod:`maskpolicy.meta.identifiability`) → per family × task ×
start, how many models give each verdict → ``results.json``, ``summary.md`` (the table) and ``recovery.png``.
"""

from __future__ import annotations

import inspect
import logging
import sys
import time
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from maskpolicy.meta.config import ConfigError, build, modern_overrides, plain
from maskpolicy.meta.cores import process_count
from maskpolicy.meta.identifiability.cell import Settings, measure_cells, summarise
from maskpolicy.meta.identifiability.claims import SEARCHED, STARTS, STATIONARY
from maskpolicy.meta.identifiability.plots import recovery_figure
from maskpolicy.meta.identifiability.recovery import IDENTIFIED
from maskpolicy.meta.identifiability.table import summary_table
from maskpolicy.meta.results.files import write_png, write_text
from maskpolicy.meta.results.schema import IdentifyResults, Named, save
from maskpolicy.tasks.tractable.hmm_models import HMM
from maskpolicy.tasks.tractable.masked_hmm import MaskedPredictionTask

log = logging.getLogger(__name__)
FIGURE = "recovery.png"
TABLE = "summary.md"
SETTINGS = ("data", "n_samples", "restarts", "adam_steps", "lr", "lbfgs_iterations", "loss_tolerance",
            "recovery_tolerance", "heldout_rows")


def run_identify(cfg: DictConfig, output_dir: Path) -> IdentifyResults:
    """The whole job; writes and returns its results."""
    started = time.perf_counter()
    options = cfg.identify
    _check_options(options)
    model_nodes = _selected(options.models, options.only_models, "models")
    models = {(name, seed): model for name, node in model_nodes.items()
              for seed, model in _build_models(node, name, list(options.seeds), options.starts).items()}
    tasks = {name: _check_length(build(node, f"identify task {name}", name=name), name, options.length)
             for name, node in _selected(options.tasks, options.only_tasks, "tasks").items()}
    settings = Settings(**{key: options[key] for key in SETTINGS}, seed=cfg.seed)
    jobs = [(name, model, task, start, seed) for start in options.starts
            for (name, seed), model in models.items() for task in tasks.values()]
    processes = process_count(options.workers, "identify.workers")
    cells = measure_cells(jobs, settings, processes)
    results = IdentifyResults(
        models={name: Named(name, plain(node)) for name, node in model_nodes.items()},
        conditions={_key(name, seed): model.conditions() for (name, seed), model in models.items()},
        tasks={name: task.label for name, task in tasks.items()}, data=options.data, restarts=options.restarts,
        loss_tolerance=options.loss_tolerance, recovery_tolerance=options.recovery_tolerance,
        training={**{key: options[key] for key in ("adam_steps", "lr", "lbfgs_iterations", "n_samples")},
                  "processes": min(processes, len(jobs))},
        cells=cells, seed=cfg.seed, wall_seconds=round(time.perf_counter() - started, 2),
        seeds=list(options.seeds), starts=list(options.starts), length=options.length,
        heldout_rows=options.heldout_rows, summary=summarise(cells), paper_search=SEARCHED)
    save(output_dir, results)
    write_text(output_dir / TABLE, summary_table([results]))
    if options.plot:
        write_png(output_dir / FIGURE, recovery_figure(results))
    return results


def _key(name: str, seed: int | None) -> str:
    return name if seed is None else f"{name}:{seed}"


def _check_options(options: DictConfig) -> None:
    """Counts and tolerances in range, a non-empty seed list, known predictor starts."""
    for key, low in (("restarts", 1), ("adam_steps", 0), ("lbfgs_iterations", 0), ("heldout_rows", 0),
                     ("length", 1)):
        if not isinstance(options[key], int) or isinstance(options[key], bool) or options[key] < low:
            raise ConfigError(f"identify.{key} must be an integer ≥ {low}, got {options[key]!r}")
    for key, positive in (("lr", True), ("loss_tolerance", False), ("recovery_tolerance", True)):
        value = options[key]
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0 or (positive and value == 0):
            raise ConfigError(f"identify.{key} must be a number {'> 0' if positive else '≥ 0'}, got {value!r}")
    seeds = options.seeds
    if seeds is None or isinstance(seeds, str | int) or len(seeds) == 0:
        raise ConfigError(f"identify.seeds must be a non-empty list of model seeds, e.g. [0, 1, 2]; got "
                          f"{plain(seeds)!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"identify.seeds repeats a seed: {list(seeds)}")
    starts = options.starts
    if starts is None or isinstance(starts, str) or len(starts) == 0 or any(s not in STARTS for s in starts):
        raise ConfigError(f"identify.starts must be a non-empty list of {' and '.join(STARTS)} (the predictor's "
                          f"initial distribution: tied to its transition's stationary one, or free); got "
                          f"{plain(starts)!r}")


def _selected(nodes: DictConfig, names: list[str] | None, what: str) -> dict[str, DictConfig]:
    """The config entries named in ``identify.only_<what>`` (all of them when it is null)."""
    chosen = list(nodes) if names is None else list(names)
    unknown = [name for name in chosen if name not in nodes]
    if unknown or not chosen:
        raise ConfigError(f"identify.only_{what} names unknown {what[:-1]}(s) {unknown}; known: {', '.join(nodes)}"
                          if unknown else f"identify.{what} needs at least one entry")
    return {name: nodes[name] for name in chosen}


def _build_models(node: DictConfig, name: str, seeds: list[int], starts: list[str]) -> dict[int | None, HMM]:
    """A family's model at every seed (once, seed None, when its config takes no seed: explicit matrices).

    Warnings (conditions the paper assumes but the model breaks) are logged under the model's name;
    a model whose chain does not start stationary cannot be matched by a stationary predictor: refused.
    """
    built = {}
    for seed in seeds if _takes_seed(node) else [None]:
        label = _key(name, seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = build(node, f"identify model {label}", **({} if seed is None else {"seed": seed}))
        for warning in caught:
            log.warning("model %s: %s", label, warning.message)
        if STATIONARY in starts and not model.stationary_start:
            raise ConfigError(f"identify model {label}: its initial distribution is not the stationary distribution "
                              "of its transition, so no predictor of the paper's class (identify.starts includes "
                              "stationary) can be the truth; drop its initial (it then starts stationary) or use "
                              "identify.starts=[free]")
        built[seed] = model
    return built


def _takes_seed(node: DictConfig) -> bool:
    """Whether a model config's ``_target_`` draws its model from a ``seed`` (the random families do)."""
    try:
        target = hydra.utils.get_object(node["_target_"])
    except (ImportError, AttributeError, KeyError, ValueError) as error:
        raise ConfigError(f"identify model target {node.get('_target_')!r} cannot be imported: {error}") from error
    return "seed" in inspect.signature(target).parameters


def _check_length(task: MaskedPredictionTask, name: str, length: int) -> MaskedPredictionTask:
    if task.length > length:
        raise ConfigError(f"identify task {name} ({task.label}) uses position x{task.length}, but the sequences have "
                          f"identify.length={length} positions; raise identify.length or drop the task")
    return task


@hydra.main(version_base="1.3", config_path="pkg://maskpolicy.conf", config_name="identify")
def identify(cfg: DictConfig) -> int:
    results = run_identify(cfg, Path(HydraConfig.get().runtime.output_dir))
    return sum(cell.verdict == IDENTIFIED for cell in results.cells)


def main() -> None:
    sys.argv[1:] = modern_overrides(sys.argv[1:])
    identify()


if __name__ == "__main__":
    main()
