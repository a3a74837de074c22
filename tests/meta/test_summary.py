"""Multirun summaries: metric means ± spread per policy, with the marginal-likelihood score."""

from __future__ import annotations

import pytest

from maskpolicy.meta.results import schema
from maskpolicy.meta.results.aggregate import SUMMARY_COLUMNS, format_table, runs_under, summarize, write_summary
from maskpolicy.meta.results.schema import (
    Downstream,
    MLLScore,
    ModelRecord,
    Named,
    PolicyRecord,
    PretrainResults,
    PretrainStats,
    RateCurveRecord,
)


def result(policy: str, seed: int, dev: float, mll: float | None, source: dict | None = None) -> PretrainResults:
    curve = RateCurveRecord([], [])
    score = None if mll is None else MLLScore("stratified", mll, None, mll, mll, "mean", 1, 1, 1, curve)
    return PretrainResults(PolicyRecord(policy, {}, source), Named("bioworld", {}), ModelRecord("tiny_bert", {}, 1),
                           seed, Downstream(dev, dev, 1, dev / 2, dev), PretrainStats(1, 100, 15, 1.0),
                           score, 10.0 + seed)


def test_rows_average_over_seeds_and_carry_the_score():
    entity, random = summarize([result("entity", 0, 0.3, -2.0), result("entity", 1, 0.5, -3.0),
                                result("random", 0, 0.1, None)])
    assert entity["policy"] == "entity" and entity["seeds"] == 2
    assert entity["dev_em"] == pytest.approx(0.4) and entity["dev_em_spread"] == pytest.approx(0.1414213562)
    assert entity["mll_nats_per_token"] == pytest.approx(-2.5) and entity["seconds"] == 10.5
    assert random["mll_nats_per_token"] is None and random["dev_em_spread"] == 0.0
    table = format_table([entity, random], SUMMARY_COLUMNS)
    assert "-2.50 ± 0.71" in table and "—" in table.splitlines()[-1]


def test_saved_policies_are_told_apart_by_method_and_folder():
    supervised = result("artifact", 0, 0.5, -3.0, {"path": "/runs/a/policy", "training": {"method": "supervised"}})
    meta = result("artifact", 0, 0.4, -3.5, {"path": "/runs/b/policy", "training": {"method": "meta_learning"}})
    rows = summarize([supervised, meta])
    assert [row["policy"] for row in rows] == ["artifact[meta_learning:b]", "artifact[supervised:a]"]


def test_the_summary_reads_each_jobs_results_and_writes_json_and_csv(tmp_path):
    for job, (policy, dev) in enumerate([("entity", 0.3), ("random", 0.1)]):
        schema.save(tmp_path / str(job), result(policy, 0, dev, -2.0))
    (tmp_path / "2").mkdir()  # a job that died before writing results is left out
    rows = write_summary(tmp_path, runs_under(tmp_path))
    assert [row["policy"] for row in rows] == ["entity", "random"]
    assert (tmp_path / "summary.csv").read_text().splitlines()[0].startswith("task,model,policy,seeds,dev_em")
