"""One intermediate pre-training run, in steps: set up → pre-train → score → fine-tune → (test).

``maskpolicy-pretrain`` runs every step; a search trial runs the same steps but never the
test split (it selects on dev); a search's final re-runs add the test. Each step takes the
run's config (the ``pretrain`` config's shape) and returns a typed part of
:class:`~maskpolicy.meta.results.schema.PretrainResults`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from maskpolicy.meta.config import build, plain
from maskpolicy.meta.results.files import staged_directory
from maskpolicy.meta.results.schema import (
    Downstream,
    MLLScore,
    ModelRecord,
    Named,
    PolicyRecord,
    PretrainResults,
    PretrainStats,
)
from maskpolicy.meta.scoring.text import heldout_documents, score_text
from maskpolicy.policies import MaskingPolicy
from maskpolicy.tasks.base import Document, Task, TaskError
from maskpolicy.tasks.text.encoding import encode_documents
from maskpolicy.tasks.text.features import FeatureSpec, word_counts
from maskpolicy.tasks.training.datamodule import RowsDataModule
from maskpolicy.tasks.training.models import ModelSpec
from maskpolicy.tasks.training.pretraining import MaskedPretraining, build_corruption
from maskpolicy.tasks.training.qa import QAFineTuning, encode_qa

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunNames:
    """The config-group choices a run was composed from, for its results."""

    policy: str
    task: str
    model: str


@dataclass
class Setup:
    task: Task
    corpus: Sequence[Document]
    policy: MaskingPolicy
    spec: ModelSpec
    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel


def setup(cfg: DictConfig) -> Setup:
    """Builds everything a run needs from its config, model weights seeded by ``cfg.seed``."""
    task, policy, spec = build(cfg.task, "task"), build(cfg.policy, "policy"), build(cfg.model, "model")
    if not isinstance(task, Task):
        raise TaskError(
            f"task {getattr(task, 'name', type(task).__name__)!r} has no text corpus and QA to pre-train on; "
            "tractable tasks (ppca, hmm) are for maskpolicy-score"
        )
    corpus = task.corpus()
    if not corpus:
        raise TaskError(f"task {task.name!r} produced an empty pre-training corpus; check its size or data path")
    tokenizer = spec.build_tokenizer(document.text for document in corpus)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    return Setup(task, corpus, policy, spec, tokenizer, spec.build_model(tokenizer))


def make_trainer(cfg: DictConfig, output_dir: Path, stage: str, **budget: Any) -> pl.Trainer:
    """The configured trainer (``cfg.trainer``) with the configured loggers (``cfg.logger``) writing under ``stage``."""
    loggers = [build(node, f"logger {name}", save_dir=str(output_dir), name=stage, version="")
               for name, node in (cfg.get("logger") or {}).items()]
    factory = build(cfg.trainer, "trainer")
    return factory(default_root_dir=output_dir, logger=loggers or False, **budget)


def pretrain(cfg: DictConfig, run: Setup, output_dir: Path) -> PretrainStats:
    """Intermediate pre-training; resumes from ``checkpoints/pretrain/last.ckpt`` if present."""
    if cfg.pretrain.steps <= 0:
        return PretrainStats(steps=0, tokens=0, masked_tokens=0, final_loss=None, rows=0)
    texts, spans = [d.text for d in run.corpus], [d.entities for d in run.corpus]
    rows = encode_documents(texts, spans, run.tokenizer, run.spec.max_length, run.spec.overflow,
                            features=FeatureSpec(counts=word_counts(texts)))
    data = RowsDataModule(rows, run.tokenizer.pad_token_id, batch_size=cfg.pretrain.batch_size)
    corruption = build_corruption(run.spec.kind, run.tokenizer, **cfg.pretrain.corruption)
    module = MaskedPretraining(run.model, run.policy, corruption, cfg.pretrain.learning_rate,
                               cfg.pretrain.weight_decay, cfg.pretrain.warmup_fraction, seed=cfg.seed)
    checkpoints = output_dir / "checkpoints" / "pretrain"
    saver = ModelCheckpoint(checkpoints, save_last=True, every_n_train_steps=cfg.pretrain.checkpoint_every,
                            save_top_k=0)
    trainer = make_trainer(cfg, output_dir, "pretrain", max_steps=cfg.pretrain.steps, callbacks=[saver])
    last = checkpoints / "last.ckpt"
    if last.exists():
        log.info("resuming pre-training from %s", last)
    trainer.fit(module, datamodule=data, ckpt_path=last if last.exists() else None)
    if cfg.pretrain.save_model:
        with staged_directory(output_dir / "pretrained") as staging:
            run.model.save_pretrained(staging)
            run.tokenizer.save_pretrained(staging)
    loss = trainer.callback_metrics.get("pretrain/loss")
    return PretrainStats(steps=trainer.global_step, tokens=module.tokens_seen, masked_tokens=module.masked_seen,
                         final_loss=None if loss is None else float(loss), rows=len(rows))


def score(cfg: DictConfig, run: Setup) -> MLLScore | None:
    """The pre-trained model's cumulative masked-prediction estimate of log p(held-out text)."""
    options = cfg.score
    if not options.enabled:
        return None
    if run.spec.kind != "masked_lm":
        log.info("mll score skipped: a %s model has no masked-LM conditionals to score", run.spec.kind)
        return None
    started = time.perf_counter()
    estimator = build(options.estimator, "score estimator")
    estimate = score_text(run.model, run.tokenizer, heldout_documents(run.task), run.spec.max_length, estimator,
                          options.max_sequences, options.batch_size, cfg.seed)
    return estimate.score(seconds=round(time.perf_counter() - started, 2))


def finetune(cfg: DictConfig, run: Setup, output_dir: Path, *, test: bool,
             callbacks: Sequence[pl.Callback] = ()) -> Downstream:
    """Fine-tunes on QA-train and keeps the epoch with the best dev EM; ``test`` also scores it on QA-test.

    ``callbacks`` join the trainer's (a search's pruning callback reads dev EM per epoch).
    """
    def encode(split: str) -> list[dict]:
        return encode_qa(run.task.qa(split), run.tokenizer, run.spec.kind, run.spec.max_length)

    data = RowsDataModule(encode("train"), run.tokenizer.pad_token_id, dev=encode("dev"),
                          test=encode("test") if test else (), batch_size=cfg.finetune.batch_size)
    module = QAFineTuning(run.model, run.tokenizer, run.spec.kind, cfg.finetune.learning_rate,
                          cfg.finetune.weight_decay, cfg.finetune.warmup_fraction,
                          decay_norms_and_biases=cfg.finetune.decay_norms_and_biases)
    best = ModelCheckpoint(output_dir / "checkpoints" / "finetune", monitor="dev/em", mode="max", save_top_k=1)
    trainer = make_trainer(cfg, output_dir, "finetune", max_epochs=cfg.finetune.epochs, callbacks=[best, *callbacks])
    trainer.fit(module, datamodule=data)
    if test:
        trainer.test(module, datamodule=data, ckpt_path="best", verbose=False)
    # the best-dev epoch's dev scores, exact rather than the float32 logs
    trainer.validate(module, datamodule=data, ckpt_path="best", verbose=False)
    dev, held_out = module.scores["dev"], module.scores.get("test", {})
    return Downstream(dev_em=dev["em"], dev_f1=dev["f1"], best_epoch=_best_epoch(best),
                      test_em=held_out.get("em"), test_f1=held_out.get("f1"))


def _best_epoch(checkpoint: ModelCheckpoint) -> int | None:
    name = Path(checkpoint.best_model_path).stem
    return int(name.split("epoch=")[1].split("-")[0]) if "epoch=" in name else None


def run_pretraining(cfg: DictConfig, output_dir: Path, names: RunNames, *, test: bool = True,
                    callbacks: Sequence[pl.Callback] = ()) -> PretrainResults:
    """Every step of one run; returns its results (the caller writes them)."""
    started = time.perf_counter()
    run = setup(cfg)
    pretrained = pretrain(cfg, run, output_dir)
    mll = score(cfg, run)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    downstream = finetune(cfg, run, output_dir, test=test, callbacks=callbacks)
    return PretrainResults(
        policy=PolicyRecord(names.policy, plain(cfg.policy), getattr(run.policy, "source", None)),
        task=Named(names.task, plain(cfg.task)),
        model=ModelRecord(names.model, plain(cfg.model), sum(p.numel() for p in run.model.parameters())),
        seed=cfg.seed,
        downstream=downstream,
        pretrain=pretrained,
        mll=mll,
        wall_seconds=round(time.perf_counter() - started, 2),
    )
