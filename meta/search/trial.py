"""One configuration end to end: a policy config in, a pre-training run's typed results out.

The same steps as ``maskpolicy-pretrain`` (:mod:`maskpolicy.meta.pipeline`) with the policy,
seed and run-config overrides the sampler (or the final evaluation) chose. A ``learned``
policy is first trained with ``maskpolicy-learn``'s job (:func:`~maskpolicy.meta.learning.train.learn_policy`,
options under the run config's ``learning``) and then pre-trains as the saved artifact.
Search trials never touch the test split; the final re-runs do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from maskpolicy.meta.learning.train import learn_policy
from maskpolicy.meta.pipeline import NO_CALLBACKS, RunNames, StageCallbacks, run_pretraining
from maskpolicy.meta.results import schema
from maskpolicy.meta.results.schema import PretrainResults
from maskpolicy.policies import LearnedPolicy

ARTIFACT_LOADER = "maskpolicy.meta.learning.artifacts.load_policy"
RUN_KEYS_FOR_LEARNING = ["task", "model", "policy", "learning", "seed"]


class TrialFailed(RuntimeError):
    """A trial ran but produced no usable metric (e.g. a NaN loss)."""


def trial_config(cfg: DictConfig, policy: Mapping[str, Any], overrides: Mapping[str, Any], seed: int) -> DictConfig:
    """The run's config with this configuration's policy node, seed and dotted run-config overrides applied."""
    trial = OmegaConf.masked_copy(cfg, [key for key in cfg if key not in ("policy", "search", "hydra")])
    trial.policy = OmegaConf.create(dict(policy))
    trial.seed = seed
    for key, value in overrides.items():
        OmegaConf.update(trial, key, value, force_add=False)
    return trial


def needs_training(policy: Mapping[str, Any]) -> bool:
    """Whether the policy config builds a learned policy (any import path to it), which is trained first."""
    target = policy.get("_target_")
    if not isinstance(target, str):
        return False
    try:
        factory = hydra.utils.get_object(target)
    except ImportError:  # an unimportable target fails later, when the policy is built, with the usual message
        return False
    return isinstance(factory, type) and issubclass(factory, LearnedPolicy)


def run_configuration(
    cfg: DictConfig,
    policy: Mapping[str, Any],
    overrides: Mapping[str, Any],
    seed: int,
    output_dir: Path,
    names: RunNames,
    *,
    test: bool,
    callbacks: StageCallbacks = NO_CALLBACKS,
) -> PretrainResults:
    """Runs one configuration and writes its ``results.json``; ``test`` scores the test split (final re-runs only)."""
    run_cfg = trial_config(cfg, policy, overrides, seed)
    if needs_training(policy):
        learning_dir = output_dir / "learning"
        schema.save(learning_dir, learn_policy(OmegaConf.masked_copy(run_cfg, RUN_KEYS_FOR_LEARNING), learning_dir,
                                               names.task))
        run_cfg.policy = OmegaConf.create({"_target_": ARTIFACT_LOADER, "path": str(learning_dir / "policy"),
                                           **({"schedule": policy["schedule"]} if "schedule" in policy else {})})
    results = run_pretraining(run_cfg, output_dir, names, test=test, callbacks=callbacks)
    loss = results.pretrain.final_loss
    if loss is not None and not math.isfinite(loss):
        raise TrialFailed(f"pre-training loss became {loss}; the trial's policy or learning rate diverged")
    schema.save(output_dir, results)
    return results
