"""Language models: any Hugging Face masked LM or seq2seq model, or a tiny one built from a config.

A checkpoint rarely holds every weight the run's model class has (a sentence encoder has no
masked-LM head): what was loaded, what is new (initialised here, from the run's seed) and what the
checkpoint had that the model does not use is kept in a :class:`LoadReport` for ``results.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
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

log = logging.getLogger(__name__)
Kind = Literal["masked_lm", "seq2seq"]
AUTO_CLASSES = {"masked_lm": AutoModelForMaskedLM, "seq2seq": AutoModelForSeq2SeqLM}
OTHER_KIND_CONFIG = {"masked_lm": "hf_seq2seq", "seq2seq": "hf_masked_lm"}
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class LoadReport:
    """Which weights of a pre-trained model came from its checkpoint.

    Attributes:
        source: the name or folder it was loaded from.
        architecture: the checkpoint's model type (``bert``, ``bart``, …).
        model_class: the class the run built (``BertForMaskedLM``, …).
        loaded: how many of the model's parameter tensors the checkpoint gave.
        new: the model's parameters the checkpoint lacks, initialised here (e.g. a masked-LM head).
        unused: the checkpoint's weights this model has no place for (e.g. a pooler).
        mismatched: weights present in both with different shapes (re-initialised).
    """

    source: str
    architecture: str
    model_class: str
    loaded: int
    new: tuple[str, ...] = ()
    unused: tuple[str, ...] = ()
    mismatched: tuple[str, ...] = ()


@dataclass
class ModelSpec:
    """How to get a tokenizer and a model; the Hydra ``model/`` configs build this.

    Args:
        kind: ``"masked_lm"`` (BERT-style encoder) or ``"seq2seq"`` (BART/T5-style).
        pretrained: Hugging Face model name or local path; ``None`` builds a
            randomly initialised model of type ``architecture`` from ``config``.
        architecture: a ``transformers`` model type (``"bert"``, ``"bart"``, …): what is built from
            ``config`` when ``pretrained`` is ``None`` (``None``: ``"bert"``); with ``pretrained``,
            what the checkpoint must be (``None``: any).
        config: keyword arguments of that architecture's config class.
        tokenizer: tokenizer name or path; ``None`` trains a WordPiece tokenizer
            of ``vocab_size`` on the task's corpus (offline default).
        max_length: longest row in tokens; longer documents follow ``overflow``.
        overflow: ``"chunk"``, ``"truncate"`` or ``"error"`` for longer documents.
        attn_implementation: ``"eager"`` keeps double backward (meta-learning) possible.
    """

    kind: Kind = "masked_lm"
    pretrained: str | None = None
    architecture: str | None = None
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

    def build_tokenizer(self, texts: Iterable[str], keep: Iterable[str] = ()) -> PreTrainedTokenizerBase:
        """The configured tokenizer, or WordPiece trained on ``texts`` with every word of ``keep`` whole."""
        if self.tokenizer:
            check_tokenizer_folder(str(self.tokenizer))
            return check_tokenizer(load_tokenizer(self.tokenizer))
        return check_tokenizer(train_wordpiece(texts, self.vocab_size, keep=keep))

    def build_model(self, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
        return self.load(tokenizer)[0]

    def load(self, tokenizer: PreTrainedTokenizerBase) -> tuple[PreTrainedModel, LoadReport | None]:
        """The model and, for a pre-trained one, which of its weights the checkpoint gave (``None``: built from
        ``config``, every weight new). New weights are drawn from torch's global generator: seed it first."""
        options = {"attn_implementation": self.attn_implementation} if self.attn_implementation else {}
        if self.pretrained:
            model, report = self._from_pretrained(options)
        else:
            model, report = AUTO_CLASSES[self.kind].from_config(self._config(tokenizer), **options), None
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        self._check_length(model)
        return model, report

    def _from_pretrained(self, options: Mapping[str, Any]) -> tuple[PreTrainedModel, LoadReport]:
        source = str(self.pretrained)
        check_model_folder(source)
        try:
            config = AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise TaskError(f"could not load model {source!r} ({error}); give a local path or a reachable hub name"
                            ) from error
        self._check_architecture(config, source)
        try:
            model, info = AUTO_CLASSES[self.kind].from_pretrained(source, config=config, output_loading_info=True,
                                                                  **options)
        except (OSError, ValueError) as error:
            raise TaskError(f"could not load model {source!r} ({error}); give a local path or a reachable hub name"
                            ) from error
        new = tuple(sorted(info.get("missing_keys", ())))
        mismatched = tuple(sorted(str(entry[0] if isinstance(entry, tuple) else entry)
                                  for entry in info.get("mismatched_keys", ())))
        report = LoadReport(source, config.model_type, type(model).__name__,
                            loaded=sum(1 for name, _ in model.named_parameters() if name not in new),
                            new=new, unused=tuple(sorted(info.get("unexpected_keys", ()))), mismatched=mismatched)
        if new or mismatched:
            log.warning("%s from %s: %d weights are new (initialised from the run's seed, not loaded): %s",
                        report.model_class, source, len(new) + len(mismatched), ", ".join((*new, *mismatched)))
        return model, report

    def _check_architecture(self, config: Any, source: str) -> None:
        """Refuses a checkpoint of another model type than ``architecture`` says, or one without a class of this
        spec's kind (a BERT folder for a seq2seq run)."""
        if self.architecture and config.model_type != self.architecture:
            raise TaskError(
                f"model.pretrained={source!r} is a {config.model_type!r} checkpoint but model.architecture is "
                f"{self.architecture!r}; point model.pretrained at a {self.architecture} checkpoint, or set "
                "model.architecture=null to accept any"
            )
        if type(config) not in AUTO_CLASSES[self.kind]._model_mapping:
            raise TaskError(
                f"model.pretrained={source!r} is a {config.model_type!r} checkpoint, which has no {self.kind} model "
                f"class; give a {self.kind} checkpoint, or use model={OTHER_KIND_CONFIG[self.kind]} for this one"
            )

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
            return AutoConfig.for_model(self.architecture or "bert", vocab_size=len(tokenizer), **special,
                                        **dict(self.config))
        except ValueError as error:
            raise TaskError(f"unknown model architecture {self.architecture!r}: {error}") from error

    def _check_length(self, model: PreTrainedModel) -> None:
        positions = getattr(model.config, "max_position_embeddings", None)
        if positions is not None and self.max_length > positions:
            raise TaskError(
                f"model.max_length={self.max_length} exceeds the model's {positions} positions; set "
                f"model.max_length≤{positions} (longer documents are then chunked or truncated per model.overflow)"
            )


def check_model_folder(source: str) -> None:
    """A local model folder must hold a ``config.json`` and weights; a clear error naming what is missing.

    Names that are not local folders are left to Hugging Face (a hub name, when online).
    """
    folder = Path(source).expanduser()
    if not folder.is_dir():
        if folder.exists():
            raise TaskError(f"model.pretrained={source!r} is a file; give the folder that holds config.json and the "
                            "weights (or a Hugging Face name)")
        return
    if not (folder / "config.json").is_file():
        raise TaskError(f"model folder {source} has no config.json, so it is not a Hugging Face model folder; give the "
                        "folder save_pretrained wrote (config.json and model.safetensors)")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise TaskError(f"model folder {source} has no weights (looked for {', '.join(WEIGHT_FILES)}); copy the "
                        "weights there, or set model.pretrained=null to train a model from scratch")


def check_tokenizer_folder(source: str) -> None:
    """A local tokenizer folder must hold a tokenizer's vocabulary files; names that are not folders are left to
    Hugging Face."""
    folder = Path(source).expanduser()
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise TaskError(f"model folder {source} has no tokenizer (looked for {', '.join(TOKENIZER_FILES)}); set "
                        "model.tokenizer to a folder or name that has one, or model.tokenizer=null to train one on the "
                        "corpus")
