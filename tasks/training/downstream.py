"""The downstream stage a pre-trained model is judged by: one protocol, one class per kind.

A downstream task turns a task's questions into rows, batches them, and builds the Lightning
module that fine-tunes the pre-trained model on them. The module logs ``{split}/em`` and
``{split}/f1`` and keeps the latest exact values in ``scores[split]``; the pipeline selects the
epoch with the best ``dev/{metric}``, where ``metric`` is the downstream's own choice (closed-book
QA: exact match; extractive QA: F1). A third-party downstream is one class with this shape and
one YAML under ``conf/downstream/``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Protocol, runtime_checkable

import pytorch_lightning as pl
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from maskpolicy.tasks.base import Split, Task, TaskError
from maskpolicy.tasks.text.encoding import pad_rows
from maskpolicy.tasks.training.qa import QAFineTuning, encode_qa

Metric = Literal["em", "f1"]
METRICS: tuple[Metric, ...] = ("em", "f1")


@dataclass(frozen=True)
class FinetuneOptions:
    """The optimiser settings of fine-tuning (``finetune.*`` of the run config)."""

    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    decay_norms_and_biases: bool = True


@runtime_checkable
class DownstreamTask(Protocol):
    """What the pipeline fine-tunes and evaluates a pre-trained model on.

    Attributes:
        name: how results and tables name it (the config's file name).
        metric: the dev metric that selects the epoch and that a search optimises, ``"em"`` or ``"f1"``.
        counts: what encoding skipped or split (e.g. answers outside every window), for ``results.json``.
    """

    name: str
    metric: Metric
    counts: dict[str, int]

    def rows(self, task: Task, split: Split, tokenizer: PreTrainedTokenizerBase, kind: str,
             max_length: int) -> list[dict[str, Any]]:
        """The split's questions as rows the module trains or evaluates on."""
        ...

    def collate(self, pad_token_id: int) -> Callable[[Sequence[dict[str, Any]]], dict[str, Any]]:
        """Rows → one padded batch."""
        ...

    def module(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, kind: str,
               options: FinetuneOptions, seed: int) -> pl.LightningModule:
        """The Lightning module that fine-tunes ``model`` (logs ``{split}/em``, ``{split}/f1``; fills ``scores``)."""
        ...


class ClosedBookQA:
    """Closed-book QA: the question alone; a masked LM fills one ``[MASK]`` per answer token, a seq2seq
    model generates the answer (:mod:`.qa`). Judged by exact match."""

    name = "closed_book_qa"

    def __init__(self, metric: Metric = "em", max_answer_tokens: int = 16) -> None:
        self.metric, self.max_answer_tokens = check_metric(metric), max_answer_tokens
        self.counts: dict[str, int] = {}

    def rows(self, task: Task, split: Split, tokenizer: PreTrainedTokenizerBase, kind: str,
             max_length: int) -> list[dict[str, Any]]:
        return encode_qa(task.qa(split), tokenizer, kind, max_length)

    def collate(self, pad_token_id: int) -> Callable[[Sequence[dict[str, Any]]], dict[str, Any]]:
        return partial(pad_rows, pad_token_id=pad_token_id)

    def module(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, kind: str,
               options: FinetuneOptions, seed: int) -> pl.LightningModule:
        return QAFineTuning(model, tokenizer, kind, options.learning_rate, options.weight_decay,
                            options.warmup_fraction, max_answer_tokens=self.max_answer_tokens,
                            decay_norms_and_biases=options.decay_norms_and_biases)


def check_metric(metric: str) -> Metric:
    if metric not in METRICS:
        raise TaskError(f"downstream.metric must be one of {list(METRICS)}, got {metric!r}")
    return metric  # type: ignore[return-value]
