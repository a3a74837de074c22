"""Damaged files thrown at the loaders: ``results.json``, policy artifacts (card and safetensors) and study databases.

Hypothesis truncates them, flips bits, swaps a value of the JSON for another, and writes oversized ones. Every loader
must either read the file or refuse it with its named error (:class:`ResultsError`, :class:`ArtifactError`,
:class:`SearchConfigError`), never crash deep inside with a ``KeyError`` or a ``TypeError``, and never unpickle
anything. Examples are bounded and derandomised (seconds, the same on every machine).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import optuna
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskpolicy.meta.learning.artifacts import CARD, WEIGHTS, ArtifactError, load_policy, read_card, save_policy
from maskpolicy.meta.results.schema import PretrainResults, ResultsError, load, save
from maskpolicy.meta.search.engines import SearchConfigError, open_storage, open_study
from maskpolicy.policies import PMIPolicy, PolicyError, RandomPolicy, TokenBatch

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children,
                                                                                      max_size=3), max_leaves=8)


def truncated(data: bytes, draw_fraction: float) -> bytes:
    return data[: int(len(data) * draw_fraction)]


def flipped(data: bytes, positions: list[int]) -> bytes:
    damaged = bytearray(data)
    for position in positions:
        damaged[position % len(damaged)] ^= 1 << (position % 8)
    return bytes(damaged)


DAMAGE = st.one_of(st.tuples(st.just("truncate"), st.floats(0.0, 0.999)),
                   st.tuples(st.just("flip"), st.lists(st.integers(0, 2**20), min_size=1, max_size=6)))


def damaged(data: bytes, damage: tuple) -> bytes:
    kind, how = damage
    return truncated(data, how) if kind == "truncate" else flipped(data, how)


def paths(payload: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path inside a JSON payload (dict keys and list indices)."""
    found = [prefix] if prefix else []
    items = payload.items() if isinstance(payload, dict) else enumerate(payload) if isinstance(payload, list) else ()
    for key, value in items:
        found += paths(value, (*prefix, key))
    return found


def replaced(payload: object, path: tuple, value: object) -> object:
    copy = json.loads(json.dumps(payload))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return copy


@pytest.fixture(autouse=True)
def no_pickle(monkeypatch):
    """Any unpickling during these tests fails them."""
    def refuse(*args, **kwargs):
        raise AssertionError("a loader unpickled a file")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)


# ---------------------------------------------------------------------------- results.json


@pytest.fixture(scope="module")
def results_bytes(tmp_path_factory) -> bytes:
    from maskpolicy.meta.results.schema import (
        Downstream,
        MLLScore,
        ModelRecord,
        Named,
        PolicyRecord,
        PretrainStats,
        RateCurveRecord,
    )

    record = PretrainResults(PolicyRecord("entity", {"rate": 0.15}), Named("bioworld", {}),
                             ModelRecord("tiny_bert", {}, 10), 1, Downstream(0.25, 0.3, 3, 0.2, 0.25),
                             PretrainStats(10, 1000, 150, 2.0),
                             MLLScore("stratified", 10.0, 0.1, 0.2, 0.3, "mean", 64, 4, 200,
                                      RateCurveRecord([0.5, 1.0], [0.2, 0.2])), 10.0)
    return save(tmp_path_factory.mktemp("results"), record).read_bytes()


def load_or_refuse(path: Path) -> None:
    try:
        loaded = load(path)
    except ResultsError as error:
        assert str(error)
        return
    assert loaded.command in ("pretrain", "score", "learn", "identify")


@FUZZ
@given(damage=DAMAGE)
def test_a_truncated_or_bit_flipped_results_file_is_read_or_refused_by_name(tmp_path, results_bytes, damage):
    path = tmp_path / "results.json"
    path.write_bytes(damaged(results_bytes, damage))
    load_or_refuse(path)


@FUZZ
@given(data=st.data(), value=JSON)
def test_a_results_file_with_any_value_swapped_is_read_or_refused_by_name(tmp_path, results_bytes, data, value):
    payload = json.loads(results_bytes)
    path = data.draw(st.sampled_from(paths(payload)))
    (tmp_path / "results.json").write_text(json.dumps(replaced(payload, path, value)))
    load_or_refuse(tmp_path / "results.json")


@pytest.mark.parametrize("text", [json.dumps({"x": "y" * 20_000_000}),
                                  '{"schema": {"command": "pretrain", "version": 4}, "seed": 1e999999}',
                                  '{"schema": {"version": 99}}',
                                  '{"schema": {"command": "deploy", "version": 1}}'])
def test_an_oversized_or_unknown_results_file_is_refused_by_name(tmp_path, text):
    (tmp_path / "results.json").write_text(text)
    with pytest.raises(ResultsError, match=r"unknown key|results schema 99|unknown command 'deploy'|missing key"):
        load(tmp_path / "results.json")


@pytest.mark.parametrize("content", [b'{"schema": "\xe8"}', b"null", b"[]", b'"results"', b'{"schema": 1}',
                                     b'{"schema": {"command": [], "version": 1}}', b"[" * 100_000 + b"]" * 100_000],
                         ids=["not-utf8", "null", "list", "string", "schema-not-object", "command-list", "deep"])
def test_a_results_file_that_is_not_utf8_not_an_object_or_too_deep_is_refused_by_name(tmp_path, content):
    (tmp_path / "results.json").write_bytes(content)
    with pytest.raises(ResultsError):
        load(tmp_path / "results.json")


# ---------------------------------------------------------------------------- policy artifacts


def fitted_pmi() -> PMIPolicy:
    """A pmi policy fitted on 30 rows of six two-token words in shuffled order (each word's bigram recurs)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.stack([order * 2 + 10, order * 2 + 11], 1).flatten()
                       for order in (torch.randperm(6, generator=generator) for _ in range(30))])
    policy = PMIPolicy(0.3, max_n=2)
    policy.fit(TokenBatch(ids, torch.ones_like(ids, dtype=torch.bool), torch.arange(12).expand(30, 12).clone()))
    return policy


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """A saved policy without tensors (random) and one with tables in safetensors (a fitted pmi)."""
    root = tmp_path_factory.mktemp("artifacts")
    return {"random": save_policy(RandomPolicy(0.2), root / "random"), "pmi": save_policy(fitted_pmi(), root / "pmi")}


def copy_of(source: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def load_or_refuse_policy(path: Path) -> None:
    try:
        policy = load_policy(path)
        ids = torch.arange(2, 14).reshape(1, 12)
        mask = policy.select(TokenBatch(ids, ids > 2, torch.arange(12).unsqueeze(0)),
                             torch.Generator().manual_seed(0))
    except (ArtifactError, PolicyError) as error:  # ArtifactError is a PolicyError; both say what is wrong
        assert str(error)
        return
    assert mask.shape == ids.shape and not mask[0, 0]


@FUZZ
@given(which=st.sampled_from(["random", "pmi"]), damage=DAMAGE)
def test_a_damaged_card_is_loaded_or_refused_by_name(tmp_path, artifacts, which, damage):
    folder = copy_of(artifacts[which], tmp_path / "policy")
    (folder / CARD).write_bytes(damaged((folder / CARD).read_bytes(), damage))
    load_or_refuse_policy(folder)


@FUZZ
@given(which=st.sampled_from(["random", "pmi"]), data=st.data(), value=JSON)
def test_a_card_with_any_value_swapped_is_loaded_or_refused_by_name(tmp_path, artifacts, which, data, value):
    folder = copy_of(artifacts[which], tmp_path / "policy")
    card = json.loads((folder / CARD).read_text())
    (folder / CARD).write_text(json.dumps(replaced(card, data.draw(st.sampled_from(paths(card))), value)))
    load_or_refuse_policy(folder)


@pytest.mark.parametrize(("key", "value"), [("tensors", True), ("policy", 5), ("feature_sizes", None),
                                            (("policy", "params"), True)], ids=["tensors", "policy", "feature_sizes",
                                                                                "params"])
def test_a_card_section_of_the_wrong_type_is_refused_with_an_artifact_error(tmp_path, artifacts, key, value):
    folder = copy_of(artifacts["pmi"], tmp_path / "policy")
    card = json.loads((folder / CARD).read_text())
    (folder / CARD).write_text(json.dumps(replaced(card, key if isinstance(key, tuple) else (key,), value)))
    with pytest.raises(ArtifactError):
        load_policy(folder)


def with_tensor_file(folder: Path, data: bytes) -> Path:
    """The folder with ``data`` as its tensor file and the card's checksum made to match, so the reader sees it."""
    import hashlib

    (folder / WEIGHTS).write_bytes(data)
    card = read_card(folder)
    card["tensors"]["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / CARD).write_text(json.dumps(card))
    return folder


@FUZZ
@given(damage=DAMAGE, checksum_updated=st.booleans())
def test_damaged_safetensors_are_refused_by_name_whether_or_not_the_checksum_matches(tmp_path, artifacts, damage,
                                                                                      checksum_updated):
    folder = copy_of(artifacts["pmi"], tmp_path / "policy")
    data = damaged((folder / WEIGHTS).read_bytes(), damage)
    if checksum_updated:
        with_tensor_file(folder, data)
    else:
        (folder / WEIGHTS).write_bytes(data)
    load_or_refuse_policy(folder)


def test_an_oversized_safetensors_header_and_a_pickle_in_its_place_are_refused_and_nothing_is_unpickled(
        tmp_path, artifacts):
    huge = (2**62).to_bytes(8, "little") + b"{}"   # a header length no file holds
    folder = with_tensor_file(copy_of(artifacts["pmi"], tmp_path / "huge"), huge)
    with pytest.raises(ArtifactError, match="is not a readable safetensors file"):
        load_policy(folder)
    pickled = pickle.dumps({"table": [1, 2, 3]})  # dumping is allowed; loading would trip the fixture
    folder = with_tensor_file(copy_of(artifacts["pmi"], tmp_path / "pickled"), pickled)
    with pytest.raises(ArtifactError, match="is not a readable safetensors file"):
        load_policy(folder)


# ---------------------------------------------------------------------------- study databases


@pytest.fixture(scope="module")
def study_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("study") / "study.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="maskpolicy", storage=open_storage(path, heartbeat_interval=None))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    return path.read_bytes()


@settings(FUZZ, max_examples=25)
@given(damage=DAMAGE)
def test_a_damaged_study_database_is_read_or_refused_by_name(tmp_path, study_bytes, damage):
    path = tmp_path / "study.db"
    path.write_bytes(damaged(study_bytes, damage))
    try:  # what maskpolicy-search and the sweeper do: open the storage, then create the study or load it
        study = open_study(open_storage(path, heartbeat_interval=None), "maskpolicy")
    except SearchConfigError as error:
        assert f"{path} is not a whole SQLite study database" in str(error) and "Restore it" in str(error)
        return
    assert len(study.get_trials(deepcopy=False)) in (0, 3)  # an empty file is a new study; otherwise the three
