"""One learned-policy job, shared by ``maskpolicy-learn`` and the search's ``learned`` trials.

Build the task, model spec and policy → train the policy by ``learning.method`` →
judge its masks against held-out answer spans next to ``entity`` and ``random`` →
save the artifact (``<output_dir>/policy``) → return the typed record. Writing
``results.json`` is the caller's (``results.schema.save``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from maskpolicy.meta.config import ConfigError, build, build_policy, plain
from maskpolicy.meta.context import bind_encoder, resolve_run_model, state_source
from maskpolicy.meta.learning.artifacts import entity_source, save_policy
from maskpolicy.meta.learning.evaluation import compare_with_heuristics
from maskpolicy.meta.learning.meta_learning import MetaLearningOptions, meta_data, train_meta_learning
from maskpolicy.meta.learning.supervised import (
    encode_answers,
    feature_spec,
    questions,
    resolve_loss,
    train_supervised,
)
from maskpolicy.meta.results.schema import Evaluation, LearnedPolicyRecord, LearnResults, Named
from maskpolicy.policies import LearnedPolicy, PolicyError
from maskpolicy.tasks.base import Task, TaskError
from maskpolicy.tasks.text.features import FeatureSpec
from maskpolicy.tasks.training.models import ModelSpec

log = logging.getLogger(__name__)
METHODS = ("supervised", "meta_learning")
DEPRECATED_METHODS = {"meta": "meta_learning"}
ARTIFACT = "policy"


def learning_method(name: str) -> str:
    """``learning.method`` checked, with an earlier spelling accepted (and a warning)."""
    if name in DEPRECATED_METHODS:
        log.warning("learning.method=%s is deprecated; it is now spelt learning.method=%s", name,
                    DEPRECATED_METHODS[name])
        return DEPRECATED_METHODS[name]
    if name not in METHODS:
        raise ConfigError(f"learning.method must be one of {', '.join(METHODS)}, got {name!r}")
    return name


@dataclasses.dataclass(frozen=True)
class TrainedPolicy:
    """A freshly trained policy with what it was trained on: the task, its tokenizer and model spec."""

    policy: LearnedPolicy
    method: str
    history: dict[str, list[float]]
    task: Task
    spec: ModelSpec
    tokenizer: PreTrainedTokenizerBase
    features: FeatureSpec


def train_policy(cfg: DictConfig) -> TrainedPolicy:
    """Builds the task, model spec and policy of ``cfg`` and trains the policy by ``learning.method``."""
    method = learning_method(cfg.learning.method)
    # the language model's dropout draws from the global generator, which torch seeds at random in every process
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    task, spec, policy = _build(cfg)
    tokenizer = spec.build_tokenizer(document.text for document in task.corpus())
    resolve_run_model(policy, spec.pretrained)
    source = state_source(policy, cfg.learning.get("states_cache"))
    if source is not None:  # the policy is trained on this encoder's states: its card names the weights
        bind_encoder(policy, source)
    features = feature_spec(task, policy.features, source)
    history = _train(method, cfg, task, spec, tokenizer, policy, features)
    return TrainedPolicy(policy, method, history, task, spec, tokenizer, features)


def learn_policy(cfg: DictConfig, output_dir: Path, task_name: str) -> LearnResults:
    """Trains, judges and saves the policy that ``cfg`` describes.

    ``cfg`` has the ``learn`` config's shape: ``task``, ``model``, ``policy``, ``learning`` and ``seed``.
    """
    started = time.perf_counter()
    trained = train_policy(cfg)
    _warn_untagged(trained.task)
    policy, tokenizer = trained.policy, trained.tokenizer
    held_out = encode_answers(trained.task, cfg.learning.eval_split, tokenizer, trained.spec.max_length,
                              trained.features)
    evaluation = compare_with_heuristics(policy, held_out, tokenizer.pad_token_id, seed=cfg.seed)
    task_record = Named(task_name, plain(cfg.task))
    save_policy(policy, output_dir / ARTIFACT, training={
        "method": trained.method, "task": dataclasses.asdict(task_record), "train_split": cfg.learning.train_split,
        "evaluation": dataclasses.asdict(evaluation), "seed": cfg.seed, "feature_names": list(policy.features),
        "tagger": entity_source(trained.task), **_trained_on(trained.task, cfg.learning.train_split),
        "quality": _quality(evaluation), **_how_trained(trained.method, cfg, policy),
    })
    return LearnResults(method=trained.method, task=task_record,
                        policy=LearnedPolicyRecord(plain(cfg.policy), ARTIFACT), evaluation=evaluation,
                        history=trained.history, seed=cfg.seed, wall_seconds=round(time.perf_counter() - started, 2))


def _how_trained(method: str, cfg: DictConfig, policy: LearnedPolicy) -> dict[str, str]:
    """The supervised loss the policy was trained by (``auto`` resolved), for its card."""
    if method != "supervised":
        return {}
    return {"supervised_loss": resolve_loss(cfg.learning.supervised.loss, policy)}


def _trained_on(task: Task, split: str) -> dict[str, int]:
    """How many questions of ``split`` taught the policy, and about how many documents (their contexts)."""
    asked = questions(task, split)
    return {"train_documents": len({q.context for q in asked if q.context is not None}),
            "train_questions": len(asked)}


def _quality(evaluation: Evaluation) -> dict[str, str | float]:
    """The policy's answer precision and recall on the held-out split, next to the heuristics' precision."""
    return {"split": evaluation.split, "precision": evaluation.learned.precision,
            "recall": evaluation.learned.recall, "entity_precision": evaluation.entity.precision,
            "random_precision": evaluation.random.precision}


def _warn_untagged(task: Task) -> None:
    """Documents without entity spans teach the ``entity`` feature nothing: say how many (tasks that count them)."""
    untagged = getattr(task, "untagged_documents", 0)
    if untagged:
        log.warning("%d of the %d documents of task %r have no entity span after tagging: their "
                    "'entity' feature is 0 throughout", untagged, len(task.corpus()), task.name)


def _build(cfg: DictConfig) -> tuple[Task, ModelSpec, LearnedPolicy]:
    task, spec = build(cfg.task, "task"), build(cfg.model, "model")
    if not isinstance(task, Task):
        raise TaskError(f"task {getattr(task, 'name', type(task).__name__)!r} has no text and QA to learn a masking "
                        "policy from")
    target = _target_class(cfg.policy)
    if target is not None and not issubclass(target, LearnedPolicy):  # before the run's seed reaches its signature
        raise _not_learned(target.__name__)
    policy, _ = build_policy(cfg.policy)   # a schedule drives the rate later, where the policy is used
    if not isinstance(policy, LearnedPolicy):
        raise _not_learned(type(policy).__name__)
    return task, spec, policy


def _target_class(node: DictConfig) -> type | None:
    """The class ``node`` builds, where its ``_target_`` names one (a loader function: None)."""
    try:
        target = hydra.utils.get_object(node.get("_target_"))
    except (ImportError, ValueError, AttributeError):
        return None  # build_policy names the problem
    return target if isinstance(target, type) else None


def _not_learned(built: str) -> PolicyError:
    return PolicyError(f"maskpolicy-learn trains a LearnedPolicy (policy=learned, or policy=artifact with a learned "
                       f"policy's folder); the policy config builds a {built}")


def _train(method: str, cfg: DictConfig, task: Task, spec: ModelSpec, tokenizer: PreTrainedTokenizerBase,
           policy: LearnedPolicy, features: FeatureSpec) -> dict[str, list[float]]:
    """Trains ``policy`` in place; returns its training curves."""
    split = cfg.learning.train_split
    if method == "supervised":
        rows = encode_answers(task, split, tokenizer, spec.max_length, features)
        options = plain(cfg.learning.supervised)
        return {"loss": train_supervised(policy, rows, tokenizer.pad_token_id, seed=cfg.seed, **options)}
    options = MetaLearningOptions(**plain(cfg.learning.meta_learning))
    return train_meta_learning(policy, meta_data(task, split, tokenizer, spec, features), spec, tokenizer, options,
                               cfg.seed)
