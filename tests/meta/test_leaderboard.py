"""Leaderboard rows, ranking, the MLL–metric correlation and the files they are written to."""

from __future__ import annotations

import csv
import json

import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from maskpolicy.meta.search.leaderboard import correlation, format_table, leaderboard_row, rank, write_leaderboard
from maskpolicy.meta.search.study import best_per_family
from maskpolicy.meta.search.trial import needs_training


def results(dev: float, test: float, mll: float | None, seconds: float = 10.0) -> dict:
    return {"downstream": {"dev_em": dev, "test_em": test}, "mll": None if mll is None else {"nats_per_token": mll},
            "wall_seconds": seconds, "pretrain": {"tokens": 1000}}


def study_with(points: list[tuple[str, float, float | None]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    families = CategoricalDistribution(sorted({family for family, _, _ in points}))
    for family, value, mll in points:
        study.add_trial(optuna.trial.create_trial(params={"family": family}, distributions={"family": families},
                                                  value=value, user_attrs={"mll_nats_per_token": mll}))
    return study


def test_rows_average_final_runs_and_rank_by_dev():
    entity = leaderboard_row("entity", "entity", "search", 3, {"entity.rate": 0.2},
                             [results(0.3, 0.28, -9.0), results(0.5, 0.32, -8.0)])
    random = leaderboard_row("random", "random", "search", 1, {}, [results(0.1, 0.1, None)])
    board = rank([random, entity])
    assert [row["label"] for row in board] == ["entity", "random"] and board[0]["rank"] == 1
    assert board[0]["dev_em"] == pytest.approx(0.4) and board[0]["dev_em_spread"] == pytest.approx(0.1414213562)
    assert board[0]["mll_nats_per_token"] == pytest.approx(-8.5) and board[1]["mll_nats_per_token"] is None
    table = format_table(board)
    assert "0.400 ± 0.141" in table and "—" in table


def test_files_are_written_with_params_as_text(tmp_path):
    board = rank([leaderboard_row("span", "span", "search", 0, {"span.p": 0.2, "span.rate": 0.15},
                                  [results(0.2, 0.2, -3.0)])])
    write_leaderboard(tmp_path, board)
    assert json.loads((tmp_path / "leaderboard.json").read_text())[0]["params"] == {"span.p": 0.2, "span.rate": 0.15}
    with open(tmp_path / "leaderboard.csv") as handle:
        row = next(csv.DictReader(handle))
    assert row["params"] == "span.p=0.2; span.rate=0.15" and row["rank"] == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leaderboard.csv", "leaderboard.json"]


def test_spearman_correlation_over_completed_trials():
    agreeing = study_with([("a", 0.1, -3.0), ("a", 0.2, -2.0), ("b", 0.3, -1.0), ("b", 0.4, None)])
    assert correlation(agreeing) == {"method": "spearman", "rho": pytest.approx(1.0), "p_value": pytest.approx(0.0),
                                     "trials": 3}
    opposed = study_with([("a", 0.1, -1.0), ("a", 0.2, -2.0), ("b", 0.3, -3.0), ("b", 0.4, -4.0)])
    assert correlation(opposed)["rho"] == pytest.approx(-1.0)
    assert correlation(study_with([("a", 0.1, -1.0), ("a", 0.2, -2.0)])) is None


def test_best_trial_of_each_family():
    study = study_with([("a", 0.1, None), ("a", 0.3, None), ("b", 0.2, None)])
    best = best_per_family(study)
    assert {family: trial.value for family, trial in best.items()} == {"a": 0.3, "b": 0.2}


@pytest.mark.parametrize(
    ("target", "trained"),
    [("maskpolicy.policies.learned.LearnedPolicy", True), ("maskpolicy.policies.LearnedPolicy", True),
     ("maskpolicy.policies.span.SpanPolicy", False), ("maskpolicy.meta.artifacts.load_policy", False)],
)
def test_a_learned_family_is_trained_whatever_path_names_it(target, trained):
    assert needs_training({"_target_": target}) is trained
