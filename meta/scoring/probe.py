"""A cheap signal while pre-training runs: the targeted cumulative score on a fixed slice of held-out text.

:class:`ScoreProbe` is a Lightning callback. Every ``every`` optimiser steps it scores the
model being trained on the first ``max_sequences`` held-out rows of the task, with the same
masks each time (a fixed seed), so the curve moves only because the model does. The default
target, ``entities``, masks only the tokens that carry facts and keeps the rest visible: it
asks whether the model has stored what the questions will ask, without any label.
"""

from __future__ import annotations

import time

import pytorch_lightning as pl
from transformers import PreTrainedTokenizerBase

from maskpolicy.meta.console import no_bars
from maskpolicy.meta.scoring.estimators import MLLError, Stratified
from maskpolicy.meta.scoring.text import score_text, target_documents
from maskpolicy.tasks.base import Task


class ScoreProbe(pl.Callback):
    """Scores the model being pre-trained every ``every`` steps; ``curve`` holds ``(step, nats per target token)``.

    Args:
        task: whose held-out text is scored (``target_documents(task, target)``).
        tokenizer, max_length: how that text is encoded, as for pre-training.
        target: ``entities`` (label-free), ``all`` or ``answers`` (QA-dev answer spans: uses labels).
        every: optimiser steps between two probes; the first comes after ``every`` steps.
        passes: masked forward passes per row (stratified estimator).
        max_sequences: held-out rows scored each time.
        seed: the masks' seed, the same at every probe.
    """

    def __init__(self, task: Task, tokenizer: PreTrainedTokenizerBase, max_length: int, target: str = "entities",
                 every: int = 100, passes: int = 8, max_sequences: int = 64, batch_size: int = 256,
                 seed: int = 0) -> None:
        super().__init__()
        if every < 1:
            raise MLLError(f"pretrain.probe.every must be ≥ 1 step, got {every}; set pretrain.probe.every=0 "
                           "to turn the probe off")
        self.documents = target_documents(task, target)  # a target the task cannot give fails before training
        self.tokenizer, self.max_length, self.target = tokenizer, max_length, target
        self.every, self.estimator = every, Stratified(passes)
        self.max_sequences, self.batch_size, self.seed = max_sequences, batch_size, seed
        self.curve: list[tuple[int, float]] = []
        self.seconds = 0.0

    @property
    def name(self) -> str:
        return f"probe/{self.target}"

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every or (self.curve and self.curve[-1][0] == step):
            return
        started = time.perf_counter()
        with no_bars():  # pre-training's own bar is on screen
            value = score_text(pl_module.model, self.tokenizer, self.documents, self.max_length, self.estimator,
                               self.max_sequences, self.batch_size, self.seed, self.target).nats_per_token
        self.seconds += time.perf_counter() - started
        self.curve.append((step, value))
        pl_module.log(self.name, value)

    def state_dict(self) -> dict:
        """Saved in the pre-training checkpoints, so a resumed run keeps the curve measured before."""
        return {"curve": [list(point) for point in self.curve], "seconds": self.seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self.curve = [(int(step), float(value)) for step, value in state_dict["curve"]]
        self.seconds = float(state_dict["seconds"])

    def latest(self, step: int) -> float | None:
        """The value measured at ``step``, if the probe ran there."""
        return self.curve[-1][1] if self.curve and self.curve[-1][0] == step else None
