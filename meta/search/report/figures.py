"""The report's figures: matplotlib Figures drawn from plain data, one colour per policy family in all of them.

Our own figures use the object-oriented API on the Agg canvas (no pyplot state, no display). Parameter
importances come from ``optuna.visualization.matplotlib``, which draws through pyplot; its figure is
detached from pyplot and its global style change is undone. :func:`png_base64` turns any of them into
the text an ``<img>`` embeds.
"""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import accumulate, cycle
from typing import NamedTuple

import matplotlib
import optuna
from matplotlib import pyplot
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial
from optuna.visualization.matplotlib import plot_param_importances

DPI = 110
WIDTH = 8.4
GRID = {"color": "#e5e5e5", "linewidth": 0.6}
LINE_STYLES = ("-", "--", ":", "-.")


class Point(NamedTuple):
    """One trial (or epoch) in a figure: where it goes and which family colours it."""

    x: float
    y: float
    family: str


class Panel(NamedTuple):
    """One objective's optimisation history: completed trials, pruned trials' last reports, which way is better."""

    label: str
    maximize: bool
    completed: Sequence[Point]
    pruned: Sequence[Point] = ()


class Curve(NamedTuple):
    """A line of points (S_m over the masking rate, or a trial's learning curve) in its family's colour."""

    label: str
    family: str
    points: Sequence[tuple[float, float]]
    pruned: bool = False


def family_colours(families: Iterable[str]) -> dict[str, str]:
    """One colour per family, fixed by the sorted family names; every figure of a report takes them from here."""
    names = sorted(set(families))
    palette = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"].colors
    return {family: to_hex(palette[index % len(palette)]) for index, family in enumerate(names)}


def png_base64(figure: Figure) -> str:
    """The figure as a base64-encoded PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", dpi=DPI)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def history(panels: Sequence[Panel], colours: Mapping[str, str]) -> Figure:
    """Each objective by trial number, one panel per objective, with the best value so far."""
    figure = _figure(height=0.9 + 2.6 * len(panels))
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axis, panel in zip(axes, panels, strict=True):
        _grid(axis)
        _scatter_by_family(axis, panel.completed, colours)
        if panel.pruned:
            axis.scatter([p.x for p in panel.pruned], [p.y for p in panel.pruned], marker="x", s=30, zorder=3,
                         color=[colours[p.family] for p in panel.pruned])
        if panel.completed:
            ordered = sorted(panel.completed)
            best = list(accumulate((p.y for p in ordered), max if panel.maximize else min))
            axis.step([p.x for p in ordered], best, where="post", color="black", linewidth=1.2)
        axis.set_ylabel(_plot_label(panel.label))
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("trial number")
    extra = [Line2D([], [], color="black", linewidth=1.2, label="best so far")]
    if any(panel.pruned for panel in panels):
        extra.append(Line2D([], [], color="#555", marker="x", linestyle="none", label="pruned (last reported)"))
    families = {p.family for panel in panels for p in (*panel.completed, *panel.pruned)}
    _legend(axes[0], _family_handles(families, colours) + extra)
    return figure


def scatter(points: Sequence[Point], front: Sequence[tuple[float, float]], x_label: str, y_label: str,
            colours: Mapping[str, str]) -> Figure:
    """One dot per trial (x against y), coloured by family; the Pareto ``front``, if any, ringed and joined."""
    figure = _figure()
    axis = figure.subplots()
    _grid(axis)
    _scatter_by_family(axis, points, colours)
    handles = _family_handles({p.family for p in points}, colours)
    if front:
        xs, ys = zip(*sorted(front), strict=True)
        axis.plot(xs, ys, color="black", linewidth=0.8, linestyle="--", zorder=2)
        axis.scatter(xs, ys, s=110, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4)
        handles.append(Line2D([], [], marker="o", markersize=9, markerfacecolor="none", markeredgecolor="black",
                              color="black", linewidth=0.8, linestyle="--", label="Pareto front"))
    axis.set_xlabel(_plot_label(x_label))
    axis.set_ylabel(_plot_label(y_label))
    _legend(axis, handles)
    return figure


def rate_curves(curves: Sequence[Curve], colours: Mapping[str, str]) -> Figure:
    """S_m against the masking rate, one line per policy in its family's colour (line style tells apart a family's
    several policies)."""
    figure = _figure()
    axis = figure.subplots()
    _grid(axis)
    styles: dict[str, Iterable[str]] = {}
    for curve in curves:
        style = next(styles.setdefault(curve.family, cycle(LINE_STYLES)))
        axis.plot(*zip(*curve.points, strict=True), marker="o", markersize=3.5, linewidth=1.4, linestyle=style,
                  color=colours[curve.family], label=_plot_label(curve.label))
    axis.set_xlabel("masking rate m / D")
    axis.set_ylabel("S_m (nats per token)")
    _legend(axis, axis.get_legend_handles_labels()[0])
    return figure


def learning_curves(curves: Sequence[Curve], label: str, colours: Mapping[str, str],
                    xlabel: str = "fine-tuning epoch") -> Figure:
    """The reported value per step (``xlabel``), one thin line per trial; a cross where pruning stopped a trial."""
    figure = _figure()
    axis = figure.subplots()
    _grid(axis)
    for curve in curves:
        colour = colours[curve.family]
        axis.plot(*zip(*curve.points, strict=True), color=colour, linewidth=0.9, alpha=0.75)
        if curve.pruned:
            axis.plot(*curve.points[-1], marker="x", color=colour, markersize=7, markeredgewidth=1.5)
    handles = _family_handles({curve.family for curve in curves}, colours, marker=None)
    if any(curve.pruned for curve in curves):
        handles.append(Line2D([], [], color="#555", marker="x", linestyle="none", label="pruned here"))
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel(xlabel)
    axis.set_ylabel(_plot_label(label))
    _legend(axis, handles)
    return figure


def importances(study: optuna.Study, params: list[str] | None, target: Callable[[FrozenTrial], float] | None,
                target_name: str, title: str, width: float = 6.5) -> tuple[Figure, list[str]]:
    """Optuna's parameter-importance bars, and the warnings Optuna gave about them (e.g. too few trials).

    Raises whatever Optuna's importance evaluator raises.
    """
    rows = len(params) if params else len({name for t in study.get_trials(deepcopy=False) for name in t.params})
    size = (width, 1.3 + 0.34 * max(rows, 1))
    # plot_param_importances applies the ggplot style to the global rcParams; the context restores them
    style = {"figure.figsize": size, "figure.dpi": DPI}
    with matplotlib.rc_context(style), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # each call's own warnings, even ones seen before
        warnings.simplefilter("ignore", ExperimentalWarning)  # the function is experimental; we accept that
        # PED-ANOVA warns that it rates for a low target whenever one is given; the caller's target is oriented so
        warnings.filterwarnings("ignore", message=".*low `target` values")
        axis = plot_param_importances(study, params=params, target=target, target_name=target_name)
    figure = axis.figure
    pyplot.close(figure)  # the figure lives on, without pyplot holding on to it
    axis.set_title(_plot_label(title), loc="left", fontsize=10)
    axis.set_xlabel("importance (bars sum to 1)")
    axis.set_ylabel("")
    if axis.get_legend():
        axis.get_legend().remove()  # it names the target, which the title and caption already do
    return figure, [str(warning.message) for warning in seen]


def _figure(height: float = 3.8) -> Figure:
    figure = Figure(figsize=(WIDTH, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _grid(axis: Axes) -> None:
    axis.grid(True, **GRID)
    axis.set_axisbelow(True)


def _scatter_by_family(axis: Axes, points: Sequence[Point], colours: Mapping[str, str]) -> None:
    for family in sorted({p.family for p in points}):
        own = [p for p in points if p.family == family]
        axis.scatter([p.x for p in own], [p.y for p in own], color=colours[family], s=30, zorder=3,
                     label=_plot_label(family))


def _family_handles(families: Iterable[str], colours: Mapping[str, str], marker: str | None = "o") -> list[Line2D]:
    """Legend entries in the families' colours: dots, or lines (``marker=None``)."""
    return [Line2D([], [], color=colours[family], marker=marker, linestyle="none" if marker else "-",
                   label=_plot_label(family)) for family in sorted(families)]


def _legend(axis: Axes, handles: list) -> None:
    """A legend to the right of the plot, so it never hides points."""
    if handles:
        axis.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def _plot_label(text: object) -> str:
    """A label matplotlib shows verbatim: no mathtext from ``$``, not hidden by a leading underscore."""
    label = str(text).replace("$", r"\$")
    return f" {label}" if label.startswith("_") else label
