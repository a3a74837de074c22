"""The training kernel below the pipeline: the configured trainer, its device checks, and masked-LM pre-training.

:mod:`.pipeline` (intermediate pre-training, fine-tuning) and :mod:`.base` (the general-text base) both build
their trainers and pre-train through this module, so neither needs the other for it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from maskpolicy.meta.config import ConfigError, build
from maskpolicy.meta.console import StageProgressBar, show_bars
from maskpolicy.meta.results.files import write_atomic
from maskpolicy.tasks.training.datamodule import RowsDataModule
from maskpolicy.tasks.training.pretraining import MaskedPretraining

STAGE_NAMES = {"pretrain": "pre-training", "finetune": "fine-tuning", "base": "base pre-training"}


def on_gpu(trainer: DictConfig) -> bool:
    """Whether the trainer config trains on a GPU: a GPU accelerator, or ``auto`` with CUDA present."""
    accelerator = str(trainer.get("accelerator", "auto"))
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def check_devices(trainer: DictConfig) -> None:
    """Fails on ``trainer.devices`` beyond what this machine has: GPUs for a GPU accelerator (``auto`` with CUDA
    present), CPU cores otherwise (one DDP process per device)."""
    devices = trainer.get("devices", "auto")
    wanted = len(devices) if OmegaConf.is_list(devices) else devices
    if not isinstance(wanted, int) or wanted <= 0:
        return  # "auto", -1 (every device) and device strings are Lightning's to check
    asked, available, unit = ("GPUs", torch.cuda.device_count(), "GPUs") if on_gpu(trainer) else (
        "CPU processes", os.cpu_count() or 1, "CPU cores")
    if wanted > available:
        fix = f"set trainer.devices={available} or fewer" if available else "use trainer=cpu (trainer.accelerator=cpu)"
        raise ConfigError(f"trainer.devices={wanted} asks for {wanted} {asked}, but this machine has {available} "
                          f"{unit}; {fix}")


def _doubled(values: torch.Tensor) -> torch.Tensor:
    return values * 2


def compiled(cfg: DictConfig) -> bool:
    """Whether the run config asks for its pre-training step compiled (``pretrain.compile``, off by default)."""
    return bool(OmegaConf.select(cfg, "pretrain.compile", default=False))


def check_compile(cfg: DictConfig) -> None:
    """With ``pretrain.compile=true``, compiles and runs a one-line function on the trainer's device first, so a
    machine where ``torch.compile`` cannot build kernels (no C++ compiler for the CPU, no Triton for the GPU)
    fails here, before any training, rather than at the first step. Without it, nothing is checked."""
    if not compiled(cfg):
        return
    device = "cuda" if on_gpu(cfg.trainer) else "cpu"
    try:
        torch.compile(_doubled, fullgraph=True)(torch.ones(2, device=device))
    except Exception as error:  # noqa: BLE001 - a missing compiler or Triton surfaces as several error types
        reason = " ".join(str(error).split())[:300]
        raise ConfigError(f"pretrain.compile=true, but torch.compile cannot build kernels for {device} on this "
                          f"machine ({type(error).__name__}: {reason}); set pretrain.compile=false, or install "
                          f"what it names ({'Triton' if device == 'cuda' else 'a C++ compiler, g++ by default'})"
                          ) from error


def data_parallel(trainer: DictConfig) -> bool:
    """Whether the trainer config may start several DDP processes (Lightning re-runs the command for each)."""
    devices = trainer.get("devices", "auto")
    single = devices == 1 or (OmegaConf.is_list(devices) and len(devices) == 1)
    return str(trainer.get("strategy", "auto")).startswith("ddp") and not single


def check_single_job(trainer: DictConfig, multirun: bool) -> None:
    """Refuses DDP inside a Hydra multirun: Lightning would start each extra rank as a whole new sweep."""
    if multirun and data_parallel(trainer):
        raise ConfigError("trainer=ddp cannot run inside a multirun (-m): Lightning starts each extra rank by "
                          "re-running the command line, which would start the whole sweep again. Run the "
                          "combinations one at a time without -m, or use trainer=cpu / trainer=gpu in the sweep")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, through the project's atomic writer. Lightning's own stages a checkpoint in
    the system's temporary folder and copies it over, which on another disk is a plain copy: a full disk left a
    truncated ``.ckpt`` behind (seen on a 1 MB tmpfs). Here the temporary file is the checkpoint's sibling, so a
    failed write leaves the previous file, or none."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} writes local files and takes no storage_options")
        buffer = io.BytesIO()  # torch.save reports a failed file write as a RuntimeError; a bytes write says ENOSPC
        torch.save(checkpoint, buffer)
        write_atomic(path, lambda handle: handle.write(buffer.getbuffer()), binary=True)


def make_trainer(cfg: DictConfig, output_dir: Path, stage: str, **budget: Any) -> pl.Trainer:
    """The configured trainer (``cfg.trainer``) with the configured loggers (``cfg.logger``) writing under ``stage``."""
    check_devices(cfg.trainer)
    loggers = [build(node, f"logger {name}", save_dir=str(output_dir), name=stage, version="")
               for name, node in (cfg.get("logger") or {}).items()]
    factory = build(cfg.trainer, "trainer")
    bars = bool(cfg.trainer.get("enable_progress_bar", True)) and show_bars()
    callbacks = [*budget.pop("callbacks", ()), *([StageProgressBar(STAGE_NAMES.get(stage, stage))] if bars else [])]
    return factory(default_root_dir=output_dir, logger=loggers or False, enable_progress_bar=bars, callbacks=callbacks,
                   plugins=[AtomicCheckpointIO()], **budget)


def fit_masked_lm(cfg: DictConfig, module: MaskedPretraining, rows: Sequence[Mapping[str, Any]], pad_token_id: int,
                  output_dir: Path, stage: str, *, steps: int, batch_size: int, resume: Path | None = None,
                  **trainer_options: Any) -> pl.Trainer:
    """Masked-LM pre-training of ``module`` on ``rows`` for ``steps`` optimiser steps; returns the fitted trainer.

    ``resume``: a Lightning checkpoint to continue from (model, optimiser and mask stream); ``trainer_options``
    go to :func:`make_trainer` (callbacks, checkpointing, devices).
    """
    data = RowsDataModule(rows, pad_token_id, batch_size=batch_size)
    trainer = make_trainer(cfg, output_dir, stage, max_steps=steps, **trainer_options)
    trainer.fit(module, datamodule=data, ckpt_path=resume)
    return trainer


def over_ranks(trainer: pl.Trainer, count: int) -> int:
    """A count summed over the DDP ranks (each saw its own shard of the rows); the count itself in one process."""
    if trainer.world_size == 1:
        return count
    return int(trainer.strategy.reduce(torch.tensor(count, dtype=torch.float64), reduce_op="sum").item())
