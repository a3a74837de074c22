"""A run's search signals: the pre-training probe and the score targets, checked before any training."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

import maskpolicy.meta.pipeline as pipeline
from maskpolicy.meta.config import ConfigError
from maskpolicy.meta.scoring.estimators import MLLError

TINY = ["task.n_people=20", "task.biographies_per_person=2", "pretrain.steps=4", "pretrain.batch_size=8",
        "pretrain.checkpoint_every=4", "finetune.epochs=1", "finetune.batch_size=8", "score.passes=2",
        "score.max_sequences=6", "trainer.enable_progress_bar=false", "logger=[csv]", "model.config.hidden_size=32",
        "model.config.intermediate_size=64", "pretrain.save_model=false", "pretrain.probe.passes=2",
        "pretrain.probe.max_sequences=6"]
NAMES = pipeline.RunNames("random", "bioworld", "tiny_bert")


def config(*overrides: str):
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        return compose("pretrain", overrides=[*TINY, *overrides])


def test_the_probe_scores_every_k_steps_and_every_target_is_reported(tmp_path):
    cfg = config("pretrain.probe.every=2", "score.targets=[entities,all,answers]")
    results = pipeline.run_pretraining(cfg, tmp_path, NAMES, test=False)
    probe = results.pretrain.probe
    assert [step for step, _ in probe] == [2, 4] and all(value < 0 for _, value in probe)
    assert results.pretrain.probe_target == "entities" and results.pretrain.probe_seconds > 0
    assert list(results.mll_targets) == ["entities", "all", "answers"]
    assert results.mll is results.mll_targets["all"]
    assert [score.target for score in results.mll_targets.values()] == ["entities", "all", "answers"]
    # entity tokens are a subset of all tokens: fewer tokens scored, never more
    assert results.mll_targets["entities"].tokens < results.mll_targets["all"].tokens


def test_the_probe_measures_the_model_not_its_masks(tmp_path):
    """The same masks at every probe: an untrained model (learning rate 0) reads the same value each time."""
    cfg = config("pretrain.probe.every=2", "pretrain.learning_rate=0.0", "score.enabled=false")
    results = pipeline.run_pretraining(cfg, tmp_path, NAMES, test=False)
    (_, first), (_, second) = results.pretrain.probe
    assert first == pytest.approx(second, abs=1e-12) and results.mll_targets == {} and results.mll is None


def test_a_probe_interval_longer_than_pre_training_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"pretrain.probe.every=5 is longer than pre-training \(pretrain.steps=4\)"):
        pipeline.run_pretraining(config("pretrain.probe.every=5"), tmp_path, NAMES, test=False)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(("override", "error", "message"), [
    ("score.targets=[all,nouns]", MLLError, "unknown score.target 'nouns'"),
    ("score.targets=all", ConfigError, "score.targets must be a non-empty list"),
    ("score.targets=[]", ConfigError, "score.targets must be a non-empty list"),
    ("pretrain.probe.target=nouns", MLLError, "unknown score.target 'nouns'"),
])
def test_unknown_targets_are_refused_before_training(tmp_path, override, error, message):
    cfg = config("pretrain.probe.every=2", override)
    with pytest.raises(error, match=message):
        pipeline.run_pretraining(cfg, tmp_path, NAMES, test=False)
    assert not (tmp_path / "checkpoints").exists()
