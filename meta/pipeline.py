"""One intermediate pre-training run, in steps: set up → pre-train → score → fine-tune → (test).

``maskpolicy-pretrain`` runs every step; a search trial runs the same steps but never the
test split (it selects on dev); a search's final re-runs add the test. Each step takes the
run's config (the ``pretrain`` config's shape) and returns a typed part of
:class:`~maskpolicy.meta.results.schema.PretrainResults`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from maskpolicy.meta.base import base_checkpoint
from maskpolicy.meta.config import ConfigError, build, build_policy, plain
from maskpolicy.meta.context import state_source
from maskpolicy.meta.learning.artifacts import check_use
from maskpolicy.meta.results.files import disk_errors, staged_directory
from maskpolicy.meta.results.schema import (
    BaseRecord,
    Downstream,
    MLLScore,
    ModelRecord,
    Named,
    PolicyRecord,
    PretrainResults,
    PretrainStats,
)
from maskpolicy.meta.scoring.probe import ScoreProbe
from maskpolicy.meta.scoring.text import score_text, target_documents
from maskpolicy.meta.tables import fit_tables
from maskpolicy.meta.training import check_compile, check_devices, compiled, fit_masked_lm, make_trainer, over_ranks
from maskpolicy.policies import MaskingPolicy, RateSchedule
from maskpolicy.tasks.base import Document, Task, TaskError
from maskpolicy.tasks.text.encoding import encode_documents
from maskpolicy.tasks.text.features import FeatureSpec, word_counts
from maskpolicy.tasks.training.datamodule import RowsDataModule
from maskpolicy.tasks.training.downstream import ClosedBookQA, DownstreamTask, FinetuneOptions
from maskpolicy.tasks.training.models import LoadReport, ModelSpec
from maskpolicy.tasks.training.pretraining import MaskedPretraining, build_corruption

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunNames:
    """The config-group choices a run was composed from, for its results."""

    policy: str
    task: str
    model: str


@dataclass
class Setup:
    """What a run works on; ``base`` records the checkpoint it starts from (``None``: from scratch)."""

    task: Task
    corpus: Sequence[Document]
    policy: MaskingPolicy
    spec: ModelSpec
    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    base: BaseRecord | None = None
    policy_warnings: tuple[str, ...] = ()   # what checking a saved policy against the task found
    schedule: RateSchedule | None = None    # policy.schedule, when the rate varies during pre-training
    downstream: DownstreamTask = field(default_factory=ClosedBookQA)
    loading: LoadReport | None = None       # which weights a pre-trained model's checkpoint gave (None: built)


def _no_callbacks(probe: ScoreProbe | None) -> Sequence[pl.Callback]:
    return ()


@dataclass(frozen=True)
class StageCallbacks:
    """Extra Lightning callbacks for a run's two training stages (a search trial's pruning).

    ``pretraining`` is called with the run's pre-training probe (``None`` when ``pretrain.probe.every``
    is 0) and its callbacks come after the probe's, so they see the value it just measured.
    """

    pretraining: Callable[[ScoreProbe | None], Sequence[pl.Callback]] = _no_callbacks
    finetuning: Sequence[pl.Callback] = field(default_factory=tuple)


NO_CALLBACKS = StageCallbacks()


def setup(cfg: DictConfig) -> Setup:
    """Builds everything a run needs from its config, model weights seeded by ``cfg.seed``.

    With ``base.enabled`` the tokenizer and model come from the base checkpoint (:mod:`maskpolicy.meta.base`,
    built on first use); without, a tiny model is initialised at random and its tokenizer trained on the corpus.
    """
    task, spec = build(cfg.task, "task"), build(cfg.model, "model")
    policy, schedule = build_policy(cfg.policy)
    if not isinstance(task, Task):
        raise TaskError(
            f"task {getattr(task, 'name', type(task).__name__)!r} has no text corpus and QA to pre-train on; "
            "tractable tasks (ppca, hmm) are for maskpolicy-score"
        )
    corpus = task.corpus()
    if not corpus:
        raise TaskError(f"task {task.name!r} produced an empty pre-training corpus; check its size or data path")
    policy_warnings = tuple(check_use(policy, task, corpus))
    base = base_checkpoint(cfg, task, spec) if (cfg.get("base") or {}).get("enabled", False) else None
    if base is not None:
        spec = base.apply(spec)
    tokenizer = spec.build_tokenizer(document.text for document in corpus)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model, loading = spec.load(tokenizer)
    # Loaded weights come in eval mode and Lightning keeps a module's mode: train with dropout, as when built.
    return Setup(task, corpus, policy, spec, tokenizer, model.train(), base.record if base else None,
                 policy_warnings, schedule, build_downstream(cfg), loading)


def build_downstream(cfg: DictConfig) -> DownstreamTask:
    """The run's downstream stage (``downstream=closed_book_qa|extractive_qa``; closed-book QA when the config
    has no ``downstream`` node, as configs written before it)."""
    node = cfg.get("downstream")
    downstream = ClosedBookQA() if node is None else build(node, "downstream")
    if not isinstance(downstream, DownstreamTask):
        raise ConfigError(f"downstream: {type(downstream).__name__} lacks the DownstreamTask methods (name, metric, "
                          "counts, rows, collate, module); see maskpolicy.tasks.training.downstream")
    return downstream


def pretrain(cfg: DictConfig, run: Setup, output_dir: Path,
             callbacks: Callable[[ScoreProbe | None], Sequence[pl.Callback]] = _no_callbacks) -> PretrainStats:
    """Intermediate pre-training; resumes from ``checkpoints/pretrain/last.ckpt`` if present.

    With ``pretrain.probe.every`` > 0 a :class:`ScoreProbe` scores the model every so many steps (its curve
    is saved in the checkpoints, so a resumed run keeps it); ``callbacks(probe)`` join the trainer's.
    """
    if cfg.pretrain.steps <= 0:
        return PretrainStats(steps=0, tokens=0, masked_tokens=0, final_loss=None, rows=0)
    texts, spans = [d.text for d in run.corpus], [d.entities for d in run.corpus]
    rows = encode_documents(texts, spans, run.tokenizer, run.spec.max_length, run.spec.overflow,
                            features=FeatureSpec(counts=word_counts(texts),
                                                 context=state_source(run.policy, cfg.pretrain.get("states_cache"))))
    tables = fit_tables(run.policy, rows, run.tokenizer.pad_token_id, cfg.pretrain.get("tables_cache"))
    corruption = build_corruption(run.spec.kind, run.tokenizer, **cfg.pretrain.corruption)
    module = MaskedPretraining(run.model, run.policy, corruption, cfg.pretrain.learning_rate,
                               cfg.pretrain.weight_decay, cfg.pretrain.warmup_fraction, seed=cfg.seed,
                               schedule=run.schedule, compile=compiled(cfg))
    checkpoints = output_dir / "checkpoints" / "pretrain"
    saver = ModelCheckpoint(checkpoints, save_last=True, every_n_train_steps=cfg.pretrain.checkpoint_every,
                            save_top_k=0)
    probe = make_probe(cfg, run)
    stage = [*([probe] if probe else []), *callbacks(probe)]
    last = checkpoints / "last.ckpt"
    if last.exists():
        log.info("resuming pre-training from %s", last)
    trainer = fit_masked_lm(cfg, module, rows, run.tokenizer.pad_token_id, output_dir, "pretrain",
                            steps=cfg.pretrain.steps, batch_size=cfg.pretrain.batch_size,
                            resume=last if last.exists() else None, callbacks=[saver, *stage])
    if cfg.pretrain.save_model and trainer.is_global_zero:  # every DDP rank holds the same weights
        with staged_directory(output_dir / "pretrained") as staging:
            run.model.save_pretrained(staging)
            run.tokenizer.save_pretrained(staging)
    loss = trainer.callback_metrics.get("pretrain/loss")
    return PretrainStats(steps=trainer.global_step, tokens=over_ranks(trainer, module.tokens_seen),
                         masked_tokens=over_ranks(trainer, module.masked_seen),
                         final_loss=None if loss is None else float(loss), rows=len(rows),
                         probe=[[step, value] for step, value in probe.curve] if probe else [],
                         probe_target=probe.target if probe else None,
                         probe_seconds=round(probe.seconds, 2) if probe else None,
                         rates=module.rate_points(cfg.pretrain.steps), tables=[asdict(t) for t in tables])


def make_probe(cfg: DictConfig, run: Setup) -> ScoreProbe | None:
    """The pre-training probe ``pretrain.probe`` asks for (masked LMs only), or ``None``."""
    options = cfg.pretrain.get("probe") or {}
    every = options.get("every") or 0
    if not every:
        return None
    if every > cfg.pretrain.steps:
        raise ConfigError(f"pretrain.probe.every={every} is longer than pre-training (pretrain.steps="
                          f"{cfg.pretrain.steps}): the probe would never run; lower it or set it to 0 (off)")
    if run.spec.kind != "masked_lm":
        log.info("pre-training probe skipped: a %s model has no masked-LM conditionals to score", run.spec.kind)
        return None
    return ScoreProbe(run.task, run.tokenizer, run.spec.max_length, options.target, every, options.passes,
                      options.max_sequences, cfg.score.batch_size, seed=cfg.seed)


def score(cfg: DictConfig, run: Setup) -> dict[str, MLLScore]:
    """The pre-trained model's cumulative masked-prediction estimates of its held-out text, one per
    ``score.targets`` name (``all``: every token; ``entities``, ``answers``: those tokens given the rest)."""
    options = cfg.score
    if not options.enabled:
        return {}
    if run.spec.kind != "masked_lm":
        log.info("mll score skipped: a %s model has no masked-LM conditionals to score", run.spec.kind)
        return {}
    estimator = build(options.estimator, "score estimator")
    scores = {}
    for target in _targets(options):  # one at a time, so each carries its own seconds
        started = time.perf_counter()
        estimate = score_text(run.model, run.tokenizer, target_documents(run.task, target), run.spec.max_length,
                              estimator, options.max_sequences, options.batch_size, cfg.seed, target)
        scores[target] = estimate.score(seconds=round(time.perf_counter() - started, 2))
    return scores


def check_scores(cfg: DictConfig, run: Setup) -> None:
    """Fails before any training on a ``score.targets`` name the task cannot give (the probe checks its own)."""
    if cfg.score.enabled and run.spec.kind == "masked_lm":
        for target in _targets(cfg.score):
            target_documents(run.task, target)


def _targets(options: DictConfig) -> list[str]:
    targets = options.get("targets", ["all"])
    if isinstance(targets, str) or not targets:
        raise ConfigError(f"score.targets must be a non-empty list such as [all, entities], got {targets!r}")
    return list(dict.fromkeys(targets))


@dataclass(frozen=True)
class DownstreamRows:
    """A run's downstream questions encoded once, before any training (so a task the downstream cannot use fails
    first); ``test`` is empty for a run that never sees the test split."""

    train: list[dict]
    dev: list[dict]
    test: list[dict]


def encode_downstream(run: Setup, *, test: bool) -> DownstreamRows:
    def encode(split: str) -> list[dict]:
        return run.downstream.rows(run.task, split, run.tokenizer, run.spec.kind, run.spec.max_length)

    return DownstreamRows(encode("train"), encode("dev"), encode("test") if test else [])


def finetune(cfg: DictConfig, run: Setup, output_dir: Path, *, test: bool,
             callbacks: Sequence[pl.Callback] = (), rows: DownstreamRows | None = None) -> Downstream:
    """Fine-tunes on the downstream's train split and keeps the epoch with the best dev metric (the downstream's
    own: EM for closed-book QA, F1 for extractive QA); ``test`` also scores it on the test split.

    ``callbacks`` join the trainer's (a search's pruning callback reads the dev metric per epoch).
    """
    rows = rows or encode_downstream(run, test=test)
    pad = run.tokenizer.pad_token_id
    data = RowsDataModule(rows.train, pad, dev=rows.dev, test=rows.test if test else (),
                          batch_size=cfg.finetune.batch_size, collate=run.downstream.collate(pad))
    options = FinetuneOptions(cfg.finetune.learning_rate, cfg.finetune.weight_decay, cfg.finetune.warmup_fraction,
                              cfg.finetune.decay_norms_and_biases)
    module = run.downstream.module(run.model, run.tokenizer, run.spec.kind, options, cfg.seed)
    best = ModelCheckpoint(output_dir / "checkpoints" / "finetune", monitor=f"dev/{run.downstream.metric}",
                           mode="max", save_top_k=1)
    history = DevHistory()
    trainer = make_trainer(cfg, output_dir, "finetune", max_epochs=cfg.finetune.epochs,
                           callbacks=[best, history, *callbacks])
    trainer.fit(module, datamodule=data)
    if test:
        trainer.test(module, datamodule=data, ckpt_path="best", verbose=False)
    # the best-dev epoch's dev scores, exact rather than the float32 logs (validated again only when not recorded)
    dev = history.scores.get(_best_epoch(best))
    if dev is None:
        trainer.validate(module, datamodule=data, ckpt_path="best", verbose=False)
        dev = module.scores["dev"]
    held_out = module.scores.get("test", {})
    return Downstream(dev_em=dev["em"], dev_f1=dev["f1"], best_epoch=_best_epoch(best),
                      test_em=held_out.get("em"), test_f1=held_out.get("f1"), name=run.downstream.name,
                      metric=run.downstream.metric, counts=dict(run.downstream.counts))


class DevHistory(pl.Callback):
    """The exact dev scores after each fine-tuning epoch (not the sanity check's), by epoch."""

    def __init__(self) -> None:
        self.scores: dict[int, dict[str, float]] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.scores[trainer.current_epoch] = dict(pl_module.scores["dev"])


def _best_epoch(checkpoint: ModelCheckpoint) -> int | None:
    name = Path(checkpoint.best_model_path).stem
    return int(name.split("epoch=")[1].split("-")[0]) if "epoch=" in name else None


def policy_source(run: Setup) -> dict[str, Any] | None:
    """Where a saved policy came from (its card's ``training`` block included) and the warnings about its use here;
    ``None`` for a policy built from its config."""
    source = getattr(run.policy, "source", None)
    return None if source is None else {**source, "warnings": list(run.policy_warnings)}


def run_pretraining(cfg: DictConfig, output_dir: Path, names: RunNames, *, test: bool = True,
                    callbacks: StageCallbacks = NO_CALLBACKS) -> PretrainResults:
    """Every step of one run; returns its results (the caller writes them). A full or read-only disk stops it with a
    :class:`~maskpolicy.meta.results.files.DiskError` that names the fix."""
    with disk_errors(output_dir):
        return _run(cfg, output_dir, names, test=test, callbacks=callbacks)


def _run(cfg: DictConfig, output_dir: Path, names: RunNames, *, test: bool, callbacks: StageCallbacks
         ) -> PretrainResults:
    started = time.perf_counter()
    check_devices(cfg.trainer)
    check_compile(cfg)
    run = setup(cfg)
    check_scores(cfg, run)
    rows = encode_downstream(run, test=test)
    pretrained = pretrain(cfg, run, output_dir, callbacks.pretraining)
    scores = score(cfg, run)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    downstream = finetune(cfg, run, output_dir, test=test, callbacks=callbacks.finetuning, rows=rows)
    return PretrainResults(
        policy=PolicyRecord(names.policy, plain(cfg.policy), policy_source(run)),
        task=Named(names.task, plain(cfg.task)),
        model=ModelRecord(names.model, plain(cfg.model), sum(p.numel() for p in run.model.parameters()),
                          loading=asdict(run.loading) if run.loading else None),
        seed=cfg.seed,
        downstream=downstream,
        pretrain=pretrained,
        mll=scores.get("all"),
        wall_seconds=round(time.perf_counter() - started, 2),
        mll_targets=scores,
        base=run.base,
    )
