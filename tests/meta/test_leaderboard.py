"""Leaderboard rows, ranking by the first objective, the MLL–dev EM correlation and the files they go to."""

from __future__ import annotations

import csv
import dataclasses
import json

import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from maskpolicy.meta.results.schema import PretrainResults
from maskpolicy.meta.search.final import FinalConfiguration
from maskpolicy.meta.search.leaderboard import correlation, format_leaderboard, leaderboard, write_leaderboard
from maskpolicy.meta.search.objectives import DEV_EM, MLL
from maskpolicy.meta.search.study import best_per_family
from maskpolicy.meta.search.trial import needs_training


def configuration(label: str, *runs: PretrainResults, trial: int = 0) -> FinalConfiguration:
    return FinalConfiguration(label, label, "search", trial, {f"{label}.rate": 0.2}, {}, runs=list(runs))


def study_with(points: list[tuple[str, float, float | None]], direction: str = "maximize") -> optuna.Study:
    study = optuna.create_study(direction=direction)
    families = CategoricalDistribution(sorted({family for family, _, _ in points}))
    for family, value, mll in points:
        metrics = {"dev_em": value, "dev_f1": value, "mll_nats_per_token": mll}
        study.add_trial(optuna.trial.create_trial(params={"family": family}, distributions={"family": families},
                                                  value=value, user_attrs={"metrics": metrics}))
    return study


def test_rows_average_the_final_runs_and_rank_by_dev_em(make_run):
    board = leaderboard([configuration("random", make_run(0.1, 0.1, None)),
                         configuration("entity", make_run(0.3, 0.28, -9.0), make_run(0.5, 0.32, -8.0))], DEV_EM)
    assert [row["label"] for row in board] == ["entity", "random"] and [row["rank"] for row in board] == [1, 2]
    entity, random = board
    assert entity["seeds"] == 2 and entity["dev_em"] == pytest.approx(0.4)
    assert entity["dev_em_spread"] == pytest.approx(0.1414213562) and entity["test_em"] == pytest.approx(0.3)
    assert entity["mll_nats_per_token"] == pytest.approx(-8.5) and random["mll_nats_per_token"] is None
    table = format_leaderboard(board)
    assert "0.400 ± 0.141" in table and "—" in table.splitlines()[-1]


def test_ranking_follows_the_first_objective(make_run):
    high_dev = configuration("entity", make_run(0.5, 0.5, -9.0))
    high_mll = configuration("random", make_run(0.1, 0.1, -3.0))
    no_mll = configuration("span", make_run(0.3, 0.3, None))
    assert [row["label"] for row in leaderboard([high_dev, high_mll, no_mll], DEV_EM)] == ["entity", "span", "random"]
    assert [row["label"] for row in leaderboard([high_dev, high_mll, no_mll], MLL)] == ["random", "entity", "span"]


def test_files_are_written_with_params_as_text(tmp_path, make_run):
    board = leaderboard([configuration("span", make_run(0.2, 0.2, -3.0))], DEV_EM)
    write_leaderboard(tmp_path, board)
    assert json.loads((tmp_path / "leaderboard.json").read_text())[0]["params"] == {"span.rate": 0.2}
    with open(tmp_path / "leaderboard.csv") as handle:
        row = next(csv.DictReader(handle))
    assert row["params"] == "span.rate=0.2" and row["rank"] == "1" and float(row["test_em"]) == pytest.approx(0.2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leaderboard.csv", "leaderboard.json"]


def test_spearman_correlation_compares_mll_with_dev_em_whatever_the_objective():
    agreeing = study_with([("a", 0.1, -3.0), ("a", 0.2, -2.0), ("b", 0.3, -1.0), ("b", 0.4, None)])
    assert correlation(agreeing) == {"method": "spearman", "x": "mll_nats_per_token", "y": "dev_em",
                                     "rho": pytest.approx(1.0), "p_value": pytest.approx(0.0), "trials": 3}
    opposed = study_with([("a", 0.1, -1.0), ("a", 0.2, -2.0), ("b", 0.3, -3.0), ("b", 0.4, -4.0)])
    assert correlation(opposed)["rho"] == pytest.approx(-1.0)
    # a study that optimised MLL: its values are MLL, but the correlation still reads dev EM from the metrics
    by_mll = optuna.create_study(direction="maximize")
    family = CategoricalDistribution(["a"])
    for dev, mll in [(0.4, -1.0), (0.3, -2.0), (0.1, -3.0)]:
        by_mll.add_trial(optuna.trial.create_trial(params={"family": "a"}, distributions={"family": family}, value=mll,
                                                   user_attrs={"metrics": {"dev_em": dev, "mll_nats_per_token": mll}}))
    assert correlation(by_mll)["rho"] == pytest.approx(1.0)
    assert correlation(study_with([("a", 0.1, -1.0), ("a", 0.2, -2.0)])) is None


def test_best_trial_of_each_family_follows_the_objectives_direction():
    points = [("a", 0.1, None), ("a", 0.3, None), ("b", 0.2, None)]
    assert {f: t.value for f, t in best_per_family(study_with(points), DEV_EM).items()} == {"a": 0.3, "b": 0.2}
    lowest = best_per_family(study_with(points, "minimize"), dataclasses.replace(DEV_EM, direction="minimize"))
    assert {f: t.value for f, t in lowest.items()} == {"a": 0.1, "b": 0.2}


@pytest.mark.parametrize(
    ("target", "trained"),
    [("maskpolicy.policies.learned.LearnedPolicy", True), ("maskpolicy.policies.LearnedPolicy", True),
     ("maskpolicy.policies.span.SpanPolicy", False), ("maskpolicy.meta.learning.artifacts.load_policy", False)],
)
def test_a_learned_family_is_trained_whatever_path_names_it(target, trained):
    assert needs_training({"_target_": target}) is trained
