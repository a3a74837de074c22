"""``maskpolicy-meta``: train a learned masking policy and save it as an artifact.

Reads straight through: compose config → build task, tokenizer and the policy →
train it (``meta.method=supervised``: predict answer spans; ``meta.method=meta``:
meta-learn through differentiable inner updates of the language model) → judge its
masks against held-out answer spans next to ``entity`` and ``random`` → write
``results.json`` and ``policy/`` (use it with ``policy=artifact policy.path=…/policy``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from maskpolicy.policies import LearnedPolicy, PolicyError
from maskpolicy.tasks.base import Task, TaskError

from .artifacts import save_policy
from .io import plain, versions, write_json_atomic
from .pretrain import ConfigError, build
from .supervised import compare_with_heuristics, encode_answers, feature_spec, train_supervised

log = logging.getLogger(__name__)
METHODS = ("supervised", "meta")


def run_meta(cfg: DictConfig, output_dir: Path, task_name: str) -> dict[str, Any]:
    """The whole job; returns and writes ``results.json`` and the ``policy/`` artifact."""
    started = time.perf_counter()
    method = cfg.meta.method
    if method not in METHODS:
        raise ConfigError(f"meta.method must be one of {', '.join(METHODS)}, got {method!r}")
    task, spec = build(cfg.task, "task"), build(cfg.model, "model")
    if not isinstance(task, Task):
        raise TaskError(f"task {task_name!r} has no text and QA to learn a masking policy from")
    policy = build(cfg.policy, "policy")
    if not isinstance(policy, LearnedPolicy):
        raise PolicyError(f"maskpolicy-meta trains a LearnedPolicy; policy._target_ built a {type(policy).__name__}")
    tokenizer = spec.build_tokenizer(document.text for document in task.corpus())
    features = feature_spec(task, policy.features)
    evaluation_rows = encode_answers(task, cfg.meta.eval_split, tokenizer, spec.max_length, features)
    if method == "supervised":
        training_rows = encode_answers(task, cfg.meta.train_split, tokenizer, spec.max_length, features)
        history = {"loss": train_supervised(policy, training_rows, tokenizer.pad_token_id, seed=cfg.seed,
                                            **cfg.meta.supervised)}
    else:
        from .metalearn import train_meta  # the meta-learning engines pull in higher / torch.func

        history = train_meta(cfg, task, spec, tokenizer, policy, features)
    evaluation = compare_with_heuristics(policy, evaluation_rows, tokenizer.pad_token_id, seed=cfg.seed)
    training = {"method": method, "task": {"name": task_name, "params": plain(cfg.task)},
                "train_split": cfg.meta.train_split, "metrics": {cfg.meta.eval_split: evaluation}, "seed": cfg.seed}
    save_policy(policy, output_dir / "policy", training)
    results = {
        "method": method,
        "task": training["task"],
        "policy": {"params": plain(cfg.policy), "artifact": "policy"},
        "evaluation": {"split": cfg.meta.eval_split, **evaluation},
        "history": history,
        "seed": cfg.seed,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "versions": versions(),
    }
    write_json_atomic(output_dir / "results.json", results)
    return results


@hydra.main(version_base="1.3", config_path="pkg://maskpolicy.conf", config_name="meta")
def main(cfg: DictConfig) -> float:
    runtime = HydraConfig.get().runtime
    results = run_meta(cfg, Path(runtime.output_dir), runtime.choices.get("task", "custom"))
    learned, entity = results["evaluation"]["learned"], results["evaluation"]["entity"]
    log.info("%s policy on %s: masked-token precision %.3f / recall %.3f (entity %.3f / %.3f); saved to %s",
             results["method"], results["task"]["name"], learned["precision"], learned["recall"],
             entity["precision"], entity["recall"], Path(runtime.output_dir) / "policy")
    return learned["recall"]


if __name__ == "__main__":
    main()
