"""The metric registry: every per-run number the project compares runs by, defined once.

A :class:`Metric` says how it is read from a run's :class:`~maskpolicy.meta.results.schema.PretrainResults`,
how it is labelled (a long label for figures, a short header for text tables), which way is better, how many
digits it is shown with, which split it comes from and, for a marginal-likelihood score, which ``score.targets``
entry computes it. The aggregator, the multirun summary, the leaderboard, the report's columns and labels, the
search's trial records, its objectives and its "is it computed?" checks all derive from :data:`METRICS`; a new
metric is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from maskpolicy.meta.results.schema import PretrainResults

Split = Literal["dev", "test", "held-out"]


@dataclass(frozen=True)
class Metric:
    """One per-run metric.

    Attributes:
        name: its key in aggregated rows, in trial records and in ``leaderboard.json``.
        label: how figures and the report name it.
        header: how text tables head its column.
        meaning: one line for the report.
        read: its value for a run; ``None`` when the run has none.
        direction: ``"maximize"`` or ``"minimize"``: which way is better.
        split: where it comes from: the downstream's ``dev`` or ``test`` questions, or ``held-out`` text (the
            scores). A search never sees a ``test`` metric while it runs: they are not recorded on trials.
        score_target: the ``score.targets`` entry that computes it (``None``: not a score).
        digits: decimals in tables.
        width: the text table column's minimum width.
    """

    name: str
    label: str
    header: str
    meaning: str
    read: Callable[[PretrainResults], float | None]
    direction: Literal["maximize", "minimize"] = "maximize"
    split: Split = "dev"
    score_target: str | None = None
    digits: int = 3
    width: int = 15

    @property
    def on_trials(self) -> bool:
        """Whether the search records it on every trial (everything but the test split)."""
        return self.split != "test"


def _target_score(target: str) -> Callable[[PretrainResults], float | None]:
    if target == "all":
        return lambda run: run.mll.nats_per_token if run.mll else None
    return lambda run: found.nats_per_token if (found := run.mll_targets.get(target)) else None


def _score(name: str, target: str, label: str, header: str, meaning: str, width: int) -> Metric:
    return Metric(name, label, header, meaning, _target_score(target), split="held-out", score_target=target,
                  digits=2, width=width)


_ALL = (
    Metric("dev_em", "dev EM", "dev EM", "downstream validation exact match, in [0, 1]",
           lambda run: run.downstream.dev_em),
    Metric("dev_f1", "dev F1", "dev F1", "downstream validation token F1 (SQuAD normalisation), in [0, 1]",
           lambda run: run.downstream.dev_f1),
    Metric("test_em", "test EM", "test EM", "downstream test exact match, in [0, 1]",
           lambda run: run.downstream.test_em, split="test"),
    Metric("test_f1", "test F1", "test F1", "downstream test token F1 (SQuAD normalisation), in [0, 1]",
           lambda run: run.downstream.test_f1, split="test"),
    _score("mll_nats_per_token", "all", "MLL score (nats/token)", "MLL nats/token",
           "marginal-likelihood score of the pre-trained model on held-out text, in nats per token", 17),
    _score("mll_entities_nats_per_token", "entities", "entity-token MLL (nats/token)", "MLL entities",
           "marginal-likelihood score of the entity tokens of held-out text given the rest, in nats per token: "
           "label-free (score.targets must include entities)", 14),
    _score("mll_answers_nats_per_token", "answers", "answer-token MLL (nats/token)", "MLL answers",
           "marginal-likelihood score of the dev questions' answer tokens given the rest of their context, in "
           "nats per token (score.targets must include answers)", 13),
)
METRICS: dict[str, Metric] = {metric.name: metric for metric in _ALL}
TRIAL_METRICS: tuple[str, ...] = tuple(name for name, metric in METRICS.items() if metric.on_trials)
SCORE_OF_TARGET: dict[str, Metric] = {metric.score_target: metric for metric in _ALL if metric.score_target}


def metric(name: str) -> Metric:
    """The registered metric ``name``; a ``KeyError`` naming the registered ones otherwise."""
    if name not in METRICS:
        raise KeyError(f"no metric {name!r}: the registered ones are {list(METRICS)}")
    return METRICS[name]


def label(name: str) -> str:
    """A metric's label; an unregistered name is its own label."""
    return METRICS[name].label if name in METRICS else name
