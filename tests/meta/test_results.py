"""The results layer: typed records round-trip, versions are checked, every file is written whole."""

from __future__ import annotations

import json
import os
import stat

import pytest

from maskpolicy.meta.results import schema
from maskpolicy.meta.results.files import copy_directory, staged_directory, write_atomic, write_json, write_text
from maskpolicy.meta.results.schema import (
    BaseRecord,
    Downstream,
    Evaluation,
    FixedRatePoint,
    LearnedPolicyRecord,
    LearnResults,
    MaskQuality,
    MLLScore,
    ModelRecord,
    Named,
    PolicyRecord,
    PretrainResults,
    PretrainStats,
    RateCurveRecord,
    ResultsError,
    ScoreResults,
)

CURVE = RateCurveRecord([0.5, 1.0], [-1.5, None], [1, 2])
PRETRAIN = PretrainResults(PolicyRecord("entity", {"_target_": "maskpolicy.policies.EntityPolicy", "rate": 0.15}),
                           Named("bioworld", {"n_people": 40}), ModelRecord("tiny_bert", {}, 540_000), 0,
                           Downstream(0.3, 0.31, 7, 0.29, 0.3), PretrainStats(6, 1000, 150, 2.5, 20),
                           MLLScore("stratified", -120.0, 1.5, -2.4, -3.46, "mean", 64, 4, 200, CURVE, 0.5), 12.5,
                           mll_targets={"entities": MLLScore("stratified", -10.0, 0.5, -1.9, -2.7, "mean", 64, 4, 20,
                                                             CURVE, 0.2, "entities", 1)},
                           base=BaseRecord("cache", "ab12", "/cache/ab12", 1500, {"documents": 900}, 0.0))
QUALITY = MaskQuality(0.8, 0.9, 100, 90)
LEARN = LearnResults("supervised", Named("bioworld", {}), LearnedPolicyRecord({"rate": 0.15}, "policy"),
                     Evaluation("dev", QUALITY, QUALITY, QUALITY, QUALITY), {"loss": [0.5, 0.4]}, 0, 3.0)
SCORE = ScoreResults(Named("ppca", {}), 0, "exhaustive", -50.0, None, "sum", -3.1, -4.5, 2, 16, 510, 255.0, CURVE,
                     [FixedRatePoint(0.15, 0.125, -45.0, 0.2, -2.8, 20, 5.0)], 1.0, exact_lml=-50.0)


@pytest.mark.parametrize("record", [PRETRAIN, LEARN, SCORE], ids=lambda r: r.command)
def test_every_record_round_trips_through_results_json(tmp_path, record):
    path = schema.save(tmp_path, record)
    payload = json.loads(path.read_text())
    assert payload["schema"] == {"command": record.command, "version": schema.SCHEMA_VERSION}
    assert schema.load(tmp_path) == record and schema.load(path, type(record)) == record


def test_keys_users_read_keep_their_names(tmp_path):
    payload = json.loads(schema.save(tmp_path, PRETRAIN).read_text())
    assert payload["downstream"]["test_em"] == 0.29 and payload["mll"]["nats_per_token"] == -2.4
    assert payload["policy"]["params"]["rate"] == 0.15 and payload["pretrain"]["masked_tokens"] == 150
    assert {"policy", "task", "model", "seed", "downstream", "pretrain", "mll", "wall_seconds", "versions"} <= set(
        payload)


def test_a_version_one_file_without_schema_still_loads(tmp_path):
    payload = schema.to_dict(PRETRAIN)
    del payload["schema"]
    write_json(tmp_path / "results.json", payload)
    assert schema.load(tmp_path) == PRETRAIN


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: p["schema"].update(version=99), "schema 99; this maskpolicy reads versions 1–4: upgrade"),
    (lambda p: p["schema"].update(command="train"), "unknown command 'train'"),
    (lambda p: p["downstream"].update(dev_exact=1.0), r"results.json.downstream: unknown key\(s\) \['dev_exact'\]"),
    (lambda p: p.pop("seed"), r"missing key\(s\) \['seed'\]"),
])
def test_a_bad_file_is_refused_naming_the_problem(tmp_path, change, message):
    payload = schema.to_dict(PRETRAIN)
    change(payload)
    write_json(tmp_path / "results.json", payload)
    with pytest.raises(ResultsError, match=message):
        schema.load(tmp_path)


def test_the_wrong_kind_and_a_missing_file_are_named(tmp_path):
    schema.save(tmp_path, LEARN)
    with pytest.raises(ResultsError, match="holds learn results, not pretrain results"):
        schema.load(tmp_path, PretrainResults)
    with pytest.raises(ResultsError, match="no results at .*has not finished"):
        schema.load(tmp_path / "elsewhere")


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    path = write_text(tmp_path / "report.html", "old")

    def dies_half_way(handle) -> None:
        handle.write("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, dies_half_way)
    with pytest.raises(ValueError, match="Out of range float"):
        write_json(path, {"x": float("nan")})
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_written_files_get_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_staged_directory_replaces_the_old_one_whole_or_not_at_all(tmp_path):
    target = tmp_path / "policy"
    with staged_directory(target) as staging:
        (staging / "card.json").write_text("1")
    with pytest.raises(RuntimeError), staged_directory(target) as staging:
        (staging / "card.json").write_text("2")
        raise RuntimeError("killed half way")
    assert (target / "card.json").read_text() == "1"
    copy_directory(target, tmp_path / "copy")
    assert (tmp_path / "copy/card.json").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "policy"]
