"""Content hashes (SHA-256, hex) of files and texts: one implementation for every cache key and checksum."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

CHUNK = 1 << 20


def update_with_file(digest: hashlib._Hash, path: str | os.PathLike) -> None:
    """Feeds a file's bytes to ``digest`` a megabyte at a time (weights can be gigabytes)."""
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    update_with_file(digest, path)
    return digest.hexdigest()


def texts_sha256(texts: Iterable[str]) -> str:
    """One hash of several texts in order (each ends with a NUL, so ["ab", "c"] and ["a", "bc"] differ)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()
