"""The search's closing report: one self-contained HTML page a researcher can open offline.

Every figure is a matplotlib PNG rendered with the Agg canvas and embedded as base64, and the
styling is an inline ``<style>`` block, so the page fetches nothing and needs neither a network
nor the study's storage. Each section says in a sentence or two how to read it.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import numbers
import os
import re
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from itertools import accumulate
from pathlib import Path
from typing import Any

import optuna
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

__all__ = ["write_report"]

FAMILY = "family"
OBJECTIVE_MEANINGS = {
    "dev_em": "downstream validation exact match, in [0, 1]",
    "mll": "marginal-likelihood score of the pre-trained model, in nats/token",
}
STATE_NAMES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
               TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
MIN_TRIALS_PER_FAMILY_IMPORTANCE = 3
SECTION_HEADING = re.compile(r"<section id='([^']+)'><h2>\d+\. ([^<]+)</h2>")
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       margin: 0; background: #fafafa; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5em 2em 4em; background: #fff; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2.2em; }
h3 { margin-bottom: 0.3em; }
nav ol { columns: 2; padding-left: 1.2em; }
.how { color: #444; background: #f3f6fa; border-left: 4px solid #7aa3d6; padding: 0.5em 0.9em; }
.note { color: #555; font-size: 0.92em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; vertical-align: top; text-align: left; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fbfbfb; }
tr.best td { background: #fff3c4; font-weight: 600; }
code { font-size: 0.92em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92em; margin-top: 0.3em; }
.disagree { color: #a40000; font-weight: 600; }
"""


def write_report(
    path: Path,
    study: optuna.Study,
    leaderboard: Sequence[Mapping[str, Any]],
    correlation: Mapping[str, Any] | None,
    curves: Mapping[str, Mapping[str, list]],
    objectives: Sequence[str],
    title: str = "maskpolicy search",
) -> Path:
    """Writes the study's HTML report atomically and returns its path.

    Args:
        path: the report file (``report.html``); an existing directory means ``<path>/report.html``.
        study: the finished (or interrupted) Optuna study.
        leaderboard: the final re-runs' rows, best first.
        correlation: ``{"method", "rho", "p_value", "trials"}`` between the MLL score and dev EM, or None.
        curves: label → ``{"rate": [...], "S": [...]}``, the per-rate curve S_m of the best policies.
        objectives: the study's objective names, in the order of ``trial.values``.
        title: the page title.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "report.html"
    objectives = list(objectives)
    colours = _family_colours(study)
    sections = [
        _summary_section(study, objectives),
        _leaderboard_section(leaderboard),
        _history_section(study, objectives, colours),
        _importances_section(study),
        _mll_section(study, objectives, correlation, colours),
        _curves_section(curves),
    ]
    if len(study.directions) > 1:
        sections.append(_pareto_section(study, objectives))
    sections.append(_learning_curves_section(study, colours))
    _write_atomically(path, _document(title, sections))
    return path


# --- trials -------------------------------------------------------------------------------------------------------


def _family(trial: FrozenTrial) -> str:
    """The trial's policy family ("?" when it failed before choosing one)."""
    return str(trial.params.get(FAMILY, "?"))


def _trials(study: optuna.Study, *states: TrialState) -> list[FrozenTrial]:
    """The study's trials in the given states, by trial number."""
    return sorted(study.get_trials(deepcopy=False, states=states), key=lambda trial: trial.number)


def _is_finite(value: Any) -> bool:
    """True for a real, finite number."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _objective(trial: FrozenTrial, objectives: Sequence[str], name: str) -> float | None:
    """The trial's value of one named objective (the first value when the name is not an objective)."""
    if not trial.values:
        return None
    index = objectives.index(name) if name in objectives else 0
    return trial.values[index] if index < len(trial.values) else None


def _dev_em(trial: FrozenTrial, objectives: Sequence[str]) -> float | None:
    """The trial's downstream validation exact match."""
    return _objective(trial, objectives, "dev_em")


def _mll_score(trial: FrozenTrial, objectives: Sequence[str]) -> float | None:
    """The trial's marginal-likelihood score; the recorded attribute, else the ``mll`` objective."""
    score = trial.user_attrs.get("mll_nats_per_token")
    if score is None and "mll" in objectives:
        score = _objective(trial, objectives, "mll")
    return score if _is_finite(score) else None


def _last_intermediate(trial: FrozenTrial) -> tuple[int, float] | None:
    """The last finite (epoch, dev EM) the trial reported, or None."""
    reported = [(step, value) for step, value in sorted(trial.intermediate_values.items()) if _is_finite(value)]
    return reported[-1] if reported else None


def _best_by_first_objective(study: optuna.Study) -> FrozenTrial | None:
    """The completed trial with the best first objective (the single objective's best trial)."""
    completed = _trials(study, TrialState.COMPLETE)
    if not completed:
        return None
    sign = 1.0 if study.directions[0] == StudyDirection.MAXIMIZE else -1.0
    return max(completed, key=lambda trial: sign * trial.values[0])


def _family_colours(study: optuna.Study) -> dict[str, str]:
    """One fixed colour per family, shared by every figure."""
    families = sorted({_family(trial) for trial in study.get_trials(deepcopy=False)})
    return {family: PALETTE[index % len(PALETTE)] for index, family in enumerate(families)}


# --- text -------------------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    """Any value as escaped HTML text."""
    return html.escape(str(value))


def _number(value: Any, digits: int = 3) -> str:
    """A float with ``digits`` decimals, or an em dash for a missing value."""
    return f"{value:.{digits}f}" if _is_finite(value) else "—"


def _mean_spread(mean: Any, spread: Any, digits: int = 3) -> str:
    """``mean ± spread``; the spread is left out when it is unknown."""
    if not _is_finite(mean):
        return "—"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}" if _is_finite(spread) else f"{mean:.{digits}f}"


def _count(value: Any, unit: str = "") -> str:
    """A whole number with thousands separators."""
    return f"{value:,.0f}{unit}" if _is_finite(value) else "—"


def _param_value(value: Any) -> str:
    """A parameter value, short: floats to four significant digits, containers as compact JSON."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str, separators=(",", ":"))
    return str(value)


def _params_html(params: Mapping[str, Any], family: str | None = None) -> str:
    """Parameters as escaped ``key=value`` lines; the family and its own key prefix are left out."""
    prefix = f"{family}." if family else None
    lines = []
    for key, value in params.items():
        if key == FAMILY:
            continue
        shown = key[len(prefix):] if prefix and key.startswith(prefix) else key
        lines.append(f"<code>{_text(shown)}={_text(_param_value(value))}</code>")
    return "<br>".join(lines) if lines else "<span class='note'>(no parameters)</span>"


def _values_text(trial: FrozenTrial, objectives: Sequence[str]) -> str:
    """The trial's objective values as ``name = value`` pairs."""
    names = list(objectives) + [f"objective {i}" for i in range(len(objectives), len(trial.values or ()))]
    return ", ".join(f"{name} = {value:.4f}" for name, value in zip(names, trial.values or (), strict=False))


def _plot_label(text: Any) -> str:
    """A label matplotlib shows verbatim: no mathtext from ``$``, not hidden by a leading underscore."""
    label = str(text).replace("$", r"\$")
    return f" {label}" if label.startswith("_") else label


# --- figures ------------------------------------------------------------------------------------------------------


def _new_axes(width: float = 7.5, height: float = 3.8) -> tuple[Figure, Axes]:
    """A figure with one axis, drawn by the Agg canvas (no pyplot state, no display)."""
    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    axis.grid(True, color="#e5e5e5", linewidth=0.6)
    axis.set_axisbelow(True)
    return figure, axis


def _png_base64(figure: Figure) -> str:
    """The figure as a base64-encoded PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _legend_outside(axis: Axes, handles: list | None = None) -> None:
    """A legend to the right of the plot, so it never hides points."""
    if handles is not None:
        axis.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    elif axis.get_legend_handles_labels()[0]:
        axis.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)


def _family_handles(families: Sequence[str], colours: Mapping[str, str]) -> list[Line2D]:
    """Legend entries for the given families, in their colours."""
    return [Line2D([], [], color=colours[family], marker="o", linestyle="none", label=_plot_label(family))
            for family in sorted(set(families))]


def _history_figure(study: optuna.Study, objectives: Sequence[str], colours: Mapping[str, str]) -> str | None:
    """First objective by trial number: completed trials as dots, pruned ones as crosses, and the best so far."""
    completed = _trials(study, TrialState.COMPLETE)
    pruned = [(trial, _last_intermediate(trial)) for trial in _trials(study, TrialState.PRUNED)]
    pruned = [(trial, last) for trial, last in pruned if last is not None]
    if not completed and not pruned:
        return None
    figure, axis = _new_axes()
    for family in sorted({_family(trial) for trial in completed}):
        own = [trial for trial in completed if _family(trial) == family]
        axis.scatter([t.number for t in own], [t.values[0] for t in own], color=colours[family], s=28, zorder=3,
                     label=_plot_label(family))
    if pruned:
        axis.scatter([t.number for t, _ in pruned], [last[1] for _, last in pruned], marker="x", s=30, zorder=3,
                     color=[colours[_family(t)] for t, _ in pruned])
        axis.scatter([], [], marker="x", color="#555", label="pruned (last reported)")
    if completed:
        pick = max if study.directions[0] == StudyDirection.MAXIMIZE else min
        best = list(accumulate((trial.values[0] for trial in completed), pick))
        axis.step([t.number for t in completed], best, where="post", color="black", linewidth=1.2, label="best so far")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("trial number")
    axis.set_ylabel(_plot_label(objectives[0] if objectives else "objective"))
    _legend_outside(axis)
    return _png_base64(figure)


def _importance_figure(importances: Mapping[str, float], title: str) -> str:
    """Horizontal bars of parameter importance, the most important on top."""
    names = list(importances)[::-1]
    figure, axis = _new_axes(width=6.5, height=0.8 + 0.32 * max(len(names), 1))
    axis.barh([_plot_label(name) for name in names], [importances[name] for name in names], color="#4c78a8")
    for row, name in enumerate(names):
        axis.annotate(f"{importances[name]:.2f}", (importances[name], row), xytext=(3, 0), textcoords="offset points",
                      va="center", fontsize=8)
    axis.set_xlim(0, max([*importances.values(), 0.0]) * 1.15 or 1.0)
    axis.set_xlabel("importance (sums to 1)")
    axis.set_title(_plot_label(title), fontsize=10)
    return _png_base64(figure)


def _mll_scatter_figure(study: optuna.Study, objectives: Sequence[str], colours: Mapping[str, str]) -> str | None:
    """MLL score (x) against dev EM (y) per completed trial; with two objectives the Pareto front is ringed."""
    points = [(trial, _mll_score(trial, objectives), _dev_em(trial, objectives))
              for trial in _trials(study, TrialState.COMPLETE)]
    points = [(trial, x, y) for trial, x, y in points if x is not None and _is_finite(y)]
    if not points:
        return None
    figure, axis = _new_axes()
    for family in sorted({_family(trial) for trial, _, _ in points}):
        own = [(x, y) for trial, x, y in points if _family(trial) == family]
        axis.scatter(*zip(*own, strict=True), color=colours[family], s=30, zorder=3, label=_plot_label(family))
    if len(study.directions) > 1:
        front_numbers = {trial.number for trial in study.best_trials}
        front = sorted((x, y) for trial, x, y in points if trial.number in front_numbers)
        if front:
            axis.plot(*zip(*front, strict=True), color="black", linewidth=0.8, linestyle="--", zorder=2)
            axis.scatter(*zip(*front, strict=True), s=110, facecolors="none", edgecolors="black", linewidths=1.2,
                         zorder=4, label="Pareto front")
    axis.set_xlabel("MLL score (nats/token, higher is better)")
    axis.set_ylabel("dev EM")
    _legend_outside(axis)
    return _png_base64(figure)


def _rate_curves_figure(curves: Mapping[str, Mapping[str, list]]) -> str | None:
    """S_m against the masking rate m/D, one line per policy."""
    lines = {}
    for label, curve in curves.items():
        pairs = zip(curve.get("rate") or [], curve.get("S") or [], strict=False)
        points = [(rate, value) for rate, value in pairs if _is_finite(rate) and _is_finite(value)]
        if points:
            lines[label] = points
    if not lines:
        return None
    figure, axis = _new_axes()
    for index, (label, points) in enumerate(lines.items()):
        axis.plot(*zip(*points, strict=True), marker="o", markersize=3, linewidth=1.3,
                  color=PALETTE[index % len(PALETTE)], label=_plot_label(label))
    axis.set_xlabel("masking rate m / D")
    axis.set_ylabel("S_m (nats per token)")
    _legend_outside(axis)
    return _png_base64(figure)


def _learning_curves_figure(study: optuna.Study, colours: Mapping[str, str]) -> str | None:
    """Dev EM per fine-tuning epoch for every trial that reported any, a cross where pruning stopped one."""
    reporting = [trial for trial in _trials(study, *STATE_NAMES) if _last_intermediate(trial) is not None]
    if not reporting:
        return None
    figure, axis = _new_axes()
    for trial in reporting:
        points = [(step, value) for step, value in sorted(trial.intermediate_values.items()) if _is_finite(value)]
        colour = colours[_family(trial)]
        axis.plot(*zip(*points, strict=True), color=colour, linewidth=0.8, alpha=0.7)
        if trial.state == TrialState.PRUNED:
            axis.plot(*points[-1], marker="x", color=colour, markersize=6)
    handles = _family_handles([_family(trial) for trial in reporting], colours)
    handles.append(Line2D([], [], color="#555", marker="x", linestyle="none", label="pruned here"))
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("fine-tuning epoch")
    axis.set_ylabel("dev EM")
    _legend_outside(axis, handles)
    return _png_base64(figure)


# --- importances -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Silences Optuna's study-creation log lines and its small-sample warnings while importances are computed."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _importance_target(study: optuna.Study) -> Callable[[FrozenTrial], float] | None:
    """What importance is measured against: the objective itself, or with two objectives the first one.

    Optuna's default evaluator (PED-ANOVA) treats a lower ``target`` as better, so a maximised first objective
    is negated; otherwise the importances would explain what makes dev EM *low*.
    """
    if len(study.directions) == 1:
        return None
    sign = -1.0 if study.directions[0] == StudyDirection.MAXIMIZE else 1.0
    return lambda trial: sign * trial.values[0]


def _param_importances(study: optuna.Study, params: list[str] | None = None) -> dict[str, float]:
    """``optuna.importance.get_param_importances`` for the study's first objective."""
    with _quiet_optuna():
        return optuna.importance.get_param_importances(study, params=params, target=_importance_target(study))


def _family_study(study: optuna.Study, trials: Sequence[FrozenTrial]) -> optuna.Study:
    """An in-memory study holding only the given trials, with the original directions."""
    with _quiet_optuna():
        subset = optuna.create_study(directions=study.directions)
        subset.add_trials(trials)
    return subset


def _overall_importances_html(study: optuna.Study) -> str:
    """Importances over all completed trials; falls back to the family alone, then to an explanation."""
    try:
        return _importances_block(_param_importances(study), "all completed trials", "")
    except Exception as error:  # any evaluator failure only makes the section thinner; the report must be written
        reason = f"{type(error).__name__}: {error}"
    try:
        note = f"Optuna could not rate all parameters together ({reason}), so only the family is rated."
        return _importances_block(_param_importances(study, params=[FAMILY]), "family only", note)
    except Exception as error:
        return (f"<p class='note'>Importances are missing: Optuna could not compute them ({_text(reason)}; "
                f"for the family alone: {_text(type(error).__name__)}: {_text(error)}).</p>")


def _importances_block(importances: Mapping[str, float], scope: str, note: str) -> str:
    """One importance figure with its caption, or a sentence when there is nothing to show."""
    if not importances:
        return f"<p class='note'>No parameters to rate for {_text(scope)}.</p>"
    values = list(importances.values())
    caption = f"Importance of each parameter for the first objective, over {scope}."
    if max(values) - min(values) < 1e-12:
        caption += " All bars are equal: too few trials to tell the parameters apart."
    note_html = f"<p class='note'>{_text(note)}</p>" if note else ""
    return note_html + _image(_importance_figure(importances, scope), f"Parameter importances, {scope}", caption)


def _family_importances_html(study: optuna.Study) -> str:
    """Importances within each family that has enough completed trials, over that family's own parameters."""
    by_family: dict[str, list[FrozenTrial]] = {}
    for trial in _trials(study, TrialState.COMPLETE):
        by_family.setdefault(_family(trial), []).append(trial)
    blocks = []
    for family, trials in sorted(by_family.items()):
        params = sorted({name for trial in trials for name in trial.params if name != FAMILY})
        if len(trials) < MIN_TRIALS_PER_FAMILY_IMPORTANCE or not params:
            continue
        heading = f"<h3>Within family <code>{_text(family)}</code> ({len(trials)} completed trials)</h3>"
        try:
            importances = _param_importances(_family_study(study, trials), params=params)
            blocks.append(heading + _importances_block(importances, f"{family} trials", ""))
        except Exception as error:
            blocks.append(heading + f"<p class='note'>Missing: {_text(type(error).__name__)}: {_text(error)}</p>")
    if not blocks:
        return (f"<p class='note'>No family has {MIN_TRIALS_PER_FAMILY_IMPORTANCE} or more completed trials with "
                "parameters of its own, so there are no per-family importances.</p>")
    return "".join(blocks)


# --- HTML pieces -------------------------------------------------------------------------------------------------


def _image(png_base64: str, alt: str, caption: str, caption_is_html: bool = False) -> str:
    """An embedded PNG with its caption."""
    caption_html = caption if caption_is_html else _text(caption)
    return (f"<figure><img alt='{_text(alt)}' src='data:image/png;base64,{png_base64}'>"
            f"<figcaption>{caption_html}</figcaption></figure>")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], row_classes: Sequence[str] = (),
           numeric: Sequence[int] = ()) -> str:
    """An HTML table; cells are HTML already, ``numeric`` column indices are right-aligned."""
    head = "".join(f"<th>{header}</th>" for header in headers)
    body = []
    for index, row in enumerate(rows):
        css = f" class='{row_classes[index]}'" if index < len(row_classes) and row_classes[index] else ""
        cells = "".join(f"<td class='num'>{cell}</td>" if column in numeric else f"<td>{cell}</td>"
                        for column, cell in enumerate(row))
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _section(anchor: str, heading: str, how_to_read: str, body: str) -> str:
    """One report section: heading, a how-to-read paragraph and the body (all HTML)."""
    return f"<section id='{anchor}'><h2>{heading}</h2><p class='how'>{how_to_read}</p>{body}</section>"


def _missing(sentence: str) -> str:
    """A paragraph standing in for a figure or table that has no data."""
    return f"<p class='note'>{sentence}</p>"


# --- sections -----------------------------------------------------------------------------------------------------


def _summary_section(study: optuna.Study, objectives: Sequence[str]) -> str:
    """Study name, trial counts by state, the objectives and the best trial."""
    trials = study.get_trials(deepcopy=False)
    counts = {name: sum(trial.state == state for trial in trials) for state, name in STATE_NAMES.items()}
    counts_text = ", ".join(f"{count} {name}" for name, count in counts.items() if count)
    first = objectives[0] if objectives else "objective"
    objective_items = "".join(
        f"<li><code>{_text(name)}</code> ({_text(direction.name.lower())}): "
        f"{_text(OBJECTIVE_MEANINGS.get(name, 'user-defined objective'))}</li>"
        for name, direction in zip(objectives, study.directions, strict=False))
    rows = [("Study", f"<code>{_text(study.study_name)}</code>"),
            ("Trials", f"{len(trials)} in all" + (f": {counts_text}" if counts_text else "")),
            ("Objectives", f"<ul>{objective_items}</ul>"),
            (f"Best trial (by {_text(first)})", _best_trial_html(study, objectives))]
    if len(study.directions) > 1:
        front = len(study.best_trials)
        rows.append(("Pareto front", f"{front} trial{'s' if front != 1 else ''} (see <a href='#pareto'>section 7</a>)"))
    table = "<table>" + "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows) + "</table>"
    how = ("What was searched and how it went. The best trial is the best of the search itself (one seed, "
           "validation split); the leaderboard below re-runs the winners with several seeds.")
    return _section("summary", "1. Summary", how, table)


def _best_trial_html(study: optuna.Study, objectives: Sequence[str]) -> str:
    """The best completed trial by the first objective, or why there is none."""
    best = _best_by_first_objective(study)
    if best is None:
        return "No trial has completed yet, so there is no best trial."
    family = _family(best)
    return (f"#{best.number}, family <code>{_text(family)}</code>: {_text(_values_text(best, objectives))}"
            f"<br>{_params_html(best.params, family)}")


def _leaderboard_section(leaderboard: Sequence[Mapping[str, Any]]) -> str:
    """The final re-runs' table, best row highlighted."""
    how = ("The best policy of each family (and any transferred policy), re-run with several seeds; best first, the "
           "top row highlighted. Test EM comes only from these final re-runs: the search itself never saw the test "
           "split. Spreads are the standard deviation over seeds.")
    if not leaderboard:
        return _section("leaderboard", "2. Leaderboard", how, _missing("The leaderboard is empty: no final re-runs."))
    headers = ["rank", "label", "family", "source", "trial", "params", "dev EM", "test EM", "MLL score (nats/token)",
               "seconds", "tokens", "seeds"]
    rows = [[_text(row.get("rank", index + 1)), _text(row.get("label", "")), f"<code>{_text(row.get('family'))}</code>",
             _text(row.get("source", "")), "—" if row.get("trial") is None else f"#{_text(row['trial'])}",
             _params_html(row.get("params") or {}, row.get("family")),
             _mean_spread(row.get("dev_em"), row.get("dev_em_spread")),
             _mean_spread(row.get("test_em"), row.get("test_em_spread")),
             _mean_spread(row.get("mll_nats_per_token"), row.get("mll_spread")),
             _count(row.get("seconds")), _count(row.get("tokens")), _text(row.get("seeds", "—"))]
            for index, row in enumerate(leaderboard)]
    table = _table(headers, rows, row_classes=["best"], numeric=(0, 4, 6, 7, 8, 9, 10, 11))
    return _section("leaderboard", "2. Leaderboard", how, table)


def _history_section(study: optuna.Study, objectives: Sequence[str], colours: Mapping[str, str]) -> str:
    """Objective by trial number, and the failed trials with their reasons."""
    first = objectives[0] if objectives else "objective"
    how = (f"Each dot is a completed trial's <code>{_text(first)}</code> at its trial number, coloured by family; "
           "the black line is the best so far. A cross is a pruned trial at the last value it reported before it "
           "was stopped. Failed trials are listed below with their reason.")
    png = _history_figure(study, objectives, colours)
    figure = (_image(png, "Optimisation history", f"{first} by trial number.") if png
              else _missing("No trial has finished yet, so there is no history to draw."))
    return _section("history", "3. Optimisation history", how, figure + _failures_html(study))


def _failures_html(study: optuna.Study) -> str:
    """A small table of failed trials and why they failed."""
    failed = _trials(study, TrialState.FAIL)
    if not failed:
        return _missing("No trial failed.")
    rows = [[f"#{trial.number}", f"<code>{_text(_family(trial))}</code>",
             _text(trial.user_attrs.get("failure") or "no reason recorded")] for trial in failed]
    return f"<h3>Failed trials ({len(failed)})</h3>" + _table(["trial", "family", "failure"], rows, numeric=(0,))


def _importances_section(study: optuna.Study) -> str:
    """Optuna's parameter importances, overall and within each family."""
    how = ("How much each parameter mattered for reaching good values of the first objective (Optuna's default "
           "evaluator; bars sum to 1). Family parameters only exist within their family, so the per-family "
           "figures, computed on that family's own trials, are the ones to read for tuning a single family.")
    completed = len(_trials(study, TrialState.COMPLETE))
    if completed < 2:
        sentence = (f"Importances are missing: they need at least two completed trials and the study has {completed}, "
                    "so there is nothing to compare.")
        return _section("importances", "4. Parameter importances", how, _missing(sentence))
    body = _overall_importances_html(study) + _family_importances_html(study)
    return _section("importances", "4. Parameter importances", how, body)


def _correlation_html(correlation: Mapping[str, Any] | None) -> str:
    """The correlation between the MLL score and dev EM in words, saying plainly when they disagree."""
    if not correlation:
        return "No correlation: too few completed trials have both an MLL score and a dev EM."
    method = _text(str(correlation.get("method", "rank")).capitalize())
    rho, p_value, count = correlation.get("rho"), correlation.get("p_value"), correlation.get("trials", "?")
    if not _is_finite(rho):
        return f"{method} correlation is undefined over {_text(count)} trials (one of the two is constant)."
    p_text = f"p = {p_value:.3g}, " if _is_finite(p_value) else ""
    text = f"{method} correlation between MLL score and dev EM: ρ = {rho:+.2f} ({p_text}{_text(count)} trials). "
    if rho < 0:
        return text + ("<span class='disagree'>They disagree: trials with a higher MLL score tended to have a lower "
                       "dev EM, so on this task the score would rank policies the wrong way round.</span>")
    strength = "weakly" if rho < 0.3 else "moderately" if rho < 0.6 else "strongly"
    return text + f"They agree {strength}: a higher score tended to go with a higher dev EM."


def _mll_section(study: optuna.Study, objectives: Sequence[str], correlation: Mapping[str, Any] | None,
                 colours: Mapping[str, str]) -> str:
    """Scatter of the MLL score against dev EM, with the correlation in the caption."""
    how = ("Is the cheap marginal-likelihood score a good stand-in for the downstream metric? Each dot is a completed "
           "trial; if the score is a good proxy the dots rise from left to right.")
    if len(study.directions) > 1:
        how += " With two objectives these are the two objectives, and the ringed dots form the Pareto front."
    png = _mll_scatter_figure(study, objectives, colours)
    caption = _correlation_html(correlation)
    body = (_image(png, "MLL score against dev EM", caption, caption_is_html=True) if png
            else _missing("No completed trial has an MLL score, so there is nothing to plot. " + caption))
    return _section("mll", "5. MLL score vs downstream metric", how, body)


def _curves_section(curves: Mapping[str, Mapping[str, list]]) -> str:
    """The per-rate marginal-likelihood curves of the best policies."""
    how = ("S_m is the mean log-probability per token of the masked tokens when a fraction m/D of the text is masked. "
           "Its average height over all rates is the exact log-likelihood per token, so a curve that stays higher "
           "means a model that predicts masked text better at every masking rate.")
    png = _rate_curves_figure(curves)
    body = (_image(png, "S_m curves", "S_m against the masking rate, one line per policy; gaps are missing rates.")
            if png else _missing("No per-rate curves were recorded for the best policies."))
    return _section("curves", "6. S_m curves of the best policies", how, body)


def _pareto_section(study: optuna.Study, objectives: Sequence[str]) -> str:
    """The trials on the Pareto front of the two objectives."""
    how = ("A trial is on the Pareto front when no other trial is at least as good on both objectives and better on "
           "one. These are the sensible choices; which one to take depends on how much each objective matters. They "
           "are ringed in the scatter of section 5.")
    front = sorted(study.best_trials, key=lambda trial: trial.number)
    if not front:
        return _section("pareto", "7. Pareto front", how, _missing("No trial has completed, so there is no front."))
    names = list(objectives) or ["objective 0", "objective 1"]
    rows = [[f"#{trial.number}", f"<code>{_text(_family(trial))}</code>", _params_html(trial.params, _family(trial)),
             *(_number(value, 4) for value in trial.values)] for trial in front]
    table = _table(["trial", "family", "params", *(_text(name) for name in names)], rows,
                   numeric=(0, *range(3, 3 + len(names))))
    return _section("pareto", "7. Pareto front", how, table)


def _learning_curves_section(study: optuna.Study, colours: Mapping[str, str]) -> str:
    """Dev EM per fine-tuning epoch for every trial: what the pruner saw."""
    number = 8 if len(study.directions) > 1 else 7
    heading = f"{number}. Learning curves (intermediate values)"
    how = ("Dev EM after each fine-tuning epoch, one thin line per trial, coloured by family. This is what the pruner "
           "compared: a cross marks where a trial was stopped for lagging behind the others at that epoch.")
    png = _learning_curves_figure(study, colours)
    body = (_image(png, "Learning curves", "Dev EM per epoch for each trial that reported one.") if png
            else _missing("No trial reported intermediate values (pruning was off or nothing has run yet)."))
    return _section("learning-curves", heading, how, body)


def _document(title: str, sections: Sequence[str]) -> str:
    """The whole page: head with inline style, table of contents, sections."""
    contents = "".join(f"<li><a href='#{anchor}'>{name}</a></li>" for anchor, name in SECTION_HEADING.findall(
        "".join(sections)))
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
            f"<title>{_text(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
            f"<h1>{_text(title)}</h1>\n<p class='meta'>Generated {generated} by maskpolicy. This page is "
            "self-contained: figures are embedded, nothing is fetched, and the study storage is not needed.</p>\n"
            f"<nav><ol>{contents}</ol></nav>\n" + "\n".join(sections) + "\n</main>\n</body>\n</html>\n")


def _write_atomically(path: Path, text: str) -> None:
    """Writes ``text`` to a temporary file next to ``path`` and moves it into place, so readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name opened with "x" (not mkstemp): concurrent writers never collide and the file gets the umask's
    # permissions instead of mkstemp's owner-only ones
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
