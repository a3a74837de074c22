"""The recovery-error figure of ``maskpolicy-identify``; written by the caller (``results.files.write_png``)."""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from maskpolicy.meta.identifiability.recovery import IDENTIFIED
from maskpolicy.meta.results.schema import IdentifyResults

ERROR_FLOOR = 1e-12   # errors below float64 rounding are drawn here on the log axis
SEED_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def recovery_figure(results: IdentifyResults) -> Figure:
    """One panel per predictor start × model family: each task's recovery error of every restart of every seed.

    Filled: the restart reached the optimum (only those are judged); hollow: it did not. Seeds
    sit side by side within a task, one colour each; a tick says how many seeds' models the task
    identified.
    """
    models = list(dict.fromkeys(cell.model for cell in results.cells))
    starts = list(dict.fromkeys(cell.start for cell in results.cells))
    tasks = list(dict.fromkeys(cell.task for cell in results.cells))
    seeds = list(dict.fromkeys(cell.seed for cell in results.cells))
    figure = Figure(figsize=(max(6.4, 1.0 * len(tasks) + 1.5) * len(models), 4.6 * len(starts)), dpi=100)
    FigureCanvasAgg(figure)  # a canvas of its own: no pyplot state, no display needed
    axes = figure.subplots(len(starts), len(models), squeeze=False)
    width = 0.7 / max(len(seeds), 1)
    for row, start in enumerate(starts):
        for column, model in enumerate(models):
            axis = axes[row][column]
            labels = []
            for x, task in enumerate(tasks):
                cells = [c for c in results.cells if c.model == model and c.start == start and c.task == task]
                for cell in cells:
                    offset = (seeds.index(cell.seed) - (len(seeds) - 1) / 2) * width
                    colour = SEED_COLOURS[seeds.index(cell.seed) % len(SEED_COLOURS)]
                    for restart in cell.restarts:
                        axis.scatter(x + offset, max(restart.error, ERROR_FLOOR), s=22, edgecolors=colour,
                                     facecolors=colour if restart.reached_optimum else "none", alpha=0.85)
                identified = sum(c.verdict == IDENTIFIED for c in cells)
                labels.append(f"{_short(cells[0].patterns) if cells else task}\n{identified}/{len(cells)} identified")
            axis.axhline(results.recovery_tolerance, color="tab:red", linestyle="--",
                         label=f"recovery tolerance {results.recovery_tolerance:g}")
            axis.set_xticks(range(len(tasks)), labels, fontsize=6.5, rotation=25, ha="right")
            axis.set_yscale("log")
            axis.set_ylabel("recovery error (max |Δ| of transition, emission)", fontsize=8)
            axis.set_title(f"{model} HMM, {start} start ({results.data} data, {results.restarts} restarts/seed)",
                           fontsize=9)
    for seed in seeds:   # one legend for the figure, below the panels: it hides no point
        axes[0][0].scatter([], [], color=SEED_COLOURS[seeds.index(seed) % len(SEED_COLOURS)],
                           label=f"seed {seed}: at the optimum" if seed is not None else "at the optimum")
    axes[0][0].scatter([], [], facecolors="none", edgecolors="grey", label="hollow: short of the optimum")
    figure.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=len(seeds) + 2, fontsize=7,
                  frameon=False)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    return figure


def _short(patterns: str) -> str:
    """A task's patterns for a tick label; a long sum of patterns as its first and a count."""
    parts = patterns.split(" & ")
    return patterns if len(patterns) <= 30 else f"{parts[0]} & … ({len(parts)} patterns)"
