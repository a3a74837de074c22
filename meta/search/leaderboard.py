"""The leaderboard: final re-runs of the best configurations, mean ± spread over seeds.

Validation numbers picked the configurations; test numbers come only from these
final re-runs. Also the rank correlation between the label-free marginal-likelihood
score and the downstream validation metric across the study's trials.
"""

from __future__ import annotations

import csv
import json
import statistics
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState
from scipy.stats import spearmanr

from ..io import replace_readable, write_json_atomic

COLUMNS = ("rank", "label", "family", "source", "trial", "params", "seeds", "dev_em", "dev_em_spread", "test_em",
           "test_em_spread", "mll_nats_per_token", "mll_spread", "seconds", "tokens")


def _mean_spread(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else 0.0


def leaderboard_row(label: str, family: str, source: str, trial: int | None, params: Mapping[str, Any],
                    runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One row from a configuration's final runs (one ``results.json`` per seed)."""
    dev, dev_spread = _mean_spread([r["downstream"]["dev_em"] for r in runs])
    test, test_spread = _mean_spread([r["downstream"]["test_em"] for r in runs])
    mll, mll_spread = _mean_spread([(r.get("mll") or {}).get("nats_per_token") for r in runs])
    return {"label": label, "family": family, "source": source, "trial": trial, "params": dict(params),
            "seeds": len(runs), "dev_em": dev, "dev_em_spread": dev_spread, "test_em": test,
            "test_em_spread": test_spread, "mll_nats_per_token": mll, "mll_spread": mll_spread,
            "seconds": statistics.fmean(r["wall_seconds"] for r in runs),
            "tokens": statistics.fmean(r["pretrain"].get("tokens", 0) for r in runs)}


def rank(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows best first by mean dev EM (the metric that chose them), ranks filled in."""
    ordered = sorted(rows, key=lambda row: -(row["dev_em"] if row["dev_em"] is not None else -1.0))
    return [{"rank": index + 1, **row} for index, row in enumerate(ordered)]


def correlation(study: optuna.Study) -> dict[str, Any] | None:
    """Spearman's rho between each completed trial's MLL score and its validation metric (None below 3 trials)."""
    pairs = [(t.user_attrs.get("mll_nats_per_token"), t.values[0])
             for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    pairs = [(score, value) for score, value in pairs if score is not None]
    if len(pairs) < 3:
        return None
    scores, values = zip(*pairs, strict=True)
    if len(set(scores)) < 2 or len(set(values)) < 2:
        return {"method": "spearman", "rho": None, "p_value": None, "trials": len(pairs),
                "note": "one of the two has no spread across trials"}
    result = spearmanr(scores, values)
    return {"method": "spearman", "rho": float(result.statistic), "p_value": float(result.pvalue),
            "trials": len(pairs)}


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The leaderboard as aligned text."""
    def cell(mean: float | None, spread: float | None, digits: int = 3) -> str:
        return "—" if mean is None else f"{mean:.{digits}f} ± {spread:.{digits}f}"

    width = max([24, *(len(row["label"]) for row in rows)])
    header = (f"{'#':>2} {'policy':<{width}} {'dev EM':>15} {'test EM':>15} {'MLL nats/token':>17} {'s/run':>7} "
              f"{'seeds':>5}")
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['rank']:>2} {row['label']:<{width}} {cell(row['dev_em'], row['dev_em_spread']):>15} "
                     f"{cell(row['test_em'], row['test_em_spread']):>15} "
                     f"{cell(row['mll_nats_per_token'], row['mll_spread'], 2):>17} {row['seconds']:>7.0f} "
                     f"{row['seeds']:>5}")
    return "\n".join(lines)


def write_leaderboard(output_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """``leaderboard.json`` and ``leaderboard.csv`` (params as JSON text), both written atomically."""
    write_json_atomic(output_dir / "leaderboard.json", list(rows))
    with tempfile.NamedTemporaryFile("w", dir=output_dir, prefix=".leaderboard.csv.", delete=False,
                                     newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key) for key in COLUMNS} | {"params": _params_text(row["params"])})
    replace_readable(handle.name, output_dir / "leaderboard.csv")


def _params_text(params: Mapping[str, Any]) -> str:
    return "; ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in params.items())


class CombinedLeaderboards(Callback):
    """Hydra callback: after ``maskpolicy-search -m …``, one table of every study's leaderboard.

    Each row gains the overrides that tell its job apart (e.g. ``task=squad seed=1``).
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        boards = sorted(sweep.glob("*/leaderboard.json"))
        overrides = {board: [str(o) for o in OmegaConf.load(board.parent / ".hydra" / "overrides.yaml")]
                     for board in boards}
        shared = set.intersection(*(set(o) for o in overrides.values())) if overrides else set()
        rows = []
        for board in boards:
            study = " ".join(o for o in overrides[board] if o not in shared and not o.startswith("hydra."))
            rows += [{"study": study, **row} for row in json.loads(board.read_text())]
        if rows:
            write_json_atomic(sweep / "leaderboard.json", rows)
            for study in dict.fromkeys(row["study"] for row in rows):
                print(f"\n{study or '(defaults)'}\n{format_table([r for r in rows if r['study'] == study])}")
