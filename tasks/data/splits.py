"""Train / dev / test splits by subject (a person, an article), shared by every data task."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from maskpolicy.tasks.base import SPLITS, Split, TaskError


def check_split(split: str) -> Split:
    if split not in SPLITS:
        raise TaskError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    return split  # type: ignore[return-value]


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validates QA-train/dev/test shares: three positive numbers summing to 1."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) <= 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise TaskError(
            f"split_fractions must be three positive shares (train, dev, test) summing to 1, got {list(fractions)}"
        )
    return fractions  # type: ignore[return-value]


def split_sizes(n: int, fractions: Sequence[float], what: str = "subjects") -> tuple[int, int, int]:
    """Train/dev/test sizes of ``n`` subjects (rounded; test takes the rest); each must be ≥ 1."""
    train, dev = (math.floor(f * n + 0.5) for f in fractions[:2])
    sizes = (train, dev, n - train - dev)
    if min(sizes) < 1:
        raise TaskError(
            f"{n} {what} are too few for split_fractions {list(fractions)}: the splits would have "
            f"{dict(zip(SPLITS, sizes, strict=True))} {what}; every split needs at least one"
        )
    return sizes


def split_subjects(subjects: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, Split]:
    """Assigns each distinct subject to train, dev or test: seeded shuffle, then cut by ``fractions``."""
    order = sorted(set(subjects))
    random.Random(f"split:{seed}").shuffle(order)
    train, dev, _ = split_sizes(len(order), fractions)
    return {subject: SPLITS[(i >= train) + (i >= train + dev)] for i, subject in enumerate(order)}
