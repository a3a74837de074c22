"""Downstream closed-book QA: encoding, fine-tuning and evaluation.

A masked LM answers as a cloze: ``[CLS] question [SEP] [MASK]…[MASK] [SEP]`` with
one ``[MASK]`` per answer token (so multi-token answers leak their length; the
default task keeps answers to one token). A seq2seq model generates the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from maskpolicy.policies import IGNORE_INDEX
from maskpolicy.tasks.base import QAExample
from maskpolicy.tasks.training.metrics import qa_scores
from maskpolicy.tasks.training.optim import adamw_with_warmup


def encode_qa(
    examples: Sequence[QAExample], tokenizer: PreTrainedTokenizerBase, kind: str, max_length: int
) -> list[dict[str, Any]]:
    """Rows with ``input_ids``, ``labels``, the gold ``answers`` (strings) and the example's ``index``.

    Cloze rows are the tokenizer's own question/answer pair encoding with every
    answer token replaced by the mask token, so any tokenizer's special-token
    template is respected.
    """
    questions, answers = [e.question for e in examples], [e.answer for e in examples]
    if kind == "seq2seq":
        inputs = tokenizer(questions, truncation=True, max_length=max_length)["input_ids"]
        targets = tokenizer(answers, add_special_tokens=False)["input_ids"]
        labels = [(target + [tokenizer.eos_token_id])[:max_length] for target in targets]
    else:
        encoded = tokenizer(questions, answers, truncation="only_first", max_length=max_length)
        inputs, labels = [], []
        for i, ids in enumerate(encoded["input_ids"]):
            in_answer = [source == 1 for source in encoded.sequence_ids(i)]
            inputs.append([tokenizer.mask_token_id if a else t for t, a in zip(ids, in_answer, strict=True)])
            labels.append([t if a else IGNORE_INDEX for t, a in zip(ids, in_answer, strict=True)])
    return [
        {"input_ids": torch.tensor(i), "labels": torch.tensor(y), "answers": (e.answer, *e.aliases), "index": n}
        for n, (i, y, e) in enumerate(zip(inputs, labels, examples, strict=True))
    ]


class QAFineTuning(pl.LightningModule):
    """Fine-tunes a pre-trained language model on QA pairs; logs ``{split}/em`` and ``{split}/f1``.

    The validation split ("dev") selects the checkpoint; the test split is scored once,
    with the selected checkpoint.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        kind: str = "masked_lm",
        learning_rate: float = 5e-4,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.06,
        max_answer_tokens: int = 16,
        decay_norms_and_biases: bool = True,
    ) -> None:
        super().__init__()
        self.model, self.tokenizer, self.kind = model, tokenizer, kind
        self.save_hyperparameters(ignore=["model", "tokenizer"])
        self._predictions: dict[int, tuple[str, Sequence[str]]] = {}  # example index → (prediction, gold answers)
        self.scores: dict[str, dict[str, float]] = {}  # latest exact scores per split, as Python floats

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss
        self.log("finetune/loss", loss, prog_bar=True, batch_size=len(batch["answers"]))
        return loss

    @torch.no_grad()
    def predict_answers(self, batch: dict[str, Any]) -> list[str]:
        if self.kind == "seq2seq":
            generated = self.model.generate(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                max_new_tokens=self.hparams.max_answer_tokens, do_sample=False,
            )
            return self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        guesses = logits.argmax(dim=-1)
        at_answer = batch["labels"] != IGNORE_INDEX
        return [self.tokenizer.decode(row[keep]) for row, keep in zip(guesses, at_answer, strict=True)]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        predictions = self.predict_answers(batch)
        self._predictions.update(zip(batch["index"], zip(predictions, batch["answers"], strict=True), strict=True))

    test_step = validation_step

    def _log_scores(self, split: str) -> None:
        predictions = self._gathered()
        ordered = [predictions[index] for index in sorted(predictions)]
        self.scores[split] = qa_scores([p for p, _ in ordered], [a for _, a in ordered])
        for metric, value in self.scores[split].items():
            self.log(f"{split}/{metric}", value, prog_bar=metric == "em", sync_dist=self.trainer.world_size > 1)
        self._predictions = {}

    def _gathered(self) -> dict[int, tuple[str, Sequence[str]]]:
        """Every rank's predictions (DDP splits the split and pads it with repeats, which the index removes)."""
        if self.trainer.world_size == 1:
            return self._predictions
        shards: list[dict] = [{} for _ in range(self.trainer.world_size)]
        torch.distributed.all_gather_object(shards, self._predictions)
        return {index: prediction for shard in shards for index, prediction in shard.items()}

    def on_validation_epoch_end(self) -> None:
        self._log_scores("dev")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def configure_optimizers(self):
        return adamw_with_warmup(self.model.named_parameters(), self.hparams.learning_rate, self.hparams.weight_decay,
                                 self.hparams.warmup_fraction, int(self.trainer.estimated_stepping_batches),
                                 decay_norms_and_biases=self.hparams.decay_norms_and_biases)
