"""Sharing this machine's CPU cores between processes: the search's workers and final runs, the study's cells."""

from __future__ import annotations

import os

import torch

from maskpolicy.meta.config import ConfigError

AUTO = "auto"


def share_cores(processes: int) -> int:
    """Torch threads per process so ``processes`` processes do not oversubscribe the machine's cores.

    Two processes with a thread per core each thrash a small machine (measured 5–10× slower).
    """
    threads = max(1, (os.cpu_count() or 1) // processes)
    torch.set_num_threads(threads)
    return threads


def process_count(value: int | str, setting: str) -> int:
    """``auto`` → one process per CPU core; otherwise a positive integer, checked (``setting`` names it in errors)."""
    if value == AUTO:
        return os.cpu_count() or 1
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{setting} must be a positive number of processes or {AUTO!r} (one per CPU core), "
                          f"got {value!r}")
    return value
