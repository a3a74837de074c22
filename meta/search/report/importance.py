"""Parameter importances for the report: over all completed trials, and within each family.

Optuna computes and draws them (:func:`.figures.importances`); this module decides what is rated
and against which target, and turns any evaluator failure into a sentence rather than a missing
report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from maskpolicy.meta.search.report import figures

FAMILY = "family"
MIN_TRIALS_PER_FAMILY = 3


def target(study: optuna.Study) -> Callable[[FrozenTrial], float] | None:
    """What importance is measured against: the objective itself, or with several objectives the first one.

    Optuna's default evaluator (PED-ANOVA) treats a lower ``target`` as better, so a maximised first objective
    is negated; otherwise the importances would explain what makes it *low*.
    """
    if len(study.directions) == 1:
        return None
    sign = -1.0 if study.directions[0] == StudyDirection.MAXIMIZE else 1.0
    return lambda trial: sign * trial.values[0]


def blocks(study: optuna.Study, target_name: str) -> list[dict[str, Any]]:
    """The importance figures to show: overall first, then per family; each a dict for the template.

    A block has ``scope``, ``family`` (None overall), ``png`` and ``notes`` (Optuna's warnings, a fallback), or
    ``error`` instead of ``png`` when Optuna could not rate the parameters.
    """
    return [_overall(study, target_name), *_per_family(study, target_name)]


def _overall(study: optuna.Study, target_name: str) -> dict[str, Any]:
    try:
        return _block(study, None, target_name, "all completed trials", 6.5)
    except Exception as error:  # any evaluator failure only makes the section thinner; the report must be written
        reason = f"{type(error).__name__}: {error}"
    try:
        block = _block(study, [FAMILY], target_name, "the family alone", 6.5)
        return block | {"notes": [f"Optuna could not rate all parameters together ({reason})", *block["notes"]]}
    except Exception as error:
        return {"scope": "all completed trials", "family": None,
                "error": f"{reason}; for the family alone: {type(error).__name__}: {error}"}


def _per_family(study: optuna.Study, target_name: str) -> Iterator[dict[str, Any]]:
    by_family: dict[str, list[FrozenTrial]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        by_family.setdefault(str(trial.params.get(FAMILY, "?")), []).append(trial)
    for family, trials in sorted(by_family.items()):
        params = sorted({name for trial in trials for name in trial.params if name != FAMILY})
        if len(trials) < MIN_TRIALS_PER_FAMILY or not params:
            continue
        scope = f"{len(trials)} {family} trials"
        try:
            yield _block(_subset(study, trials), params, target_name, scope, 4.6) | {"family": family}
        except Exception as error:
            yield {"scope": scope, "family": family, "error": f"{type(error).__name__}: {error}"}


def _block(study: optuna.Study, params: list[str] | None, target_name: str, scope: str,
           width: float) -> dict[str, Any]:
    with _quiet():
        figure, notes = figures.importances(study, params, target(study), target_name, f"{scope}: {target_name}",
                                            width)
    return {"scope": scope, "family": None, "png": figures.png_base64(figure), "notes": notes}


def _subset(study: optuna.Study, trials: Sequence[FrozenTrial]) -> optuna.Study:
    """An in-memory study holding only the given trials, with the original directions."""
    with _quiet():
        subset = optuna.create_study(directions=study.directions)
        subset.add_trials(trials)
    return subset


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Optuna's log lines (study created, no completed trials) are not the report's business."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)
