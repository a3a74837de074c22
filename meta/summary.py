"""Side-by-side summaries of many runs' ``results.json`` (Hydra multirun and the demo)."""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .io import write_json_atomic

METRICS = ("dev_em", "test_em", "test_f1")


def load_results(root: str | Path) -> list[dict[str, Any]]:
    """Every ``results.json`` under ``root``, in path order."""
    return [json.loads(path.read_text()) for path in sorted(Path(root).rglob("results.json"))]


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def policy_label(policy: dict[str, Any]) -> str:
    """The policy's name; a saved policy adds how it was trained and the folder it was saved in."""
    source = policy.get("source")
    if not source:
        return policy["name"]
    method = source.get("training", {}).get("method", "?")
    return f"{policy['name']}[{method}:{Path(source['path']).parent.name}]"


def summarize(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, model, policy): metric means ± spread over seeds, and cost."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for result in (r for r in results if "downstream" in r):
        groups[(result["task"]["name"], result["model"]["name"], policy_label(result["policy"]))].append(result)
    rows = []
    for (task, model, policy), runs in sorted(groups.items()):
        row: dict[str, Any] = {"task": task, "model": model, "policy": policy, "seeds": len(runs)}
        for metric in METRICS:
            row[metric], row[f"{metric}_spread"] = mean_spread([r["downstream"][metric] for r in runs])
        scores = [r["mll"]["nats_per_token"] for r in runs if r.get("mll")]
        row["mll_nats_per_token"], row["mll_nats_per_token_spread"] = mean_spread(scores) if scores else (None, None)
        row["wall_seconds"] = statistics.fmean(r["wall_seconds"] for r in runs)
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    columns = (*METRICS, "mll_nats_per_token")
    width = max([14, *(len(row["policy"]) for row in rows)])
    header = f"{'task':<10} {'model':<12} {'policy':<{width}} {'seeds':>5} " + " ".join(f"{m:>18}" for m in columns)
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = " ".join(f"{'—':>18}" if row[m] is None else f"{row[m]:>11.3f} ± {row[m + '_spread']:.3f}"
                         for m in columns)
        lines.append(f"{row['task']:<10} {row['model']:<12} {row['policy']:<{width}} {row['seeds']:>5} {cells}")
    return "\n".join(lines)


def write_summary(root: str | Path) -> list[dict[str, Any]]:
    """Summarises the runs under ``root`` into ``summary.json`` and ``summary.csv``; prints the table."""
    rows = summarize(load_results(root))
    if not rows:
        return rows
    write_json_atomic(Path(root) / "summary.json", rows)
    with open(Path(root) / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(format_table(rows))
    return rows


class ResultsSummary(Callback):
    """Hydra callback: after a multirun, print and save the side-by-side summary."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_summary(config.hydra.sweep.dir)
