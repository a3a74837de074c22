"""One search trial: a policy configuration in, a pre-training run's ``results.json`` out.

A trial is the same job as ``maskpolicy-pretrain`` — build the policy, pre-train, score
the marginal likelihood on held-out text, fine-tune (epoch chosen on dev), test — with
the policy and budget the sampler chose. A ``learned`` trial first trains its policy
(``maskpolicy-meta``'s code, options under the run config's ``meta``: supervised or
meta-learned) and then pre-trains with the saved artifact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from maskpolicy.policies import LearnedPolicy

from ..learn import run_meta
from ..pretrain import run_pretrain


class TrialFailed(RuntimeError):
    """A trial ran but produced no usable metric (e.g. a NaN loss)."""


def trial_config(cfg: DictConfig, policy: Mapping[str, Any], overrides: Mapping[str, Any], seed: int) -> DictConfig:
    """The run's config with this trial's policy node, seed and dotted budget overrides applied."""
    trial = OmegaConf.masked_copy(cfg, [key for key in cfg if key not in ("policy", "search", "hydra")])
    trial.policy = OmegaConf.create(dict(policy))
    trial.seed = seed
    for key, value in overrides.items():
        OmegaConf.update(trial, key, value, force_add=False)
    return trial


def needs_training(policy: Mapping[str, Any]) -> bool:
    """Whether the policy config builds a learned policy (any import path to it), which a trial trains first."""
    target = policy.get("_target_")
    if not isinstance(target, str):
        return False
    try:
        factory = hydra.utils.get_object(target)
    except ImportError:  # an unimportable target fails later, when the policy is built, with the usual message
        return False
    return isinstance(factory, type) and issubclass(factory, LearnedPolicy)


def learn_policy(cfg: DictConfig, output_dir: Path, task_name: str) -> Path:
    """Trains the run's learned policy as ``maskpolicy-meta`` would (options in ``cfg.meta``); returns its artifact."""
    policy = OmegaConf.merge({"seed": cfg.seed}, cfg.policy)
    meta_cfg = OmegaConf.create({"task": cfg.task, "model": cfg.model, "seed": cfg.seed, "policy": policy,
                                 "meta": cfg.meta})
    run_meta(meta_cfg, output_dir, task_name)
    return output_dir / "policy"


def run_trial(
    cfg: DictConfig,
    family: str,
    policy: Mapping[str, Any],
    overrides: Mapping[str, Any],
    output_dir: Path,
    seed: int,
    task_name: str,
    model_name: str,
    callbacks: Sequence[pl.Callback] = (),
) -> dict[str, Any]:
    """Runs one configuration end to end; returns its ``results.json`` contents."""
    run_cfg = trial_config(cfg, policy, overrides, seed)
    if needs_training(policy):
        artifact = learn_policy(run_cfg, output_dir / "learning", task_name)
        run_cfg.policy = OmegaConf.create({"_target_": "maskpolicy.meta.artifacts.load_policy", "path": str(artifact)})
    results = run_pretrain(run_cfg, output_dir, family, task_name, model_name, finetune_callbacks=callbacks)
    loss = results["pretrain"].get("final_loss")
    if loss is not None and not math.isfinite(loss):
        raise TrialFailed(f"pre-training loss became {loss}; the trial's policy or learning rate diverged")
    return results
