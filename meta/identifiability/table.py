"""The summary table of ``maskpolicy-identify`` as Markdown: one row per task × model family, the starts side by side.

Written by the command next to ``results.json`` (``summary.md``) and pasted into the README, so the
table there is what a run printed. Several runs' results can be joined (say, the stationary-start
study and the free-start ablation): a row takes each start's counts from whichever run measured it;
``python -m maskpolicy.meta.identifiability.table RUN_DIR …`` prints the joined table of run folders
(their summaries recounted from their cells).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from maskpolicy.meta.identifiability.cell import summarise
from maskpolicy.meta.identifiability.claims import STATIONARY
from maskpolicy.meta.results.schema import IdentifyCell, IdentifyResults, IdentifySummary, load
from maskpolicy.tasks.base import TaskError

COLUMNS = ("task", "HMM", "the paper (expected)", "stationary start: verdicts", "restarts at the optimum",
           "recovery error at the optimum", "held-out excess", "agrees", "free start (ablation)")


def summary_table(runs: Sequence[IdentifyResults]) -> str:
    """The Markdown table of ``runs``' summaries (``IdentifyResults.summary``), rows in the order first measured.

    Per row: the statement that applies and its expected verdict; for the main (stationary) start, how many
    of the family's models gave each verdict, the restarts at the optimum per model, the range of the
    models' largest recovery error among those restarts, the largest held-out excess loss (G-HMM), and how
    many of the models the statement's conditions hold for agree with it; for the free start, its verdicts.
    """
    if not runs:
        raise TaskError("summary_table needs at least one run's results")
    summaries: dict[tuple[str, str, str], IdentifySummary] = {}
    restarts: dict[tuple[str, str, str], int] = {}
    cells: dict[tuple[str, str, str], list[IdentifyCell]] = {}
    for run in runs:
        for summary in run.summary:
            key = (summary.model, summary.task, summary.start)
            if key in summaries:
                raise TaskError(f"two runs both measured task {summary.task} on {summary.model} with a "
                                f"{summary.start} start; join runs that measured different cells")
            summaries[key], restarts[key] = summary, run.restarts
        for cell in run.cells:
            cells.setdefault((cell.model, cell.task, cell.start or STATIONARY), []).append(cell)
    rows = list(dict.fromkeys((model, task) for model, task, _ in summaries))
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for model, task in rows:
        main = summaries.get((model, task, STATIONARY))
        free = summaries.get((model, task, "free"))
        first = main or free
        group = cells.get((model, task, STATIONARY), [])
        lines.append("| " + " | ".join((
            f"`{compact(first.patterns)}`", model, _paper(first),
            _verdicts(main) if main else "not run",
            _reached(main, restarts[(model, task, STATIONARY)]) if main else "—",
            _error_range(group), _heldout(group), _agreement(main) if main else "—",
            _verdicts(free) if free else "not run")) + " |")
    return "\n".join(lines) + "\n"


def compact(patterns: str) -> str:
    """A task's patterns with each pair predicted both ways written once, ``x1 ↔ x2``; sums joined by `` + ``."""
    parts = patterns.split(" & ")
    written: list[str] = []
    for part in parts:
        seen, arrow, predicted = part.partition(" → ")
        if arrow and f"{predicted} → {seen}" in parts:
            if f"{predicted} ↔ {seen}" not in written:
                written.append(f"{seen} ↔ {predicted}")
        else:
            written.append(part)
    return " + ".join(written)


def _paper(summary: IdentifySummary) -> str:
    if summary.paper_label is None:
        return "no statement"
    expected = "identifies" if summary.paper_says_identifiable else "does not identify"
    unmet = "" if summary.applies == summary.models else f"; its conditions hold for {summary.applies}/{summary.models}"
    return f"{summary.paper_label}: {expected}{unmet}"


def _verdicts(summary: IdentifySummary) -> str:
    counts = sorted(summary.verdicts.items(), key=lambda item: -item[1])
    if len(counts) == 1:
        return f"{counts[0][0]} {counts[0][1]}/{summary.models}"
    return ", ".join(f"{verdict} {count}" for verdict, count in counts) + f" (of {summary.models})"


def _reached(summary: IdentifySummary, restarts: int) -> str:
    return ", ".join(str(n) for n in summary.reached) + f" of {restarts}"


def _error_range(group: list[IdentifyCell]) -> str:
    errors = [cell.error_max for cell in group if cell.error_max is not None]
    if not errors:
        return "—"
    low, high = f"{min(errors):.1e}", f"{max(errors):.1e}"
    return high if low == high else f"{low} – {high}"


def _heldout(group: list[IdentifyCell]) -> str:
    excess = [cell.heldout_excess_max for cell in group if cell.heldout_excess_max is not None]
    return f"{max(excess):.1e}" if excess else "—"


def _agreement(summary: IdentifySummary) -> str:
    if summary.paper_label is None:
        return "—"
    judged = summary.agree + summary.disagree
    if summary.applies == 0:
        return "n/a (conditions unmet)"
    text = f"{summary.agree}/{judged}" if judged else "0 judged (inconclusive)"
    return f"**{text}**" if summary.disagree else text


def joined_table(folders: Sequence[str | Path]) -> str:
    """The table of the runs saved in ``folders`` (each with a ``results.json``), summaries recounted from the cells."""
    runs = [load(Path(folder), IdentifyResults) for folder in folders]
    return summary_table([dataclasses.replace(run, summary=summarise(run.cells)) for run in runs])


if __name__ == "__main__":
    print(joined_table(sys.argv[1:]), end="")
