"""Score targets: which positions the cumulative estimate masks and scores (``score.target``).

The rest of a sequence stays visible, so a target A is scored as ``log p(x_A | x_rest)``
(see :mod:`.estimate`). Over every held-out token the score rewards predicting template
words; over the tokens that carry facts it measures whether the facts were stored.

* ``all``        every ordinary token (text) or every position (tractable tasks); the default.
* ``entities``   text: tokens inside the held-out documents' entity spans (gold spans, or the
  task's tagger's where a document has none). Label-free.
* ``answers``    text: tokens of the QA-dev answer spans inside their contexts (uses dev labels).
* ``positions``  tractable tasks: the 0-based positions of ``score.positions``, in every sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import torch
from torch import Tensor

from maskpolicy.meta.scoring.estimators import MLLError
from maskpolicy.tasks.base import TractableTask

TEXT_TARGETS = ("all", "entities", "answers")
TRACTABLE_TARGETS = ("all", "positions")
TARGETS = ("all", "entities", "answers", "positions")


def check_target(target: str, positions: Sequence[int] | None, task_name: str, *, tractable: bool) -> None:
    """Refuses a target the task cannot give, and ``score.positions`` without ``score.target=positions``."""
    if target not in TARGETS:
        raise MLLError(f"unknown score.target {target!r}; choose one of {', '.join(TEXT_TARGETS)} (text tasks) "
                       f"or {', '.join(TRACTABLE_TARGETS)} (tractable tasks)")
    if tractable and target not in TRACTABLE_TARGETS:
        raise MLLError(f"score.target={target} needs text with spans; tractable task {task_name!r} has none: use "
                       "score.target=positions score.positions=[...] (0-based) or score.target=all")
    if not tractable and target not in TEXT_TARGETS:
        raise MLLError(f"score.target=positions picks positions of a tractable task's sequences (ppca, hmm); for "
                       f"text task {task_name!r} use score.target=entities, answers or all")
    if target == "positions" and positions is None:
        raise MLLError("score.target=positions needs the positions: score.positions=[1,4,6] (0-based)")
    if target != "positions" and positions is not None:
        raise MLLError(f"score.positions is set but score.target={target}; add score.target=positions, "
                       "or drop score.positions")


def position_mask(positions: Sequence[int], batch: int, length: int) -> Tensor:
    """``Bool[batch, length]``: True at ``positions`` (0-based, distinct, in ``[0, length)``) in every row."""
    positions = list(positions)
    if not positions:
        raise MLLError("score.positions is empty; give at least one position, e.g. score.positions=[0]")
    if not all(isinstance(p, Integral) and not isinstance(p, bool) for p in positions):
        raise MLLError(f"score.positions must be integers (0-based), got {positions}")
    outside = [int(p) for p in positions if not 0 <= p < length]
    if outside:
        raise MLLError(f"score.positions {outside} lie outside the sequences' {length} positions (0 … {length - 1}); "
                       f"give 0-based positions below {length}")
    if len(set(positions)) < len(positions):
        raise MLLError(f"score.positions repeats a position: {positions}; list each position once")
    mask = torch.zeros(length, dtype=torch.bool)
    mask[torch.tensor(positions, dtype=torch.long)] = True
    return mask.expand(batch, -1).clone()


def exact_target_log_likelihood(task: TractableTask, data: Tensor, scored: Tensor | None) -> Tensor:
    """``log p(x_A | x_rest) = log p(x) − log p(x_rest)`` per row, ``Float64[B]``; ``log p(x)`` when ``scored`` is None.

    ``scored`` ``Bool[B, D]`` is the target A of each row; a row with none gives exactly 0.
    """
    if scored is None:
        return task.log_likelihood(data)
    difference = task.log_likelihood(data) - task.log_likelihood(data, ~scored)
    return torch.where(scored.any(1), difference, 0.0)
