"""Downstream extractive QA (SQuAD-style): find the answer's span in its context.

A question and its context are one ``(question, context)`` pair; a context longer than the
window becomes several windows that overlap by ``stride`` tokens. A span head (two logits per
token) on the pre-trained model's encoder scores each context token as the answer's first and
last token; the answer is the best-scoring span over all of an example's windows.

Rows carry ``offsets`` ``Long[T, 2]``: each context token's ``[start, end)`` characters in its
context, ``-1`` for question, special and padding tokens, so a span maps back to context text
and the context mask is ``offsets[..., 0] >= 0``. Training rows add ``start_positions`` and
``end_positions``; evaluation rows add the ``context`` and the gold ``answers``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from maskpolicy.tasks.base import QAExample, Split, Task, TaskError
from maskpolicy.tasks.training.downstream import FinetuneOptions, Metric, check_metric
from maskpolicy.tasks.training.metrics import qa_scores
from maskpolicy.tasks.training.optim import adamw_with_warmup

KINDS = ("masked_lm", "seq2seq")
POSITIONS = ("start_positions", "end_positions")

Candidate = tuple[float, str]  # (start + end logit, answer text)


class Window(NamedTuple):
    """One tokenised window of one example: ``offsets`` ``[T, 2]`` are ``-1`` outside the context."""

    example: int
    input_ids: list[int]
    token_type_ids: list[int] | None
    offsets: np.ndarray


class ExtractiveQA:
    """Extractive QA over questions that carry their context and answer offsets (e.g. ``task=squad``).

    Args:
        metric: the dev metric that selects the epoch, ``"f1"`` (SQuAD's headline) or ``"em"``.
        stride: tokens of overlap between consecutive windows of a long context (lowered, for
            one example, to what its window holds when its question leaves less room).
        max_answer_tokens: the longest span evaluation may predict.

    ``counts`` after :meth:`rows`: ``{split}_questions``, ``{split}_windows`` (rows made),
    ``{split}_strides_lowered`` (questions whose window has room for at most ``stride`` context
    tokens) and ``answers_outside_windows`` (training questions skipped: no window holds their
    whole answer).
    """

    name = "extractive_qa"

    def __init__(self, metric: Metric = "f1", stride: int = 64, max_answer_tokens: int = 30) -> None:
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 0:
            raise TaskError(f"downstream.stride must be a whole number of tokens ≥ 0, got {stride!r}")
        if isinstance(max_answer_tokens, bool) or not isinstance(max_answer_tokens, int) or max_answer_tokens < 1:
            raise TaskError(f"downstream.max_answer_tokens must be a whole number ≥ 1, got {max_answer_tokens!r}")
        self.metric, self.stride, self.max_answer_tokens = check_metric(metric), stride, max_answer_tokens
        self.counts: dict[str, int] = {}

    def rows(self, task: Task, split: Split, tokenizer: PreTrainedTokenizerBase, kind: str,
             max_length: int) -> list[dict[str, Any]]:
        """One row per window; training keeps only the windows that hold the whole answer."""
        check_kind(kind)
        if not tokenizer.is_fast:
            raise TaskError("downstream=extractive_qa needs a fast tokenizer (its character offsets map spans "
                            "back to the context); load one with use_fast=True")
        examples = list(task.qa(split))
        spans = [answer_chars(example) for example in examples]
        windows, lowered = encode_windows(examples, tokenizer, max_length, self.stride)
        rows = []
        for window in windows:
            row: dict[str, Any] = {"input_ids": torch.tensor(window.input_ids),
                                   "offsets": torch.from_numpy(window.offsets), "index": window.example}
            if window.token_type_ids is not None and kind == "masked_lm":
                row["token_type_ids"] = torch.tensor(window.token_type_ids)
            if split == "train":
                tokens = answer_tokens(window.offsets, *spans[window.example])
                if tokens is None:
                    continue
                row["start_positions"], row["end_positions"] = tokens
            else:
                example = examples[window.example]
                row["context"], row["answers"] = example.context, (example.answer, *example.aliases)
            rows.append(row)
        self.counts[f"{split}_questions"], self.counts[f"{split}_windows"] = len(examples), len(rows)
        self.counts[f"{split}_strides_lowered"] = lowered
        if split == "train":
            self.counts["answers_outside_windows"] = len(examples) - len({row["index"] for row in rows})
            if examples and not rows:
                raise TaskError(f"no training window of {max_length} tokens holds a whole answer; raise "
                                "model.max_length, or downstream.stride to at least the longest answer's tokens")
        return rows

    def collate(self, pad_token_id: int) -> Callable[[Sequence[dict[str, Any]]], dict[str, Any]]:
        return partial(pad_windows, pad_token_id=pad_token_id)

    def module(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, kind: str,
               options: FinetuneOptions, seed: int) -> pl.LightningModule:
        return ExtractiveQAFineTuning(model, kind, options.learning_rate, options.weight_decay,
                                      options.warmup_fraction, max_answer_tokens=self.max_answer_tokens,
                                      metric=self.metric, seed=seed,
                                      decay_norms_and_biases=options.decay_norms_and_biases)


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise TaskError(f"downstream=extractive_qa fine-tunes a masked_lm or seq2seq model's encoder, got kind "
                        f"{kind!r}; set model.kind to one of {list(KINDS)}")
    return kind


def answer_chars(example: QAExample) -> tuple[int, int]:
    """The answer's ``[start, end)`` characters in its context, surrounding whitespace left out (no token holds it)."""
    if example.context is None or example.answer_start is None:
        raise TaskError(
            f"question {example.question!r} has no context or answer offset: downstream=extractive_qa needs questions "
            "with their context and answer offsets, e.g. task=squad; bioworld's questions are closed-book: use "
            "downstream=closed_book_qa"
        )
    start, answer = example.answer_start, example.answer
    if example.context[start : start + len(answer)] != answer:
        found = example.context[start : start + len(answer)]
        raise TaskError(f"question {example.question!r}: answer {answer!r} is not at answer_start={start} of its "
                        f"context (found {found!r}); fix the offset in the data, or load SQuAD with bad_offsets=skip")
    if not answer.strip():
        raise TaskError(f"question {example.question!r} has an empty answer; extractive QA needs a span")
    return start + len(answer) - len(answer.lstrip()), start + len(answer.rstrip())


def encode_windows(examples: Sequence[QAExample], tokenizer: PreTrainedTokenizerBase, max_length: int,
                   stride: int) -> tuple[list[Window], int]:
    """Every example's ``(question, context)`` windows, in example order, and how many examples got a lower stride.

    The tokenizer refuses a stride as large as the context room of a window, so an example whose
    question leaves ``r ≤ stride`` context tokens is encoded with stride ``r - 1``.
    """
    questions, contexts = [e.question for e in examples], [e.context for e in examples]
    if not examples:
        return [], 0
    lengths = np.asarray([len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]])
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True) - lengths
    if (room < 1).any():
        worst = int(room.argmin())
        raise TaskError(
            f"model.max_length={max_length} cannot hold question {questions[worst]!r} ({lengths[worst]} tokens) "
            "with its special tokens and any context token; raise model.max_length"
        )
    strides = np.minimum(stride, room - 1)
    windows = []
    for group_stride in np.unique(strides):
        chosen = np.flatnonzero(strides == group_stride)
        encoded = tokenizer([questions[i] for i in chosen], [contexts[i] for i in chosen], truncation="only_second",
                            max_length=max_length, stride=int(group_stride), return_overflowing_tokens=True,
                            return_offsets_mapping=True)
        types = encoded.get("token_type_ids")
        for w, source in enumerate(encoded["overflow_to_sample_mapping"]):
            in_context = np.asarray([s == 1 for s in encoded.sequence_ids(w)])
            offsets = np.asarray(encoded["offset_mapping"][w], dtype=np.int64).reshape(-1, 2)
            windows.append(Window(int(chosen[source]), encoded["input_ids"][w], None if types is None else types[w],
                                  np.where(in_context[:, None], offsets, -1)))
    windows.sort(key=lambda window: window.example)  # stable: each example's windows stay in order
    return windows, int((strides < stride).sum())


def answer_tokens(offsets: np.ndarray, start: int, end: int) -> tuple[int, int] | None:
    """The first and last token of characters ``[start, end)``; ``None`` unless the window holds them all.

    ``offsets`` ``[T, 2]``, ``-1`` outside the context.
    """
    context = np.flatnonzero(offsets[:, 0] >= 0)
    if not len(context) or offsets[context[0], 0] > start or offsets[context[-1], 1] < end:
        return None
    first = context[np.searchsorted(offsets[context, 1], start, side="right")]  # first token ending after start
    last = context[np.searchsorted(offsets[context, 0], end, side="left") - 1]  # last token starting before end
    return (int(first), int(last)) if first <= last else None


def pad_windows(rows: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Rows → a batch: ``input_ids``, ``token_type_ids`` ``[B, L]``, ``offsets`` ``[B, L, 2]`` (padded with the pad id,
    0, -1), ``attention_mask`` ``[B, L]``, positions ``Long[B]``; other fields as lists."""
    fill = {"input_ids": pad_token_id, "token_type_ids": 0, "offsets": -1}
    batch: dict[str, Any] = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        if key in fill:
            batch[key] = torch.nn.utils.rnn.pad_sequence(values, batch_first=True, padding_value=fill[key])
        else:
            batch[key] = torch.tensor(values, dtype=torch.long) if key in POSITIONS else values
    lengths = torch.tensor([len(row["input_ids"]) for row in rows])
    batch["attention_mask"] = (torch.arange(batch["input_ids"].shape[1]) < lengths[:, None]).long()
    return batch


def best_spans(start_logits: Tensor, end_logits: Tensor, offsets: Tensor,
               max_answer_tokens: int) -> tuple[Tensor, Tensor, Tensor]:
    """The best span of each window: ``(score Float[B], char_start Long[B], char_end Long[B])``.

    Candidates are context tokens ``i ≤ j < i + max_answer_tokens`` scored ``start[i] + end[j]``,
    searched at once over the ``[B, L, L]`` score matrix under a band mask. A window without a
    context token scores ``-inf``. Args: logits ``[B, L]``; ``offsets`` ``Long[B, L, 2]``, -1 outside the context.
    """
    length = start_logits.shape[1]
    context = offsets[..., 0] >= 0
    band = torch.ones(length, length, dtype=torch.bool, device=offsets.device).triu().tril(max_answer_tokens - 1)
    allowed = band & context[:, :, None] & context[:, None, :]
    scores = start_logits.float()[:, :, None] + end_logits.float()[:, None, :]
    best, flat = scores.masked_fill(~allowed, float("-inf")).flatten(1).max(dim=1)
    rows = torch.arange(len(flat), device=flat.device)
    return best, offsets[rows, flat // length, 0], offsets[rows, flat % length, 1]


def keep_best(best: dict[int, Candidate], index: int, candidate: Candidate) -> None:
    """Records ``candidate`` for example ``index`` if it beats the one there (ties keep the earlier)."""
    if index not in best or candidate[0] > best[index][0]:
        best[index] = candidate


def best_answers(start_logits: Tensor, end_logits: Tensor, offsets: Tensor, indices: Sequence[int],
                 contexts: Sequence[str], max_answer_tokens: int) -> dict[int, Candidate]:
    """Per example index, the best ``(score, answer text)`` over its windows in this batch."""
    scores, starts, ends = best_spans(start_logits, end_logits, offsets, max_answer_tokens)
    best: dict[int, Candidate] = {}
    for index, score, start, end, context in zip(indices, scores.tolist(), starts.tolist(), ends.tolist(), contexts,
                                                 strict=True):
        keep_best(best, index, (score, context[start:end]))
    return best


def encoder_of(model: PreTrainedModel, kind: str) -> torch.nn.Module:
    """The part of ``model`` that reads the input: a masked LM's ``base_model``, a seq2seq model's encoder."""
    return model.get_encoder() if check_kind(kind) == "seq2seq" else model.base_model


class ExtractiveQAFineTuning(pl.LightningModule):
    """Fine-tunes the pre-trained model's encoder (in place) with a new span head; logs ``{split}/em``, ``{split}/f1``.

    Only the encoder and the head are submodules: the language-model head is neither trained nor
    checkpointed (an output embedding tied to the input embedding is the encoder's, and moves with it).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        kind: str = "masked_lm",
        learning_rate: float = 5e-4,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.06,
        max_answer_tokens: int = 30,
        metric: Metric = "f1",
        seed: int = 0,
        decay_norms_and_biases: bool = True,
    ) -> None:
        super().__init__()
        check_metric(metric)
        self.save_hyperparameters(ignore=["model"])
        self.encoder = encoder_of(model, kind)
        self.head = span_head(self.encoder, model.config, seed)
        self._types = "token_type_ids" in inspect.signature(self.encoder.forward).parameters
        self._best: dict[int, Candidate] = {}
        self._gold: dict[int, tuple[str, ...]] = {}
        self.scores: dict[str, dict[str, float]] = {}  # latest exact scores per split, as Python floats

    def forward(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """Start and end logits ``[B, L]``, padding at the dtype's minimum."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self._types and "token_type_ids" in batch:
            inputs["token_type_ids"] = batch["token_type_ids"]
        logits = self.head(self.encoder(**inputs).last_hidden_state)
        logits = logits.masked_fill(~batch["attention_mask"].bool()[..., None], torch.finfo(logits.dtype).min)
        start, end = logits.unbind(dim=-1)
        return start, end

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        start, end = self(batch)
        loss = (torch.nn.functional.cross_entropy(start, batch["start_positions"])
                + torch.nn.functional.cross_entropy(end, batch["end_positions"])) / 2
        self.log("finetune/loss", loss, prog_bar=True, batch_size=len(batch["index"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        with torch.no_grad():
            start, end = self(batch)
        found = best_answers(start, end, batch["offsets"], batch["index"], batch["context"],
                             self.hparams.max_answer_tokens)
        for index, candidate in found.items():
            keep_best(self._best, index, candidate)
        self._gold.update(zip(batch["index"], batch["answers"], strict=True))

    test_step = validation_step

    def on_validation_epoch_start(self) -> None:
        self._best, self._gold = {}, {}

    on_test_epoch_start = on_validation_epoch_start

    def _log_scores(self, split: str) -> None:
        best, gold = self._gathered()
        order = sorted(gold)
        self.scores[split] = qa_scores([best[i][1] for i in order], [gold[i] for i in order])
        for metric, value in self.scores[split].items():
            self.log(f"{split}/{metric}", value, prog_bar=metric == self.hparams.metric,
                     sync_dist=self.trainer.world_size > 1)
        self._best, self._gold = {}, {}

    def _gathered(self) -> tuple[dict[int, Candidate], dict[int, tuple[str, ...]]]:
        """Every rank's best candidates, the best per example kept (DDP may put an example's windows on
        several ranks, and pads the split with repeats)."""
        if self.trainer.world_size == 1:
            return self._best, self._gold
        shards: list[Any] = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(shards, (self._best, self._gold))
        best: dict[int, Candidate] = {}
        gold: dict[int, tuple[str, ...]] = {}
        for shard_best, shard_gold in shards:
            for index, candidate in shard_best.items():
                keep_best(best, index, candidate)
            gold.update(shard_gold)
        return best, gold

    def on_validation_epoch_end(self) -> None:
        self._log_scores("dev")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def configure_optimizers(self):
        return adamw_with_warmup(self.named_parameters(), self.hparams.learning_rate, self.hparams.weight_decay,
                                 self.hparams.warmup_fraction, int(self.trainer.estimated_stepping_batches),
                                 decay_norms_and_biases=self.hparams.decay_norms_and_biases)


def span_head(encoder: torch.nn.Module, config: Any, seed: int) -> torch.nn.Linear:
    """``Linear(hidden, 2)``, normal weights at the model's init std drawn from a generator of its own (the global
    RNG is left untouched), zero bias."""
    weight = next(encoder.parameters())
    head = torch.nn.utils.skip_init(torch.nn.Linear, config.hidden_size, 2, device=weight.device, dtype=weight.dtype)
    std = getattr(config, "initializer_range", None) or getattr(config, "init_std", None) or 0.02
    generator = torch.Generator(device=weight.device).manual_seed(seed)
    with torch.no_grad():
        torch.nn.init.normal_(head.weight, std=std, generator=generator)
        head.bias.zero_()
    return head
