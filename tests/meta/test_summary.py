"""Multirun summaries: metric means ± spread per policy, with the marginal-likelihood score."""

from __future__ import annotations

import pytest

from maskpolicy.meta.summary import format_table, summarize


def result(policy: str, seed: int, dev: float, mll: float | None) -> dict:
    return {"task": {"name": "bioworld"}, "model": {"name": "tiny_bert"}, "policy": {"name": policy}, "seed": seed,
            "downstream": {"dev_em": dev, "test_em": dev / 2, "test_f1": dev}, "wall_seconds": 10.0 + seed,
            "mll": None if mll is None else {"nats_per_token": mll}}


def test_rows_average_over_seeds_and_carry_the_score():
    rows = summarize([result("entity", 0, 0.3, -2.0), result("entity", 1, 0.5, -3.0), result("random", 0, 0.1, None),
                      {"estimate": -1.0}])  # a maskpolicy-score result in the same tree is not a pre-training run
    entity, random = rows
    assert entity["policy"] == "entity" and entity["seeds"] == 2
    assert entity["dev_em"] == pytest.approx(0.4) and entity["dev_em_spread"] == pytest.approx(0.1414213562)
    assert entity["mll_nats_per_token"] == pytest.approx(-2.5) and entity["wall_seconds"] == 10.5
    assert random["mll_nats_per_token"] is None
    table = format_table(rows)
    assert "-2.500 ± 0.707" in table and "—" in table.splitlines()[-1]


def test_saved_policies_are_told_apart_by_method_and_folder():
    supervised, meta = result("artifact", 0, 0.5, -3.0), result("artifact", 0, 0.4, -3.5)
    supervised["policy"]["source"] = {"path": "/runs/a/policy", "training": {"method": "supervised"}}
    meta["policy"]["source"] = {"path": "/runs/b/policy", "training": {"method": "meta"}}
    rows = summarize([supervised, meta])
    assert [row["policy"] for row in rows] == ["artifact[meta:b]", "artifact[supervised:a]"]
    assert "artifact[supervised:a]" in format_table(rows)
