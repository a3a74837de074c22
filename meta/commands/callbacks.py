"""Hydra callbacks that close a multirun: one table of every job's results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from maskpolicy.meta.results.aggregate import SUMMARY_COLUMNS, format_table, runs_under, write_summary
from maskpolicy.meta.results.files import write_json
from maskpolicy.meta.search.leaderboard import format_leaderboard


class ResultsSummary(Callback):
    """After ``maskpolicy-pretrain -m …``: ``summary.json`` / ``summary.csv`` in the sweep directory, and the table."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        rows = write_summary(config.hydra.sweep.dir, runs_under(config.hydra.sweep.dir))
        if rows:
            print(format_table(rows, SUMMARY_COLUMNS))


class CombinedLeaderboards(Callback):
    """After ``maskpolicy-search -m …``: one table of every study's leaderboard.

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
            write_json(sweep / "leaderboard.json", rows)
            for study in dict.fromkeys(row["study"] for row in rows):
                print(f"\n{study or '(defaults)'}\n{format_leaderboard([r for r in rows if r['study'] == study])}")
