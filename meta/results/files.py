"""Every file the project writes goes through here: written whole or not at all.

A file is written to a uniquely named temporary sibling, flushed to disk and moved over
its destination with ``os.replace``, so a reader (or a resumed run) sees the old file or
the complete new one, never a torn write, and two writers never share a temporary name.
Temporary files are created private; the finished file gets the permissions of a
normally created one, since results are meant to be shared.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

FULL_OR_READ_ONLY = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class DiskError(RuntimeError):
    """A run's disk filled up or turned read-only while the run wrote to it."""


@contextlib.contextmanager
def disk_errors(output_dir: str | os.PathLike) -> Iterator[None]:
    """Turns a full or read-only disk under a run into an error that names the fix (a re-run resumes)."""
    try:
        yield
    except OSError as error:
        if error.errno not in FULL_OR_READ_ONLY:
            raise
        raise DiskError(f"{error.strerror} while writing {error.filename or output_dir}: free space there (or make it "
                        "writable) and run the same command again; the files written so far are whole, and it "
                        "resumes from the last pre-training checkpoint") from error


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_atomic(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Calls ``write(handle)`` on a temporary file next to ``path``, then moves it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text_options = {} if binary else {"encoding": "utf-8", "newline": ""}
    with tempfile.NamedTemporaryFile("wb" if binary else "w", dir=path.parent, prefix=f".{path.name}.",
                                     delete=False, **text_options) as handle:
        temporary = handle.name
        try:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            with contextlib.suppress(OSError):  # closing flushes the buffer: on a full disk it fails again
                handle.close()
            os.unlink(temporary)
            raise
    try:
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda handle: handle.write(text))


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Pretty JSON; NaN and infinities are refused (they are not JSON)."""
    return write_text(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    def write(handle: IO) -> None:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    return write_atomic(path, write)


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """A ``.npz`` of plain arrays (no pickled objects)."""
    return write_atomic(path, lambda handle: np.savez(handle, **{k: np.asarray(v) for k, v in arrays.items()}),
                        binary=True)


def write_png(path: str | os.PathLike, figure: Any) -> Path:
    """A matplotlib figure as PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return write_atomic(path, lambda handle: handle.write(buffer.getvalue()), binary=True)


@contextlib.contextmanager
def staged_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty directory to fill; on success it replaces ``path`` whole, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())
        _swap_in(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def copy_directory(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copies a directory over ``path`` atomically."""
    with staged_directory(path) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
    return Path(path)


def _swap_in(staging: Path, path: Path) -> None:
    if not path.exists():
        os.replace(staging, path)
        return
    retired = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old."))
    os.replace(path, retired / path.name)
    os.replace(staging, path)
    shutil.rmtree(retired, ignore_errors=True)
