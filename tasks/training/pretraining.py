"""Intermediate pre-training: batch → policy → corruption → model → loss."""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from maskpolicy.policies import MaskingPolicy, RateSchedule, mlm_corrupt, sentinel_corrupt, set_rate
from maskpolicy.tasks.text.encoding import token_batch
from maskpolicy.tasks.training.heads import masked_lm_loss
from maskpolicy.tasks.training.optim import adamw_with_warmup


class EncoderCorruption:
    """BERT 80/10/10 corruption, with random replacements drawn from non-special ids."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, mask_fraction: float = 0.8, random_fraction: float = 0.1):
        special = set(tokenizer.all_special_ids)
        self.replacement_ids = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
        self.mask_token_id = tokenizer.mask_token_id
        self.mask_fraction, self.random_fraction = mask_fraction, random_fraction

    def __call__(self, batch: dict[str, Tensor], mask: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        inputs, labels = mlm_corrupt(
            batch["input_ids"], mask, mask_token_id=self.mask_token_id, replacement_ids=self.replacement_ids,
            generator=generator, mask_fraction=self.mask_fraction, random_fraction=self.random_fraction,
        )
        return {"input_ids": inputs, "attention_mask": batch["attention_mask"], "labels": labels}


class Seq2SeqCorruption:
    """Denoising for BART/T5-style models: each masked span becomes one sentinel.

    ``target="spans"`` asks the decoder for the masked spans only, ``"full"`` for the
    whole original sequence. T5-style tokenizers (``<extra_id_k>`` tokens) get one
    sentinel per span; others share their mask token, as BART does.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, target: Literal["spans", "full"] = "spans"):
        extra = [t for t in tokenizer.all_special_tokens if t.startswith("<extra_id_")]
        extra.sort(key=lambda t: int(t.removeprefix("<extra_id_").removesuffix(">")))
        ids = tokenizer.convert_tokens_to_ids(extra) if extra else [tokenizer.mask_token_id]
        self.sentinel_ids = torch.tensor(ids)
        self.pad_token_id, self.eos_token_id, self.target = tokenizer.pad_token_id, tokenizer.eos_token_id, target

    def __call__(self, batch: dict[str, Tensor], mask: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        corrupted = sentinel_corrupt(
            batch["input_ids"], batch["attention_mask"], mask, sentinel_ids=self.sentinel_ids,
            pad_token_id=self.pad_token_id, target=self.target, eos_token_id=self.eos_token_id,
        )
        return {"input_ids": corrupted.input_ids, "attention_mask": corrupted.attention_mask,
                "labels": corrupted.labels}


def build_corruption(kind: str, tokenizer: PreTrainedTokenizerBase, **options: Any):
    """The corruption matching a model kind (``masked_lm`` or ``seq2seq``)."""
    if kind == "seq2seq":
        return Seq2SeqCorruption(tokenizer, target=options.get("target", "spans"))
    return EncoderCorruption(tokenizer, options.get("mask_fraction", 0.8), options.get("random_fraction", 0.1))


def corrupted_loss(model: PreTrainedModel, inputs: dict[str, Tensor]) -> Tensor:
    """The pre-training loss of one corrupted batch: seq2seq denoising (the decoder predicts the targets), or the
    masked LM with its head at the labelled positions only (the same loss as a full head)."""
    if model.config.is_encoder_decoder:
        return model(**inputs).loss
    return masked_lm_loss(model, **inputs)


class MaskedPretraining(pl.LightningModule):
    """Intermediate pre-training of a language model with a masking policy.

    Masks are drawn from the module's own ``torch.Generator`` (seeded with ``seed``
    plus the process rank), saved in checkpoints so a resumed run continues the
    same mask stream. With a ``schedule`` the policy's rate follows it, read off the
    global step (which a resumed run restores) before each batch.

    ``compile``: the loss (model forward included) runs through ``torch.compile``; the policy and the
    corruption stay eager (they draw from the generator). The weights and the checkpoint are the model's
    own, so what is saved is the same with it or without. The compiled step draws dropout masks with
    its own random numbers, so a compiled run is not bit-identical to an eager one.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        policy: MaskingPolicy,
        corruption,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.06,
        seed: int = 0,
        schedule: RateSchedule | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.model, self.policy, self.corruption, self.schedule = model, policy, corruption, schedule
        self.loss_of = torch.compile(corrupted_loss) if compile else corrupted_loss
        self.base_rate = getattr(policy, "rate", None)
        self.save_hyperparameters(ignore=["model", "policy", "corruption", "schedule"])
        self._generator: torch.Generator | None = None
        self._pending_generator_state: Tensor | None = None
        self.tokens_seen = 0
        self.masked_seen = 0

    @property
    def generator(self) -> torch.Generator:
        if self._generator is None or self._generator.device != self.device:
            self._generator = torch.Generator(device=self.device)
            self._generator.manual_seed(self.hparams.seed + self.global_rank)
            if self._pending_generator_state is not None:
                self._generator.set_state(self._pending_generator_state)
                self._pending_generator_state = None
        return self._generator

    def rate_at(self, step: int, total_steps: int) -> float | None:
        """The masking rate the schedule sets at ``step``; ``None`` without a schedule."""
        return None if self.schedule is None else self.schedule.rate_at(step, total_steps, self.base_rate)

    def rate_points(self, total_steps: int, points: int = 5) -> list[list[float]]:
        """``[step, rate]`` at ``points`` evenly spaced steps of the schedule (empty without one)."""
        if self.schedule is None or total_steps < 1:
            return []
        steps = sorted({round(i * (total_steps - 1) / (points - 1)) for i in range(points)})
        return [[step, round(self.rate_at(step, total_steps), 6)] for step in steps]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if self.schedule is not None:
            rate = self.rate_at(self.global_step, self.trainer.max_steps)
            set_rate(self.policy, rate)
            self.log("pretrain/rate", rate)
        mask = self.policy.select(token_batch(batch), self.generator)
        loss = self.loss_of(self.model, self.corruption(batch, mask, self.generator))
        self.tokens_seen += int(batch["attention_mask"].sum())
        self.masked_seen += int(mask.sum())
        self.log("pretrain/loss", loss, prog_bar=True)
        self.log("pretrain/mask_rate", mask.sum() / batch["maskable"].sum().clamp(min=1))
        return loss

    def configure_optimizers(self):
        return adamw_with_warmup(self.model.named_parameters(), self.hparams.learning_rate, self.hparams.weight_decay,
                                 self.hparams.warmup_fraction, int(self.trainer.estimated_stepping_batches))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mask_generator_state"] = self.generator.get_state()
        checkpoint["tokens_seen"], checkpoint["masked_seen"] = self.tokens_seen, self.masked_seen

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._pending_generator_state = checkpoint.get("mask_generator_state")
        self._generator = None
        self.tokens_seen = checkpoint.get("tokens_seen", 0)
        self.masked_seen = checkpoint.get("masked_seen", 0)
