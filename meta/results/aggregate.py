"""Many runs side by side: mean ± spread over seeds, as rows and as an aligned text table.

The one aggregator behind the multirun summary (``summary.json``/``.csv``) and the search's
leaderboard: both group :class:`~maskpolicy.meta.results.schema.PretrainResults` and call
:func:`aggregate` on each group. Its metrics and their columns are the registry's
(:mod:`maskpolicy.meta.results.metrics`).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskpolicy.meta.results.files import write_csv, write_json
from maskpolicy.meta.results.metrics import METRICS
from maskpolicy.meta.results.schema import PretrainResults, ResultsError, load


@dataclass(frozen=True)
class Column:
    """One column of a text table: the row key, its header, how many decimals (None: a plain value), its width,
    and whether it is text (left-aligned)."""

    key: str
    header: str
    digits: int | None = 3
    width: int = 15
    text: bool = False


SUMMARY_KEYS = ("task", "model", "policy")
METRIC_COLUMNS = tuple(Column(m.name, m.header, m.digits, m.width) for m in METRICS.values())
SUMMARY_COLUMNS = (Column("task", "task", None, 10, text=True), Column("model", "model", None, 12, text=True),
                   Column("policy", "policy", None, 24, text=True), Column("seeds", "seeds", None, 5),
                   *METRIC_COLUMNS, Column("seconds", "s/run", 0, 7))


def mean_spread(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the values present (spread 0 for one value; None for none)."""
    present = [value for value in values if value is not None]
    if not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else 0.0


def aggregate(runs: Sequence[PretrainResults]) -> dict[str, Any]:
    """``seeds``, ``<metric>`` and ``<metric>_spread`` for every metric, and mean ``seconds`` and ``tokens``."""
    if not runs:
        raise ResultsError("nothing to aggregate: no runs")
    row: dict[str, Any] = {"seeds": len(runs)}
    for name, metric in METRICS.items():
        row[name], row[f"{name}_spread"] = mean_spread(metric.read(run) for run in runs)
    row["seconds"] = statistics.fmean(run.wall_seconds for run in runs)
    row["tokens"] = statistics.fmean(run.pretrain.tokens for run in runs)
    return row


def summarize(runs: Iterable[PretrainResults]) -> list[dict[str, Any]]:
    """One row per (task, model, policy label), sorted by those."""
    groups: dict[tuple[str, str, str], list[PretrainResults]] = defaultdict(list)
    for run in runs:
        groups[(run.task.name, run.model.name, run.policy.label)].append(run)
    return [dict(zip(SUMMARY_KEYS, key, strict=True)) | aggregate(group) for key, group in sorted(groups.items())]


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """Rows as aligned text; a metric column shows ``mean ± spread`` (— when missing)."""

    def cell(row: Mapping[str, Any], column: Column) -> str:
        value = row.get(column.key)
        if column.digits is None:
            return str(value)
        if value is None:
            return "—"
        spread = row.get(f"{column.key}_spread")
        return f"{value:.{column.digits}f}" + ("" if spread is None else f" ± {spread:.{column.digits}f}")

    def aligned(text: str, column: Column, width: int) -> str:
        return f"{text:<{width}}" if column.text else f"{text:>{width}}"

    widths = [max([column.width, len(column.header), *(len(cell(row, column)) for row in rows)]) for column in columns]
    pairs = list(zip(columns, widths, strict=True))
    lines = [" ".join(aligned(column.header, column, width) for column, width in pairs)]
    lines.append("-" * len(lines[0]))
    lines += [" ".join(aligned(cell(row, column), column, width) for column, width in pairs) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def runs_under(root: str | Path) -> list[PretrainResults]:
    """The pre-training results of every finished run under ``root`` (a multirun's sweep directory)."""
    return [load(path, PretrainResults) for path in sorted(Path(root).glob("*/results.json"))]


def write_summary(directory: str | Path, runs: Sequence[PretrainResults]) -> list[dict[str, Any]]:
    """``summary.json`` and ``summary.csv`` of ``runs`` in ``directory``; returns the rows."""
    rows = summarize(runs)
    if rows:
        write_json(Path(directory) / "summary.json", rows)
        write_csv(Path(directory) / "summary.csv", rows, list(rows[0]))
    return rows
