"""What the search optimises: each objective's name, direction, how it is read from a run, what
pruning watches while a trial trains, and how it is labelled.

Everything that handles objective values — the study's directions, the trial's returned
values, the pruning callback, the best trial per family, the leaderboard's ranking, the
correlation and every label in the report — reads them from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from maskpolicy.meta.results.metrics import METRICS, SCORE_OF_TARGET, Metric, metric
from maskpolicy.meta.results.schema import PretrainResults


class ObjectiveError(ValueError):
    """The search was asked to optimise something it cannot."""


@dataclass(frozen=True)
class Objective:
    """One quantity the search optimises: a registered per-run metric under a name ``search.objectives`` uses.

    Attributes:
        name: how ``search.objectives`` names it.
        metric: the per-run metric it is (a key of :data:`~maskpolicy.meta.results.metrics.METRICS`, which gives
            its label, meaning, direction and, for a score, the ``score.targets`` entry that computes it).
        monitor: the metric logged during a trial's training that the pruning callback reports
            (``None``: the value exists only when the trial ends, so such a study is not pruned while fine-tuning).
        direction: ``"maximize"`` or ``"minimize"``; the metric's own direction unless given.
    """

    name: str
    metric: str
    monitor: str | None = None
    direction: Literal["maximize", "minimize"] | None = None

    def __post_init__(self) -> None:
        found = metric(self.metric)  # a KeyError naming the registered metrics
        if self.direction is None:
            object.__setattr__(self, "direction", found.direction)
        elif self.direction not in ("maximize", "minimize"):
            raise ObjectiveError(f"an objective's direction is maximize or minimize, got {self.direction!r}")

    @property
    def definition(self) -> Metric:
        return METRICS[self.metric]

    @property
    def label(self) -> str:
        return self.definition.label

    @property
    def meaning(self) -> str:
        return self.definition.meaning

    @property
    def score_target(self) -> str | None:
        """The ``score.targets`` entry every trial must compute for this objective (None: not a score)."""
        return self.definition.score_target

    @property
    def sign(self) -> float:
        """+1 when larger is better, −1 when smaller is."""
        return 1.0 if self.direction == "maximize" else -1.0

    @property
    def mode(self) -> str:
        """Lightning's spelling of the direction."""
        return "max" if self.direction == "maximize" else "min"

    def read(self, run: PretrainResults) -> float | None:
        """The objective's value for a finished run; None when the run has none (or a non-finite one)."""
        value = self.definition.read(run)
        return value if value is not None and math.isfinite(value) else None


DEV_EM = Objective("dev_em", "dev_em", "dev/em")
DEV_F1 = Objective("dev_f1", "dev_f1", "dev/f1")
MLL = Objective("mll", SCORE_OF_TARGET["all"].name)
MLL_ENTITIES = Objective("mll_entities", SCORE_OF_TARGET["entities"].name)
OBJECTIVES: dict[str, Objective] = {objective.name: objective for objective in (DEV_EM, DEV_F1, MLL, MLL_ENTITIES)}
DOWNSTREAM = "dev"   # the downstream stage's own dev metric: dev_em for closed-book QA, dev_f1 for extractive QA
BY_DOWNSTREAM_METRIC = {"em": DEV_EM, "f1": DEV_F1}


def resolve(names: Sequence[str], downstream_metric: str = "em") -> tuple[Objective, ...]:
    """The objectives ``search.objectives`` names, in order; ``dev`` is the downstream's own dev metric
    (``downstream.metric``: ``em`` → dev_em, ``f1`` → dev_f1)."""
    names = [BY_DOWNSTREAM_METRIC[downstream_metric].name if name == DOWNSTREAM else name for name in names]
    unknown = [name for name in names if name not in OBJECTIVES]
    if not names or unknown or len(set(names)) != len(names):
        raise ObjectiveError(f"search.objectives must be a non-empty list without repeats from "
                             f"{[DOWNSTREAM, *OBJECTIVES]}, got {names}")
    return tuple(OBJECTIVES[name] for name in names)


def downstream_objective(downstream_metric: str) -> Objective:
    """The objective of a downstream's own dev metric."""
    return BY_DOWNSTREAM_METRIC[downstream_metric]


def downstream_axis(objectives: Sequence[Objective]) -> Objective:
    """The downstream metric the label-free scores are compared with: the study's own dev objective (EM or F1), dev
    EM when it optimised none, whatever the other objectives are."""
    own = [objective for objective in objectives if objective in BY_DOWNSTREAM_METRIC.values()]
    return own[0] if own else DEV_EM


def pruned_objective(objectives: Sequence[Objective]) -> Objective | None:
    """The objective a pruner judges trials by: the study's only one (Optuna prunes single-objective studies only)."""
    return objectives[0] if len(objectives) == 1 else None


def pruning_monitor(objectives: Sequence[Objective]) -> Objective | None:
    """The objective whose monitor the pruner follows during fine-tuning: a single objective with a monitor, else
    None. An objective known only at the end of a trial (the MLL score) gives fine-tuning nothing to report; the
    pre-training probe can still prune such a study."""
    if len(objectives) == 1 and objectives[0].monitor is not None:
        return objectives[0]
    return None


def values(objectives: Sequence[Objective], run: PretrainResults) -> float | tuple[float, ...]:
    """What the trial returns to Optuna: one value, or a tuple for several objectives."""
    found = {objective.name: objective.read(run) for objective in objectives}
    missing = [name for name, value in found.items() if value is None]
    if missing:
        raise ObjectiveError(f"the trial produced no finite value for {missing}: {found}")
    chosen = tuple(found.values())
    return chosen[0] if len(chosen) == 1 else chosen


def better(objective: Objective) -> Callable[[float, float], bool]:
    """``better(a, b)``: whether ``a`` beats ``b`` under the objective's direction."""
    return lambda a, b: objective.sign * a > objective.sign * b
