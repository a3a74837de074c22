"""Language models: any Hugging Face masked LM or seq2seq model, or a tiny one built from a config."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from maskpolicy.tasks.base import TaskError
from maskpolicy.tasks.text.tokenization import check_tokenizer, load_tokenizer, train_wordpiece

Kind = Literal["masked_lm", "seq2seq"]
AUTO_CLASSES = {"masked_lm": AutoModelForMaskedLM, "seq2seq": AutoModelForSeq2SeqLM}


@dataclass
class ModelSpec:
    """How to get a tokenizer and a model; the Hydra ``model/`` configs build this.

    Args:
        kind: ``"masked_lm"`` (BERT-style encoder) or ``"seq2seq"`` (BART/T5-style).
        pretrained: Hugging Face model name or local path; ``None`` builds a
            randomly initialised model of type ``architecture`` from ``config``.
        architecture: a ``transformers`` model type (``"bert"``, ``"bart"``, …),
            used when ``pretrained`` is ``None``.
        config: keyword arguments of that architecture's config class.
        tokenizer: tokenizer name or path; ``None`` trains a WordPiece tokenizer
            of ``vocab_size`` on the task's corpus (offline default).
        max_length: longest row in tokens; longer documents follow ``overflow``.
        overflow: ``"chunk"``, ``"truncate"`` or ``"error"`` for longer documents.
        attn_implementation: ``"eager"`` keeps double backward (meta-learning) possible.
    """

    kind: Kind = "masked_lm"
    pretrained: str | None = None
    architecture: str = "bert"
    config: Mapping[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    vocab_size: int = 4000
    max_length: int = 128
    overflow: Literal["chunk", "truncate", "error"] = "chunk"
    attn_implementation: str | None = "eager"

    def __post_init__(self) -> None:
        if self.kind not in AUTO_CLASSES:
            raise TaskError(f"model kind must be one of {sorted(AUTO_CLASSES)}, got {self.kind!r}")
        if self.overflow not in ("chunk", "truncate", "error"):
            raise TaskError(f"model.overflow must be 'chunk', 'truncate' or 'error', got {self.overflow!r}")

    def build_tokenizer(self, texts: Iterable[str]) -> PreTrainedTokenizerBase:
        tokenizer = load_tokenizer(self.tokenizer) if self.tokenizer else train_wordpiece(texts, self.vocab_size)
        return check_tokenizer(tokenizer)

    def build_model(self, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
        auto = AUTO_CLASSES[self.kind]
        options = {"attn_implementation": self.attn_implementation} if self.attn_implementation else {}
        if self.pretrained:
            try:
                model = auto.from_pretrained(self.pretrained, **options)
            except (OSError, ValueError) as error:
                raise TaskError(
                    f"could not load model {self.pretrained!r} ({error}); give a local path or a reachable hub name"
                ) from error
        else:
            model = auto.from_config(self._config(tokenizer), **options)
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        self._check_length(model)
        return model

    def _config(self, tokenizer: PreTrainedTokenizerBase):
        special = {
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        if self.kind == "seq2seq":
            special["decoder_start_token_id"] = tokenizer.bos_token_id
            special["forced_eos_token_id"] = tokenizer.eos_token_id
        try:
            return AutoConfig.for_model(self.architecture, vocab_size=len(tokenizer), **special, **dict(self.config))
        except ValueError as error:
            raise TaskError(f"unknown model architecture {self.architecture!r}: {error}") from error

    def _check_length(self, model: PreTrainedModel) -> None:
        positions = getattr(model.config, "max_position_embeddings", None)
        if positions is not None and self.max_length > positions:
            raise TaskError(
                f"model.max_length={self.max_length} exceeds the model's {positions} positions; set "
                f"model.max_length≤{positions} (longer documents are then chunked or truncated per model.overflow)"
            )
