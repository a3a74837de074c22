"""Policy artifacts: safetensors + card, atomic saves, no pickles, clear errors for bad files."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_module

from maskpolicy.meta.config import build
from maskpolicy.meta.learning.artifacts import CARD, WEIGHTS, ArtifactError, load_policy, read_card, save_policy
from maskpolicy.policies import PORTABLE_FEATURES, LearnedPolicy, TokenBatch
from maskpolicy.policies.features import FEATURE_SIZES

TRAINING = {"method": "supervised", "task": {"name": "bioworld", "params": {"seed": 0}}, "metrics": {"recall": 0.9}}


def batch() -> TokenBatch:
    generator = torch.Generator().manual_seed(0)
    features = torch.stack([torch.randint(1, FEATURE_SIZES[n], (2, 9), generator=generator)
                            for n in PORTABLE_FEATURES], -1)
    maskable = torch.ones(2, 9, dtype=torch.bool)
    return TokenBatch(torch.zeros(2, 9, dtype=torch.long), maskable, features=features, feature_names=PORTABLE_FEATURES)


@pytest.fixture
def saved(tmp_path):
    policy = LearnedPolicy(rate=0.3, features=PORTABLE_FEATURES, hidden_size=8, embedding_dim=8, seed=7)
    return policy, save_policy(policy, tmp_path / "policy", TRAINING)


def test_a_saved_policy_loads_with_identical_scores_and_its_source(saved):
    policy, path = saved
    loaded = load_policy(path)
    with torch.no_grad():
        assert torch.equal(policy.logits(batch()), loaded.logits(batch()))
    assert loaded.rate == 0.3 and loaded.features == PORTABLE_FEATURES
    assert loaded.source["training"] == TRAINING and loaded.source["path"] == str(path.resolve())
    assert sorted(p.name for p in path.iterdir()) == [CARD, WEIGHTS]
    card = read_card(path)
    assert card["format_version"] == 1 and card["versions"]["torch"] and len(card["weights"]["sha256"]) == 64


def test_overrides_replace_saved_settings(saved):
    _, path = saved
    loaded = load_policy(path, rate=0.5, sampling="topk")
    assert loaded.rate == 0.5 and loaded.sampling == "topk"


def test_saving_again_replaces_the_directory_whole(saved, tmp_path):
    _, path = saved
    save_policy(LearnedPolicy(rate=0.2, features=PORTABLE_FEATURES, hidden_size=8, embedding_dim=8), path, TRAINING)
    assert load_policy(path).rate == 0.2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]  # no staging or retired copies left


def test_a_save_that_fails_leaves_the_previous_artifact_whole(saved, tmp_path, monkeypatch):
    _, path = saved

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("maskpolicy.meta.learning.artifacts.write_json", fail)
    with pytest.raises(OSError, match="disk full"):
        save_policy(LearnedPolicy(rate=0.2, features=PORTABLE_FEATURES, hidden_size=8, embedding_dim=8), path,
                    TRAINING)
    assert load_policy(path).rate == 0.3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]


def test_policy_artifact_config_builds_it(saved):
    _, path = saved
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose("pretrain", overrides=["policy=artifact", f"policy.path={path}", "policy.rate=0.25"])
    policy = build(cfg.policy, "policy")
    assert isinstance(policy, LearnedPolicy) and policy.rate == 0.25


def test_a_missing_artifact_says_what_is_expected(tmp_path):
    with pytest.raises(ArtifactError, match="expected card.json and policy.safetensors"):
        load_policy(tmp_path / "nothing")


def test_tampered_weights_fail_the_checksum(saved):
    _, path = saved
    data = bytearray((path / WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the checksum"):
        load_policy(path)


def test_truncated_weights_fail_the_checksum(saved):
    _, path = saved
    (path / WEIGHTS).write_bytes((path / WEIGHTS).read_bytes()[:100])
    with pytest.raises(ArtifactError, match="modified or truncated"):
        load_policy(path)


def test_a_truncated_card_is_damaged(saved):
    _, path = saved
    (path / CARD).write_text((path / CARD).read_text()[:50])
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_policy(path)


def test_a_newer_format_version_asks_for_an_upgrade(saved):
    _, path = saved
    card = json.loads((path / CARD).read_text())
    card["format_version"] = 2
    (path / CARD).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="card format version 2; this maskpolicy reads versions 1–1"):
        load_policy(path)


def test_a_card_that_does_not_fit_its_weights_is_refused(saved):
    _, path = saved
    card = json.loads((path / CARD).read_text())
    card["policy"]["params"]["hidden_size"] = 16
    (path / CARD).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="does not fit the card's policy parameters"):
        load_policy(path)


def test_an_unknown_policy_class_is_refused(saved):
    _, path = saved
    card = json.loads((path / CARD).read_text())
    card["policy"]["class"] = "pickled"
    (path / CARD).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="unknown policy class 'pickled'"):
        load_policy(path)


def test_a_policy_from_another_feature_schema_asks_for_retraining(saved):
    _, path = saved
    card = json.loads((path / CARD).read_text())
    assert card["feature_sizes"]["position"] == FEATURE_SIZES["position"]
    card["feature_sizes"]["position"] = 9
    (path / CARD).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="feature 'position' of size 9, but in this maskpolicy it has size 10"):
        load_policy(path)
