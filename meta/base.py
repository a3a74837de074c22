"""The base checkpoint intermediate pre-training starts from: built once per content hash, shared by every run.

Intermediate pre-training continues a model that already knows the language. A tiny
model built from a config gets one here: a tokenizer trained on the general text plus the
task's corpus (every word of the corpus kept whole), and the model pre-trained with random
masking on the general text only (no fact the task asks about). A Hugging Face model
(``model.pretrained``) already knows the language but may lack weights its class needs (a
sentence encoder has no masked-LM head): its base is the model continued on the general
text, every weight (``base.train=all``) or only those its checkpoint lacked, the encoder
frozen (``base.train=head``).

General text is the task's own (``base.corpus=task``: bioworld's other people, SQuAD's
``task.general_path`` files) or Wikipedia's lead sections (``base.corpus=wikipedia``, the
optional asset ``make real`` installs), minus every article that shares a title or a
sentence with the task's texts (:mod:`maskpolicy.tasks.data.wikipedia`).

The base lives in ``base.cache_dir/<hash>/`` (safetensors weights, tokenizer files,
``card.json`` with the SHA-256 of every file), where ``<hash>`` covers everything it
depends on: the texts it is made from, the model config, the ``base`` settings and the
package versions. Runs, search trials and worker processes share it: the build happens
under an exclusive ``fcntl.flock`` on ``.<hash>.lock``, in a staging directory renamed
into place when complete, so a reader sees a whole base or none. An entry that fails its
checks (a missing file, a checksum mismatch, an unreadable card) is logged and rebuilt.
A pre-trained model's weights enter the hash by their files' SHA-256 when it is a local folder,
by its name otherwise. What the hash leaves out: the trainer (device, precision), which only
changes rounding.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from maskpolicy.meta.config import ConfigError, build, plain
from maskpolicy.meta.results.files import staged_directory, write_json
from maskpolicy.meta.results.schema import BaseRecord, versions
from maskpolicy.meta.training import compiled, fit_masked_lm
from maskpolicy.policies import RandomPolicy
from maskpolicy.tasks.base import Document, GeneralText, Task, TaskError, TitledText
from maskpolicy.tasks.data.wikipedia import WikipediaSummaries
from maskpolicy.tasks.hashing import file_sha256, texts_sha256
from maskpolicy.tasks.text.encoding import encode_documents
from maskpolicy.tasks.training.models import WEIGHT_FILES, LoadReport, ModelSpec
from maskpolicy.tasks.training.pretraining import MaskedPretraining, build_corruption

log = logging.getLogger(__name__)

CARD = "card.json"
WEIGHTS = "model.safetensors"
FORMAT = 2  # bump when the recipe below changes what a base holds
# the base node's keys in the hash
SETTINGS = ("corpus", "train", "steps", "corpus_size", "batch_size", "learning_rate", "rate", "seed")
CORPORA = ("task", "wikipedia")
TRAINED = ("all", "head")
HASHED_VERSIONS = ("maskpolicy", "torch", "pytorch-lightning", "transformers", "tokenizers")


@dataclass(frozen=True)
class Base:
    """Where a run's model and tokenizer come from, with the record of it for ``results.json``.

    ``model`` and ``tokenizer`` are a base directory or a Hugging Face name/path
    (``tokenizer`` ``None``: the run trains its own, as ``model.tokenizer=null`` says).
    """

    model: str
    tokenizer: str | None
    record: BaseRecord

    def apply(self, spec: ModelSpec) -> ModelSpec:
        """``spec`` loading its model and tokenizer from this base (kind and lengths unchanged)."""
        return replace(spec, pretrained=self.model, tokenizer=self.tokenizer)


@dataclass(frozen=True)
class GeneralCorpus:
    """The general text a base learns from, and what choosing it dropped (``report``, for the card)."""

    documents: Sequence[Document]
    report: Mapping[str, Any]


def base_checkpoint(cfg: DictConfig, task: Task, spec: ModelSpec) -> Base:
    """The base of a run (``cfg`` of the ``pretrain`` config's shape): found in the cache, or built there once."""
    settings = _settings(cfg.base, spec)
    general = general_text(cfg.base, task, settings)
    key = base_key(cfg, task, general.documents, spec)
    cache = Path(str(cfg.base.cache_dir)).expanduser()
    entry = cache / key
    if check_base(entry, key) is None:
        return _found(entry, key)
    with _locked(cache, key):
        problem = check_base(entry, key)
        if problem is None:  # another process built it while this one waited
            return _found(entry, key)
        if entry.exists():
            log.warning("the cached base %s is unusable (%s); rebuilding it", entry, problem)
        log.info("building the base model in %s: %d steps of random masking on general text", entry,
                 settings["steps"])
        started = time.perf_counter()
        with staged_directory(entry) as staging:
            card = _build(cfg, task, spec, general, key, staging)
        seconds = round(time.perf_counter() - started, 2)
        log.info("built the base in %.1f s (final loss %s)", seconds, card["final_loss"])
    return _base(entry, card, "built", seconds)


def base_key(cfg: DictConfig, task: Task, general: Sequence[Document], spec: ModelSpec | None = None) -> str:
    """The content hash of everything a built base depends on (SHA-256 hex)."""
    spec = spec or build_spec(cfg)
    payload = {
        "format": FORMAT,
        "task": task.name,
        "corpus": texts_sha256(document.text for document in task.corpus()),
        "general": texts_sha256(document.text for document in general),
        "model": plain(cfg.model),
        "weights": _weights_digest(spec.pretrained) if spec.pretrained else None,
        "base": _settings(cfg.base, spec),
        "versions": {name: versions().get(name) for name in HASHED_VERSIONS},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def check_base(entry: Path, key: str) -> str | None:
    """Why the cache entry cannot be used (missing, unreadable card, missing file, checksum mismatch), or ``None``."""
    if not entry.is_dir():
        return "not built"
    try:
        card = json.loads((entry / CARD).read_text(encoding="utf-8"))
        files = dict(card["files"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"unreadable {CARD}: {error}"
    if card.get("hash") != key:
        return f"{CARD} is for base {card.get('hash')!r}"
    if WEIGHTS not in files:
        return f"{CARD} lists no {WEIGHTS}"
    for name, digest in files.items():
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != digest:
            return f"{name} does not match its SHA-256 in {CARD}"
    return None


# -- building -------------------------------------------------------------------------------


def _build(cfg: DictConfig, task: Task, spec: ModelSpec, general: GeneralCorpus, key: str,
           directory: Path) -> dict[str, Any]:
    """Trains the tokenizer and the model into ``directory`` and writes its card; returns the card."""
    settings = _settings(cfg.base, spec)
    texts = [document.text for document in general.documents]
    # The tokenizer's vocabulary comes from the general text and the task's corpus: it learns which
    # words exist (every word of the task's corpus is kept whole, so each name and value stays one
    # token), not who has which value. The model below never sees the task's corpus.
    task_texts = [document.text for document in task.corpus()]
    tokenizer = spec.build_tokenizer([*texts, *task_texts], keep=task_texts)
    if spec.tokenizer is None and len(tokenizer) >= spec.vocab_size:
        log.warning("the base vocabulary is full (model.vocab_size=%d): rarer words are spelt in pieces; raise "
                    "model.vocab_size or lower base.corpus_size", spec.vocab_size)
    pl.seed_everything(settings["seed"], workers=True, verbose=False)
    model, loading = spec.load(tokenizer)
    trained = _trained_weights(model, loading, settings["train"])
    rows = encode_documents(texts, [document.entities for document in general.documents], tokenizer,
                            spec.max_length, spec.overflow)
    module = MaskedPretraining(model, RandomPolicy(settings["rate"]), build_corruption(spec.kind, tokenizer),
                               settings["learning_rate"], seed=settings["seed"],
                               compile=compiled(cfg))
    # one device, one process: a base is built once, by whichever run asks first, before any data-parallel ranks
    trainer = fit_masked_lm(cfg, module, rows, tokenizer.pad_token_id, directory / "logs", "base",
                            steps=settings["steps"], batch_size=settings["batch_size"], enable_checkpointing=False,
                            devices=1, strategy="auto")
    if trainer.global_step < settings["steps"]:  # Lightning returns normally after an interrupt
        raise RuntimeError(f"the base's pre-training stopped at step {trainer.global_step} of {settings['steps']}; "
                           "nothing was cached, and the next run builds it again")
    # a pre-trained model's vocabulary is its own, every row trained already; a built one's unread rows are not
    unread = None if spec.pretrained else _redraw_unread_words(model, rows, tokenizer, settings["seed"])
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if not (directory / WEIGHTS).is_file():
        raise ConfigError(f"saving the base wrote no {WEIGHTS} in {directory}; is safetensors installed?")
    loss = trainer.callback_metrics.get("pretrain/loss")
    card = {
        "format": FORMAT,
        "hash": key,
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "steps": trainer.global_step,
        "final_loss": None if loss is None else round(float(loss), 4),
        "corpus": {"size": settings["corpus_size"], "documents": len(general.documents), "rows": len(rows),
                   "tokens": module.tokens_seen, "vocabulary": len(tokenizer), "unread_tokens": unread,
                   **general.report},
        "settings": settings,
        "pretrained": None if loading is None else {**asdict(loading), "trained": trained},
        "task": {"name": task.name, "config": plain(cfg.task)},
        "model": plain(cfg.model),
        "versions": versions(),
        "files": {path.name: file_sha256(path) for path in sorted(directory.iterdir()) if path.is_file()},
    }
    write_json(directory / CARD, card)
    return card


def _redraw_unread_words(model: PreTrainedModel, rows: Sequence[Mapping[str, Any]],
                         tokenizer: PreTrainedTokenizerBase, seed: int) -> int:
    """Redraws the rows of the tokens the general text never contains (the task's own names) from the mean and
    spread of the rows it does, as new tokens get in a pre-trained model; returns how many.

    Trained, such a token's tied row only learnt to be unlikely (a softmax negative, never a target): an
    outlier input that intermediate pre-training would first have to undo. Redrawn rows stay distinct, so
    the model can still tell the task's people apart.
    """
    read = torch.zeros(len(tokenizer), dtype=torch.bool)
    for row in rows:
        read[torch.as_tensor(row["input_ids"])] = True
    read[tokenizer.all_special_ids] = True
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
            for parameter in (getattr(layer, "weight", None), getattr(layer, "bias", None)):
                if parameter is not None and parameter.shape[0] == len(read):
                    known = parameter[read]
                    noise = torch.randn(parameter[~read].shape, generator=generator, dtype=parameter.dtype)
                    parameter[~read] = known.mean(dim=0) + noise * known.std(dim=0)
    return int((~read).sum())


def _trained_weights(model: PreTrainedModel, loading: LoadReport | None, train: str) -> int:
    """Freezes what ``base.train=head`` keeps (every weight the checkpoint gave); returns how many tensors train."""
    if train == "all":
        return sum(1 for _ in model.parameters())
    new = set(loading.new) | set(loading.mismatched) if loading else set()
    if not new:
        raise ConfigError(f"base.train=head trains the weights the checkpoint {spec_source(loading)} lacks, but it "
                          "has them all; set base.train=all to continue every weight")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in new)
    return len(new)


def spec_source(loading: LoadReport | None) -> str:
    return repr(loading.source) if loading else "(none: built from a config)"


def general_text(node: Mapping[str, Any], task: Task, settings: Mapping[str, Any]) -> GeneralCorpus:
    """The base's general text: the task's own (``base.corpus=task``) or Wikipedia's, without the task's articles."""
    size = settings["corpus_size"]
    if settings["corpus"] == "wikipedia":
        texts = [document.text for document in task.corpus()]
        titles = task.titles() if isinstance(task, TitledText) else ()
        documents, report = WikipediaSummaries(node.get("wikipedia_path")).general_corpus(size, texts, titles)
        return GeneralCorpus(documents, {**report, "source": "wikipedia", "path": str(report.get("source"))})
    if not isinstance(task, GeneralText):
        raise TaskError(
            f"task {task.name!r} has no general text to pre-train a base model on (no general_corpus method); "
            "set base.corpus=wikipedia (Wikipedia's lead sections, `make real`) or base.enabled=false to pre-train "
            "from scratch"
        )
    general = task.general_corpus(size)
    if not general:
        raise TaskError(f"task {task.name!r} gave no general text; raise base.corpus_size or set base.enabled=false")
    return GeneralCorpus(general, {"source": "task"})


def build_spec(cfg: DictConfig) -> ModelSpec:
    return build(cfg.model, "model")


def _settings(node: Mapping[str, Any], spec: ModelSpec) -> dict[str, Any]:
    """The base node's training settings, checked (``corpus`` and ``train`` default to ``task`` and ``all``)."""
    node = {"corpus": "task", "train": "all", **{key: node.get(key) for key in node}}
    missing = [name for name in SETTINGS if node.get(name) is None]
    if missing:
        names = ", ".join(f"base.{name}" for name in missing)
        raise ConfigError(f"the base config lacks {names}; see the base node of conf/pretrain.yaml")
    settings = {name: plain(node[name]) for name in SETTINGS}
    if settings["corpus"] not in CORPORA:
        raise ConfigError(f"base.corpus must be one of {', '.join(CORPORA)}, got {settings['corpus']!r}")
    if settings["train"] not in TRAINED:
        raise ConfigError(f"base.train must be one of {', '.join(TRAINED)}, got {settings['train']!r}")
    if settings["train"] == "head" and not spec.pretrained:
        raise ConfigError("base.train=head keeps a pre-trained model's weights and trains only those its checkpoint "
                          "lacks, but this model is built from a config (model.pretrained is null); use base.train=all")
    for name in ("steps", "corpus_size", "batch_size"):
        if isinstance(settings[name], bool) or not isinstance(settings[name], int) or settings[name] < 1:
            raise ConfigError(f"base.{name} must be a positive integer, got {settings[name]!r} "
                              "(base.enabled=false pre-trains from scratch)")
    if not settings["learning_rate"] > 0:
        raise ConfigError(f"base.learning_rate must be positive, got {settings['learning_rate']!r}")
    return settings


# -- the cache ------------------------------------------------------------------------------


def _found(entry: Path, key: str) -> Base:
    card = json.loads((entry / CARD).read_text(encoding="utf-8"))
    log.info("using the cached base %s", entry)
    return _base(entry, card, "cache", 0.0)


def _base(entry: Path, card: Mapping[str, Any], source: str, seconds: float) -> Base:
    record = BaseRecord(source=source, hash=card["hash"], path=str(entry), steps=card["steps"],
                        corpus=dict(card["corpus"]), seconds=seconds)
    return Base(str(entry), str(entry), record)


@contextlib.contextmanager
def _locked(cache: Path, key: str) -> Iterator[None]:
    """Holds the exclusive lock of one cache entry; a clear error when the cache directory is not writable."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        # The lock file stays empty and in place (removing it would let two builders lock different files).
        handle = open(cache / f".{key}.lock", "a")  # noqa: SIM115 - closed below, after the lock is released
    except OSError as error:
        raise ConfigError(
            f"the base cache directory {cache} is not writable ({error}); set base.cache_dir (or the "
            "MASKPOLICY_CACHE environment variable) to a writable directory, or base.enabled=false"
        ) from error
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _weights_digest(pretrained: str) -> str:
    """A local model folder's weight files by content (SHA-256 of their digests); a hub name as itself."""
    folder = Path(pretrained).expanduser()
    files = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()] if folder.is_dir() else []
    return texts_sha256(file_sha256(path) for path in files) if files else pretrained
