"""The final evaluation: the best configuration of each family re-run with fresh seeds, scored on test.

Validation numbers picked the configurations; the final re-runs use seeds the search never
ran (:func:`~maskpolicy.meta.search.study.final_seeds`) and are the only runs that touch the
test split. A re-run whose ``results.json`` exists is read back, not run again (resume).
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
from omegaconf import DictConfig, OmegaConf

from maskpolicy.meta.config import build_policy
from maskpolicy.meta.console import run_log
from maskpolicy.meta.cores import share_cores
from maskpolicy.meta.learning.artifacts import read_card, save_policy
from maskpolicy.meta.learning.policy_state import policy_parts
from maskpolicy.meta.pipeline import RunNames
from maskpolicy.meta.results import schema
from maskpolicy.meta.results.files import write_text
from maskpolicy.meta.results.schema import PretrainResults
from maskpolicy.meta.search.progress import FinalProgress
from maskpolicy.meta.search.study import Search, best_per_family
from maskpolicy.meta.search.trial import ARTIFACT_LOADER, run_configuration
from maskpolicy.policies import FitsCorpus

log = logging.getLogger(__name__)


@dataclass
class FinalConfiguration:
    """One leaderboard entry: a configuration and its final runs (one per seed, with their directories)."""

    label: str
    family: str
    source: str  # "search" or "transfer"
    trial: int | None
    params: dict[str, Any]
    policy: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)
    runs: list[PretrainResults] = field(default_factory=list)
    directories: list[Path] = field(default_factory=list)


def transfer_policy(cfg: DictConfig) -> dict | None:
    """The policy node of ``search.transfer_from`` (its card checked now, before any training)."""
    if not cfg.search.transfer_from:
        return None
    path = Path(cfg.search.transfer_from).expanduser().resolve()
    read_card(path)
    return {"_target_": ARTIFACT_LOADER, "path": str(path)}


def configurations(cfg: DictConfig, search: Search) -> list[FinalConfiguration]:
    """The best completed trial of each family, and the transferred policy if any."""
    chosen = [FinalConfiguration(family, family, "search", trial.number,
                                 {k: v for k, v in trial.params.items() if k != "family"},
                                 trial.user_attrs["policy"], trial.user_attrs["overrides"])
              for family, trial in best_per_family(search.study, search.objectives[0]).items()]
    transfer = transfer_policy(cfg)
    if transfer is not None:
        chosen.append(FinalConfiguration("transfer", "transfer", "transfer", None, {"path": transfer["path"]},
                                         transfer))
    return chosen


def run_finals(cfg: DictConfig, search: Search, output_dir: Path, names: RunNames,
               processes: int = 1) -> list[FinalConfiguration]:
    """Every configuration re-run with every final seed (finished ones read back), ``processes`` at a time, with a
    line for each as it ends.

    Each run is seeded on its own, so running them side by side changes only thread counts (and with them
    float rounding), not what is run.
    """
    chosen = configurations(cfg, search)
    jobs = [(configuration, seed, output_dir / "final" / configuration.label / f"seed-{seed}")
            for configuration in chosen for seed in search.final_seeds]
    results = {directory: schema.load(directory, PretrainResults) for _, _, directory in jobs
               if (directory / schema.RESULTS_FILE).exists()}
    pending = [job for job in jobs if job[2] not in results]
    progress = FinalProgress(len(jobs), done=len(results))
    if processes > 1 and len(pending) > 1:
        # the config goes resolved: a spawned process has none of Hydra's resolvers
        resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        with ProcessPoolExecutor(min(processes, len(pending)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=share_cores, initargs=(processes,)) as pool:
            futures = {pool.submit(_run, resolved, *job, names): job for job in pending}
            for future in as_completed(futures):
                configuration, seed, directory = futures[future]
                results[directory] = future.result()  # re-raises a run's error here
                progress(configuration.label, seed, results[directory])
    else:
        for configuration, seed, directory in pending:
            results[directory] = _run(cfg, configuration, seed, directory, names)
            progress(configuration.label, seed, results[directory])
    for configuration, _, directory in jobs:
        configuration.runs.append(results[directory])
        configuration.directories.append(directory)
    return chosen


def _run(cfg: DictConfig, configuration: FinalConfiguration, seed: int, directory: Path,
         names: RunNames) -> PretrainResults:
    log.info("final run: %s, seed %d", configuration.label, seed)
    # the pre-training probe serves pruning, which final re-runs never do
    overrides = {**configuration.overrides, "pretrain.probe.every": 0}
    with run_log(directory / "run.log"):
        return run_configuration(cfg, configuration.policy, overrides, seed, directory,
                                 RunNames(configuration.family, names.task, names.model), test=True)


def save_best_policy(best: FinalConfiguration, output_dir: Path) -> Path:
    """The winner, ready to use whatever its family: ``best_policy/``, a policy folder
    (``maskpolicy.load_policy``, ``MaskingCollator.from_pretrained``), and ``best_policy.yaml``, its config node
    (a learned winner's points at ``best_policy/``), for readers of the earlier layout.

    A pmi / informative winner keeps the corpus tables its first final run was fitted with (read from the tables
    cache that run recorded) and the tokenizer they belong to (the run's ``pretrained/``); without them its
    folder holds the parameters only, and ``collator.fit(texts)`` builds the tables on your corpus.
    """
    run, directory, folder = best.runs[0], best.directories[0], output_dir / "best_policy"
    node = dict(run.policy.params)
    policy, _ = build_policy(node, "best policy")
    fitted = _load_run_tables(policy, run.pretrain.tables)
    tokenizer = _run_tokenizer(directory) if fitted else None
    schedule = node.get("schedule")
    kind = schedule.get("kind") if isinstance(schedule, dict) else schedule
    save_policy(policy, folder, tokenizer=tokenizer, schedule=schedule if kind not in (None, "constant") else None)
    if node.get("_target_") == ARTIFACT_LOADER:
        node = {"_target_": ARTIFACT_LOADER, "path": str(folder.resolve()),
                **({"schedule": schedule} if schedule is not None else {})}
    write_text(output_dir / "best_policy.yaml", OmegaConf.to_yaml(OmegaConf.create(node)))
    return folder


def _load_run_tables(policy: Any, records: Sequence[dict[str, Any]]) -> bool:
    """Loads the corpus tables a run's policy parts were fitted with from the cache files its results name;
    whether every part that needs tables got them (True for a policy that needs none)."""
    parts = [part for part in policy_parts(policy) if isinstance(part, FitsCorpus)]
    if not parts:
        return True
    paths = [record.get("path") for record in records]
    if len(paths) != len(parts) or not all(path and Path(path).is_file() for path in paths):
        log.warning("best policy: the corpus tables of its run are not in the tables cache; best_policy/ holds the "
                    "policy's parameters only (collator.fit(texts) builds them on a corpus)")
        return False
    for part, path in zip(parts, paths, strict=True):
        part.load_tables(safetensors.torch.load_file(path))
    return True


def _run_tokenizer(directory: Path) -> Any:
    """The tokenizer a run saved with its pre-trained model, or None."""
    pretrained = directory / "pretrained"
    if not (pretrained / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(pretrained))


def rate_curves(chosen: Sequence[FinalConfiguration]) -> dict[str, dict[str, Any]]:
    """label → the S_m curve of its first final run, for the report."""
    return {configuration.label: {"family": configuration.family, "rate": run.mll.per_rate.rate,
                                  "S": run.mll.per_rate.S}
            for configuration in chosen if configuration.runs and (run := configuration.runs[0]).mll}
