"""Results on disk: atomic JSON writes and the versions that produced them."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

PACKAGES = ("maskpolicy", "torch", "pytorch-lightning", "transformers", "tokenizers", "hydra-core", "optuna",
            "higher", "numpy", "matplotlib")


def replace_readable(temporary: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Moves a finished temporary file over ``path``, readable as a normally created file would be.

    Temporary files are created private (0600); results are meant to be shared.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, path)
    return Path(path)


def make_readable_directory(path: str | os.PathLike) -> None:
    """Gives a ``tempfile.mkdtemp`` directory (created 0700) the permissions of a normal one."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """Writes JSON so a reader sees the old file or the whole new one, never a torn write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        json.dump(payload, handle, indent=2, sort_keys=False, allow_nan=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    return replace_readable(handle.name, path)


def write_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Writes a ``.npz`` of plain arrays (no pickled objects) via a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".npz", delete=False) as handle:
        np.savez(handle, **{name: np.asarray(array) for name, array in arrays.items()})
        handle.flush()
        os.fsync(handle.fileno())
    return replace_readable(handle.name, path)


def plain(node: Any) -> Any:
    """A config node as plain, JSON-ready Python containers (interpolations resolved)."""
    return OmegaConf.to_container(node, resolve=True)


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on, and Python's."""

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"python": platform.python_version(), **{name: installed(name) for name in PACKAGES}}
