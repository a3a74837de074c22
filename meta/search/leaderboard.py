"""The leaderboard: each final configuration's runs aggregated (mean ± spread over seeds) and ranked.

Rows are ranked by the first objective, in its direction. Also the rank correlation between
the label-free marginal-likelihood score and dev EM across the study's completed trials,
whatever the objectives are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from scipy.stats import spearmanr

from maskpolicy.meta.results.aggregate import METRIC_COLUMNS, Column, aggregate, format_table
from maskpolicy.meta.results.files import write_csv, write_json
from maskpolicy.meta.results.metrics import SCORE_OF_TARGET
from maskpolicy.meta.search.final import FinalConfiguration
from maskpolicy.meta.search.objectives import Objective

IDENTITY = ("rank", "label", "family", "source", "trial", "params")
COLUMNS = (Column("rank", "#", None, 2), Column("label", "policy", None, 24, text=True), *METRIC_COLUMNS,
           Column("seconds", "s/run", 0, 7), Column("seeds", "seeds", None, 5))
SCORES = (SCORE_OF_TARGET["all"].name, SCORE_OF_TARGET["entities"].name)  # all tokens; entity tokens given the rest


def leaderboard(chosen: Sequence[FinalConfiguration], objective: Objective) -> list[dict[str, Any]]:
    """One row per configuration with final runs, best first by ``objective``, ranks filled in."""
    rows = [{"label": c.label, "family": c.family, "source": c.source, "trial": c.trial, "params": dict(c.params),
             **aggregate(c.runs)} for c in chosen if c.runs]
    rows.sort(key=lambda row: -math.inf if row[objective.metric] is None else objective.sign * row[objective.metric],
              reverse=True)
    return [{"rank": index + 1, **row} for index, row in enumerate(rows)]


def correlation(study: optuna.Study, x: str = SCORES[0], y: str = "dev_em") -> dict[str, Any] | None:
    """Spearman's rho between a trial metric (an MLL score) and a dev metric (``y``) of the completed trials (None
    below 3)."""
    pairs = [(t.user_attrs.get("metrics", {}).get(x), t.user_attrs.get("metrics", {}).get(y))
             for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    pairs = [pair for pair in pairs if None not in pair]
    if len(pairs) < 3:
        return None
    result = {"method": "spearman", "x": x, "y": y, "rho": None, "p_value": None, "trials": len(pairs)}
    xs, ys = zip(*pairs, strict=True)
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return result | {"note": "one of the two has no spread across trials"}
    statistic = spearmanr(xs, ys)
    return result | {"rho": float(statistic.statistic), "p_value": float(statistic.pvalue)}


def format_leaderboard(rows: Sequence[Mapping[str, Any]]) -> str:
    return format_table(rows, COLUMNS)


def write_leaderboard(output_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """``leaderboard.json`` and ``leaderboard.csv`` (params as ``key=value; …`` text)."""
    write_json(output_dir / "leaderboard.json", list(rows))
    columns = [*IDENTITY, *(key for key in (rows[0] if rows else {}) if key not in IDENTITY)]
    write_csv(output_dir / "leaderboard.csv", [row | {"params": _params_text(row["params"])} for row in rows], columns)


def _params_text(params: Mapping[str, Any]) -> str:
    return "; ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in params.items())
