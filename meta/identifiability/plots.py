"""The recovery-error figure of ``maskpolicy-identify``; written by the caller (``results.files.write_png``)."""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from maskpolicy.meta.results.schema import IdentifyResults

ERROR_FLOOR = 1e-12   # errors below float64 rounding are drawn here on the log axis


def recovery_figure(results: IdentifyResults) -> Figure:
    """Per model, each task's recovery error of every restart (filled: reached the optimum; hollow: did not)."""
    models = list(dict.fromkeys(cell.model for cell in results.cells))
    figure = Figure(figsize=(6.4 * len(models), 4.4), dpi=110)
    FigureCanvasAgg(figure)  # a canvas of its own: no pyplot state, no display needed
    axes = figure.subplots(1, len(models), squeeze=False)[0]
    for axis, model in zip(axes, models, strict=True):
        cells = [cell for cell in results.cells if cell.model == model]
        for x, cell in enumerate(cells):
            for restart in cell.restarts:
                axis.scatter(x, max(restart.error, ERROR_FLOOR), s=28, edgecolors="tab:blue",
                             facecolors="tab:blue" if restart.reached_optimum else "none", alpha=0.8)
        axis.axhline(results.recovery_tolerance, color="tab:red", linestyle="--",
                     label=f"recovery tolerance {results.recovery_tolerance:g}")
        axis.scatter([], [], color="tab:blue", label="restart at the optimum")
        axis.scatter([], [], facecolors="none", edgecolors="tab:blue", label="restart short of it")
        axis.set_xticks(range(len(cells)), [f"{cell.patterns}\n{cell.verdict}" for cell in cells], fontsize=7,
                        rotation=20)
        axis.set_yscale("log")
        axis.set_ylabel("recovery error (max |Δ| of transition, emission)")
        axis.set_title(f"{model} HMM ({results.data} data, {results.restarts} restarts)")
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure
