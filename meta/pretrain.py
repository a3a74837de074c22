"""``maskpolicy-pretrain``: intermediate pre-training with a policy, then downstream QA.

Reads straight through: compose config → build task, tokenizer, model, policy →
pre-train → fine-tune (checkpoint chosen on dev) → test → ``results.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from maskpolicy.policies import MaskingPolicy, PolicyError
from maskpolicy.tasks.base import Document, Task, TaskError
from maskpolicy.tasks.data import RowsDataModule
from maskpolicy.tasks.features import FeatureSpec, word_counts
from maskpolicy.tasks.models import ModelSpec
from maskpolicy.tasks.pretraining import MaskedPretraining, build_corruption
from maskpolicy.tasks.qa import QAFineTuning, encode_qa
from maskpolicy.tasks.text import encode_documents

from .io import plain, versions, write_json_atomic
from .plugins import register_plugin_policies
from .scoring import heldout_documents, score_text

log = logging.getLogger(__name__)
MLL_FIELDS = ("estimate", "stderr", "nats_per_token", "bits_per_token", "estimator", "reduction", "forward_passes",
              "sequences", "tokens", "per_rate")


class ConfigError(ValueError):
    """The composed configuration cannot be built into a run."""


def build(node: DictConfig, what: str) -> Any:
    """Instantiates a config node, turning deep tracebacks into one clear message."""
    try:
        return hydra.utils.instantiate(node)
    except InstantiationException as error:
        cause = error.__cause__ or error
        if isinstance(cause, PolicyError | TaskError):
            raise type(cause)(f"{what}: {cause}") from error
        raise ConfigError(f"could not build the {what} from its config: {cause}") from error


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
    loggers = [CSVLogger(output_dir, name=stage, version=""), TensorBoardLogger(output_dir, name=stage, version="")]
    factory = hydra.utils.instantiate(cfg.trainer)
    return factory(default_root_dir=output_dir, logger=loggers, **budget)


def pretrain(cfg: DictConfig, run: Setup, output_dir: Path) -> dict[str, Any]:
    """Intermediate pre-training; resumes from ``checkpoints/pretrain/last.ckpt`` if present."""
    if cfg.pretrain.steps <= 0:
        return {"steps": 0, "tokens": 0, "masked_tokens": 0, "final_loss": None}
    texts, spans = [d.text for d in run.corpus], [d.entities for d in run.corpus]
    rows = encode_documents(texts, spans, run.tokenizer, run.spec.max_length, run.spec.overflow,
                            features=FeatureSpec(counts=word_counts(texts)))
    data = RowsDataModule(rows, run.tokenizer.pad_token_id, batch_size=cfg.pretrain.batch_size)
    corruption = build_corruption(run.spec.kind, run.tokenizer, **cfg.pretrain.corruption)
    module = MaskedPretraining(
        run.model, run.policy, corruption, cfg.pretrain.learning_rate, cfg.pretrain.weight_decay,
        cfg.pretrain.warmup_fraction, seed=cfg.seed,
    )
    checkpoints = output_dir / "checkpoints" / "pretrain"
    saver = ModelCheckpoint(checkpoints, save_last=True, every_n_train_steps=cfg.pretrain.checkpoint_every,
                            save_top_k=0)
    trainer = make_trainer(cfg, output_dir, "pretrain", max_steps=cfg.pretrain.steps, callbacks=[saver])
    last = checkpoints / "last.ckpt"
    if last.exists():
        log.info("resuming pre-training from %s", last)
    trainer.fit(module, datamodule=data, ckpt_path=last if last.exists() else None)
    if cfg.pretrain.save_model:
        run.model.save_pretrained(output_dir / "pretrained")
        run.tokenizer.save_pretrained(output_dir / "pretrained")
    loss = trainer.callback_metrics.get("pretrain/loss")
    return {
        "steps": trainer.global_step,
        "rows": len(rows),
        "tokens": module.tokens_seen,
        "masked_tokens": module.masked_seen,
        "final_loss": None if loss is None else float(loss),
    }


def score(cfg: DictConfig, run: Setup) -> dict[str, Any] | None:
    """The pre-trained model's cumulative masked-prediction estimate of log p(held-out text)."""
    options = cfg.score
    if not options.enabled:
        return None
    if run.spec.kind != "masked_lm":
        log.info("mll score skipped: a %s model has no masked-LM conditionals to score", run.spec.kind)
        return None
    started = time.perf_counter()
    estimate = score_text(run.model, run.tokenizer, heldout_documents(run.task), run.spec.max_length,
                          options.estimator, options.passes, options.rate, options.max_sequences,
                          options.batch_size, cfg.seed)
    summary = estimate.summary("mean")
    return {key: summary[key] for key in MLL_FIELDS} | {"seconds": round(time.perf_counter() - started, 2)}


def finetune(cfg: DictConfig, run: Setup, output_dir: Path, callbacks: Sequence[pl.Callback] = ()) -> dict[str, float]:
    """Fine-tunes on QA-train, keeps the epoch with the best dev EM, scores it on test.

    ``callbacks`` join the trainer's (the search's pruning callback reads dev EM per epoch).
    """
    encode = lambda split: encode_qa(run.task.qa(split), run.tokenizer, run.spec.kind, run.spec.max_length)  # noqa: E731
    data = RowsDataModule(encode("train"), run.tokenizer.pad_token_id, dev=encode("dev"), test=encode("test"),
                          batch_size=cfg.finetune.batch_size)
    module = QAFineTuning(run.model, run.tokenizer, run.spec.kind, cfg.finetune.learning_rate,
                          cfg.finetune.weight_decay, cfg.finetune.warmup_fraction)
    best = ModelCheckpoint(output_dir / "checkpoints" / "finetune", monitor="dev/em", mode="max", save_top_k=1)
    trainer = make_trainer(cfg, output_dir, "finetune", max_epochs=cfg.finetune.epochs, callbacks=[best, *callbacks])
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data, ckpt_path="best", verbose=False)  # loads the best-dev epoch
    trainer.validate(module, datamodule=data, verbose=False)  # its dev scores, exact rather than float32 logs
    dev, test = module.scores["dev"], module.scores["test"]
    return {"dev_em": dev["em"], "dev_f1": dev["f1"], "test_em": test["em"], "test_f1": test["f1"],
            "best_epoch": _best_epoch(best)}


def _best_epoch(checkpoint: ModelCheckpoint) -> int | None:
    name = Path(checkpoint.best_model_path).stem
    return int(name.split("epoch=")[1].split("-")[0]) if "epoch=" in name else None


def run_pretrain(cfg: DictConfig, output_dir: Path, policy_name: str, task_name: str, model_name: str,
                 finetune_callbacks: Sequence[pl.Callback] = ()) -> dict:
    """The whole job; returns and writes ``results.json``."""
    started = time.perf_counter()
    run = setup(cfg)
    pretrained = pretrain(cfg, run, output_dir)
    mll = score(cfg, run)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    downstream = finetune(cfg, run, output_dir, finetune_callbacks)
    results = {
        "policy": {"name": policy_name, "params": plain(cfg.policy), "source": getattr(run.policy, "source", None)},
        "task": {"name": task_name, "params": plain(cfg.task)},
        "model": {"name": model_name, "params": plain(cfg.model),
                  "parameters": sum(p.numel() for p in run.model.parameters())},
        "seed": cfg.seed,
        "downstream": downstream,
        "pretrain": pretrained,
        "mll": mll,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "versions": versions(),
    }
    write_json_atomic(output_dir / "results.json", results)
    return results


register_plugin_policies()


@hydra.main(version_base="1.3", config_path="pkg://maskpolicy.conf", config_name="pretrain")
def main(cfg: DictConfig) -> float:
    runtime = HydraConfig.get().runtime
    results = run_pretrain(
        cfg, Path(runtime.output_dir), runtime.choices.get("policy", "custom"),
        runtime.choices.get("task", "custom"), runtime.choices.get("model", "custom"),
    )
    log.info("%s on %s: dev EM %.3f, test EM %.3f", results["policy"]["name"], results["task"]["name"],
             results["downstream"]["dev_em"], results["downstream"]["test_em"])
    return results["downstream"]["dev_em"]


if __name__ == "__main__":
    main()
