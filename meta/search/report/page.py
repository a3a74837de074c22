"""Reads what the report shows out of the study, the leaderboard and the curves, and renders the page.

All markup lives in ``report.html.j2`` (autoescaped); this module hands it plain values, embedded
figures and the objectives, whose labels and directions name every objective value on the page.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import optuna
from optuna.trial import FrozenTrial, TrialState

from maskpolicy.meta.results.files import write_text
from maskpolicy.meta.results.metrics import METRICS
from maskpolicy.meta.results.metrics import label as registered_label
from maskpolicy.meta.search.objectives import MLL, Objective, better, downstream_axis, pruning_monitor
from maskpolicy.meta.search.report import figures, importance
from maskpolicy.meta.search.report.figures import Curve, Panel, Point

FAMILY = "family"
STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
          TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
SECTIONS = {"summary": "Summary", "leaderboard": "Leaderboard", "history": "Optimisation history",
            "importances": "Parameter importances", "mll": "MLL score vs downstream metric",
            "curves": "S_m curves of the best policies", "pareto": "Pareto front",
            "learning-curves": "Learning curves (intermediate values)"}


def write_report(path: Path, study: optuna.Study, leaderboard: Sequence[Mapping[str, Any]],
                 correlation: Mapping[str, Any] | None, curves: Mapping[str, Mapping[str, Any]],
                 objectives: Sequence[Objective], title: str = "maskpolicy search",
                 targeted: Mapping[str, Any] | None = None) -> Path:
    """Writes the study's HTML report atomically and returns its path.

    Args:
        path: the report file (``report.html``); an existing directory means ``<path>/report.html``.
        study: the finished (or interrupted) Optuna study; ``trial.values`` align with ``objectives``.
        leaderboard: the final re-runs' rows, best first by the first objective.
        correlation: the rank correlation between the MLL score and dev EM over completed trials, or None.
        targeted: the same for the entity-token score (``score.targets`` with ``entities``), or None.
        curves: leaderboard label → ``{"family", "rate": [...], "S": [...]}``, S_m of the best policies.
        objectives: what the study optimised, in the order of ``trial.values``.
        title: the page title.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "report.html"
    objectives = tuple(objectives)
    if [objective.direction for objective in objectives] != [d.name.lower() for d in study.directions]:
        raise ValueError(f"the study's directions {[d.name.lower() for d in study.directions]} are not those of the "
                         f"objectives {[objective.name for objective in objectives]}")
    return write_text(path, _template().render(_context(study, leaderboard, correlation, curves, objectives, title)
                                                  | {"targeted": _correlation(targeted, objectives)}))


def _context(study: optuna.Study, leaderboard: Sequence[Mapping[str, Any]], correlation: Mapping[str, Any] | None,
             curves: Mapping[str, Mapping[str, Any]], objectives: Sequence[Objective], title: str) -> dict[str, Any]:
    drawn = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE or _reported(t)]
    colours = figures.family_colours([*map(_family, drawn), *(row["family"] for row in leaderboard),
                                      *(curve["family"] for curve in curves.values())])
    sections = [name for name in SECTIONS if name != "pareto" or len(objectives) > 1]
    return {
        "title": title, "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "sections": sections, "titles": SECTIONS,
        "number": {name: index + 1 for index, name in enumerate(sections)},
        "study_name": study.study_name, "objectives": objectives, "first": objectives[0],
        "counts": _counts(study), "best": _best(study, objectives),
        "leaderboard": leaderboard, "columns": [(name, metric.label) for name, metric in METRICS.items()],
        "history": _history(study, objectives, colours), "failures": _failures(study),
        "completed": len(_trials(study, TrialState.COMPLETE)), "importances": _importances(study, objectives),
        "scatter": _scatter(study, objectives, colours), "correlation": _correlation(correlation, objectives),
        "x_label": MLL.label, "y_label": downstream_axis(objectives).label,
        "curves": _rate_curves(curves, colours), "pareto": _pareto(study, objectives),
        "monitor": pruning_monitor(objectives), "learning_curves": _learning_curves(study, objectives, colours),
    }


def metric_label(metric: str) -> str:
    """How the page names a per-run metric: the registry's label (an unregistered name is its own label)."""
    return registered_label(metric)


# --- trials -------------------------------------------------------------------------------------------------------


def _trials(study: optuna.Study, *states: TrialState) -> list[FrozenTrial]:
    return sorted(study.get_trials(deepcopy=False, states=states), key=lambda trial: trial.number)


def _family(trial: FrozenTrial) -> str:
    """The trial's policy family ("?" when it failed before choosing one)."""
    return str(trial.params.get(FAMILY, "?"))


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _reported(trial: FrozenTrial) -> list[tuple[int, float]]:
    """The trial's finite intermediate values, by step."""
    return [(step, value) for step, value in sorted(trial.intermediate_values.items()) if _finite(value)]


def _metric(trial: FrozenTrial, metric: str) -> float | None:
    value = (trial.user_attrs.get("metrics") or {}).get(metric)
    return value if _finite(value) else None


def _params(params: Mapping[str, Any], family: str | None) -> list[tuple[str, str]]:
    """Parameters as (key, short value); the family itself and its own key prefix left out."""
    prefix = f"{family}." if family else None
    return [(key[len(prefix):] if prefix and key.startswith(prefix) else key, _param_value(value))
            for key, value in params.items() if key != FAMILY]


def _param_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str, separators=(",", ":"))
    return str(value)


def _trial_row(trial: FrozenTrial, objectives: Sequence[Objective]) -> dict[str, Any]:
    return {"number": trial.number, "family": _family(trial), "params": _params(trial.params, _family(trial)),
            "values": list(zip(objectives, trial.values or (), strict=False))}


# --- sections -----------------------------------------------------------------------------------------------------


def _counts(study: optuna.Study) -> list[tuple[str, int]]:
    trials = study.get_trials(deepcopy=False)
    return [(name, sum(trial.state == state for trial in trials)) for state, name in STATES.items()]


def _best(study: optuna.Study, objectives: Sequence[Objective]) -> dict[str, Any] | None:
    """The completed trial with the best value of the first objective."""
    first, best = better(objectives[0]), None
    for trial in _trials(study, TrialState.COMPLETE):
        if _finite(trial.values[0]) and (best is None or first(trial.values[0], best.values[0])):
            best = trial
    return None if best is None else _trial_row(best, objectives)


def _pareto(study: optuna.Study, objectives: Sequence[Objective]) -> list[dict[str, Any]] | None:
    """The trials on the Pareto front, best first by the first objective (None for a single objective)."""
    if len(objectives) < 2:
        return None
    front = sorted(study.best_trials, key=lambda trial: -objectives[0].sign * trial.values[0])
    return [_trial_row(trial, objectives) for trial in front]


def _failures(study: optuna.Study) -> list[dict[str, Any]]:
    return [{"number": trial.number, "family": _family(trial), "reason": trial.user_attrs.get("failure")}
            for trial in _trials(study, TrialState.FAIL)]


def _history(study: optuna.Study, objectives: Sequence[Objective], colours: Mapping[str, str]) -> str | None:
    """Each objective by trial number; a pruned trial's last report goes in the panel of the objective it tracked."""
    completed, monitor = _trials(study, TrialState.COMPLETE), pruning_monitor(objectives)
    # only the monitor's own values (after the fine-tuning offset): a probe value is in other units
    offset = int((study.user_attrs.get("pruning") or {}).get("finetune_offset") or 0)
    pruned = []
    for trial in _trials(study, TrialState.PRUNED):
        values = [value for step, value in _reported(trial) if step >= offset]
        if values:
            pruned.append(Point(trial.number, values[-1], _family(trial)))
    panels = [Panel(objective.label, objective.direction == "maximize",
                    [Point(t.number, t.values[index], _family(t)) for t in completed if _finite(t.values[index])],
                    pruned if objective is monitor else ())
              for index, objective in enumerate(objectives)]
    if not any(panel.completed or panel.pruned for panel in panels):
        return None
    return figures.png_base64(figures.history(panels, colours))


def _importances(study: optuna.Study, objectives: Sequence[Objective]) -> list[dict[str, Any]]:
    if len(_trials(study, TrialState.COMPLETE)) < 2:
        return []
    return importance.blocks(study, objectives[0].label)


def _scatter(study: optuna.Study, objectives: Sequence[Objective], colours: Mapping[str, str]) -> dict[str, Any]:
    """The MLL score against the downstream's dev metric per completed trial, both read from the trial's metrics."""
    x, y = MLL.metric, downstream_axis(objectives).metric
    trials = [t for t in _trials(study, TrialState.COMPLETE) if _metric(t, x) is not None and _metric(t, y) is not None]
    if not trials:
        return {"png": None, "front": False}
    # the ringed front is the study's own only when the study optimised exactly these two quantities
    ringed = {objective.metric for objective in objectives} == {x, y} and len(objectives) == 2
    front = {trial.number for trial in study.best_trials} if ringed else set()
    points = [Point(_metric(t, x), _metric(t, y), _family(t)) for t in trials]
    ring = [(_metric(t, x), _metric(t, y)) for t in trials if t.number in front]
    figure = figures.scatter(points, ring, MLL.label, downstream_axis(objectives).label, colours)
    return {"png": figures.png_base64(figure), "front": bool(ring)}


def _correlation(correlation: Mapping[str, Any] | None, objectives: Sequence[Objective]) -> dict[str, Any] | None:
    if not correlation:
        return None
    return dict(correlation) | {"x_label": metric_label(correlation.get("x", MLL.metric)),
                                "y_label": metric_label(correlation.get("y", downstream_axis(objectives).metric))}


def _rate_curves(curves: Mapping[str, Mapping[str, Any]], colours: Mapping[str, str]) -> str | None:
    """S_m per masking rate of each best policy; a missing value is NaN, which breaks the line there."""
    lines = []
    for label, curve in curves.items():
        pairs = zip(curve.get("rate") or [], curve.get("S") or [], strict=False)
        points = [(rate, value if _finite(value) else math.nan) for rate, value in pairs if _finite(rate)]
        if any(_finite(value) for _, value in points):
            lines.append(Curve(label, curve["family"], points))
    return figures.png_base64(figures.rate_curves(lines, colours)) if lines else None


@dataclass(frozen=True)
class _Stage:
    """One kind of value a trial reports to the pruner: its steps ``[start, stop)``, shown from ``start``."""

    xlabel: str
    label: str
    start: int
    stop: float


def _learning_curves(study: optuna.Study, objectives: Sequence[Objective],
                     colours: Mapping[str, str]) -> list[dict[str, str]]:
    """What the pruner saw, one figure per stage: the pre-training probe per step, the monitored value per
    fine-tuning epoch (reported after an offset, ``study.user_attrs["pruning"]``)."""
    plan = study.user_attrs.get("pruning") or {}
    offset = int(plan.get("finetune_offset") or 0)
    stages = []
    if plan.get("probe_every"):
        stages.append(_Stage("pre-training step", f"{plan.get('probe_target')}-token score (nats/token)", 0, offset))
    monitor = pruning_monitor(objectives)
    if monitor:
        stages.append(_Stage("fine-tuning epoch", monitor.label, offset, math.inf))
    trials = [trial for trial in _trials(study, *STATES) if _reported(trial)]
    figures_ = []
    for stage in stages:
        lines = []
        for trial in trials:
            reported = _reported(trial)
            points = [(step - stage.start, value) for step, value in reported if stage.start <= step < stage.stop]
            stopped_here = trial.state == TrialState.PRUNED and stage.start <= reported[-1][0] < stage.stop
            if points:
                lines.append(Curve(str(trial.number), _family(trial), points, stopped_here))
        if lines:
            figure = figures.learning_curves(lines, stage.label, colours, stage.xlabel)
            figures_.append({"png": figures.png_base64(figure), "xlabel": stage.xlabel, "label": stage.label})
    return figures_


# --- rendering ----------------------------------------------------------------------------------------------------


def _number(value: Any, digits: int = 3) -> str:
    """A float with ``digits`` decimals, or an em dash for a missing value."""
    return f"{value:.{digits}f}" if _finite(value) else "—"


def _count(value: Any) -> str:
    """A whole number with thousands separators."""
    return f"{value:,.0f}" if _finite(value) else "—"


@cache
def _template() -> jinja2.Template:
    environment = jinja2.Environment(loader=jinja2.PackageLoader("maskpolicy.meta.search.report", ""),
                                     autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                     lstrip_blocks=True)
    environment.filters.update(number=_number, count=_count, params=_params)
    environment.tests["finite"] = _finite
    return environment.get_template("report.html.j2")
