"""What a run shows a person, and what goes to its log file instead.

The console shows this project's own lines and, when a person watches a terminal, progress
bars: pre-training's optimiser steps of its budget, fine-tuning's epochs, scoring's batches.
Under ``CI=true``, or when standard output is a file or a pipe, there are no bars. The training
libraries' chatter (Lightning's hardware lines and tips, checkpoint restores, warnings,
Transformers' weight-writing bars) goes to the run's log file only: :func:`quiet_libraries`
for a command's own log, :func:`run_log` for one run inside a search (its own file, no bars).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import logging
import math
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from tqdm.auto import tqdm

LIBRARY_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning", "transformers", "optuna", "py.warnings")
_BARS_ALLOWED = contextvars.ContextVar("maskpolicy_bars_allowed", default=True)
T = TypeVar("T")


def interactive() -> bool:
    """Whether a person watches: standard output is a terminal and ``CI`` is not set to true."""
    return os.environ.get("CI", "").strip().lower() not in ("true", "1", "yes") and sys.stdout.isatty()


def show_bars() -> bool:
    """Progress bars are drawn only for a person watching, and never inside a search's trial."""
    return _BARS_ALLOWED.get() and interactive()


def _project_directories() -> tuple[str, ...]:
    found = []
    for package in ("maskpolicy.policies", "maskpolicy.tasks", "maskpolicy.meta"):
        spec = importlib.util.find_spec(package)
        found += list(spec.submodule_search_locations or []) if spec else []
    return tuple(found)


def _not_from_library(record: logging.LogRecord) -> bool:
    """Whether a record is for the console: this project's own lines and warnings, not the libraries'."""
    if record.name == "py.warnings":  # the message starts with the warning's file
        return record.getMessage().startswith(_project_directories())
    return not any(record.name == name or record.name.startswith(name + ".") for name in LIBRARY_LOGGERS)


def quiet_libraries() -> None:
    """The libraries' records go through the root logger's handlers (Hydra's log file), but not to the console.

    Called at the start of a command's job, after Hydra set up its logging.
    """
    logging.captureWarnings(True)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if type(h) is not logging.StreamHandler]
        logger.propagate = True
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and _not_from_library not in handler.filters:
            handler.addFilter(_not_from_library)
    _library_bars(False)


def _library_bars_on() -> bool:
    from transformers.utils import logging as transformers_logging

    return transformers_logging.is_progress_bar_enabled()


def _library_bars(enabled: bool) -> None:
    from transformers.utils import logging as transformers_logging

    (transformers_logging.enable_progress_bar if enabled else transformers_logging.disable_progress_bar)()


@contextlib.contextmanager
def no_bars() -> Iterator[None]:
    """No progress bars inside the block (e.g. a measurement made while another bar is on screen)."""
    token = _BARS_ALLOWED.set(False)
    try:
        yield
    finally:
        _BARS_ALLOWED.reset(token)


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[None]:
    """For one run inside a search: the libraries' records and warnings go to ``path`` only, and no bars are drawn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    saved = [(logger.handlers, logger.propagate) for logger in loggers]
    capturing = _warnings_captured()
    logging.captureWarnings(True)
    for logger in loggers:
        logger.handlers, logger.propagate = [handler], False
    bars_were_on = _library_bars_on()
    _library_bars(False)
    try:
        with no_bars():
            yield
    finally:
        _library_bars(bars_were_on)
        for logger, (handlers, propagate) in zip(loggers, saved, strict=True):
            logger.handlers, logger.propagate = handlers, propagate
        logging.captureWarnings(capturing)
        handler.close()


def _warnings_captured() -> bool:
    import warnings

    return getattr(warnings.showwarning, "__module__", "") == "logging"


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterable[T]:
    """``items`` with a progress bar when :func:`show_bars`, else unchanged."""
    if not show_bars():
        return items
    return tqdm(items, desc=description, total=total, leave=False, dynamic_ncols=True)


class StageProgressBar(TQDMProgressBar):
    """Lightning's bar for a step budget (pre-training: optimiser steps done of ``max_steps``) or an epoch budget
    (fine-tuning: ``epoch e/E``), where the stock bar restarts every epoch and shows no total."""

    def __init__(self, stage: str) -> None:
        super().__init__(leave=False)
        self.stage = stage

    def init_train_tqdm(self) -> Any:
        bar = super().init_train_tqdm()
        bar.set_description(self.stage, refresh=False)
        return bar

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        if trainer.max_steps > 0:
            if bar.total != trainer.max_steps:
                bar.reset(total=trainer.max_steps)
            return
        bar.reset(total=None if math.isinf(self.total_train_batches) else int(self.total_train_batches))
        bar.set_description(f"{self.stage} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.max_steps <= 0:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        bar = self.train_progress_bar
        if bar is not None and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)
