"""Policy artifacts: safetensors + card, atomic saves, no pickles, clear errors for bad files."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from safetensors.torch import load_file, save_file

from maskpolicy.meta.config import build_policy
from maskpolicy.meta.learning.artifacts import (
    CARD,
    WEIGHTS,
    ArtifactError,
    check_use,
    entity_source,
    load_policy,
    read_card,
    save_policy,
)
from maskpolicy.meta.learning.train import learn_policy
from maskpolicy.meta.pipeline import RunNames, run_pretraining
from maskpolicy.meta.results.schema import PretrainResults, load, save
from maskpolicy.policies import PORTABLE_FEATURES, LearnedPolicy, TokenBatch
from maskpolicy.policies.features import FEATURE_SIZES
from maskpolicy.tasks.data.bioworld import BioWorld
from maskpolicy.tasks.data.squad import SquadTask
from maskpolicy.tasks.data.tagging import RuleTagger

# a card's training block as versions before the entity source and quality were recorded wrote it
TRAINING = {"method": "supervised", "task": {"name": "bioworld", "params": {"seed": 0}}, "metrics": {"recall": 0.9}}
GOLD_TRAINING = {**TRAINING, "tagger": {"kind": "gold"}}
RULE = {"kind": "tagger", "class": "RuleTagger", "config": {"names": True, "dates": True, "numbers": True}}
SMALL_LEARN = ["task.n_people=40", "task.biographies_per_person=2", "learning.supervised.epochs=3"]
TINY_RUN = ["model.config.hidden_size=32", "model.config.intermediate_size=64", "pretrain.steps=0",
            "score.enabled=false", "finetune.epochs=1", "finetune.batch_size=8", "trainer.enable_progress_bar=false",
            "logger=[csv]"]
# four one-question paragraphs (one article: split by paragraph, 2/1/1); the rule tagger finds nothing in two
PARAGRAPHS = [("Marie Curie came from Warsaw.", "Where did Marie Curie come from?", "Warsaw"),
              ("rain fell on the quiet fields.", "where did rain fall?", "the quiet fields"),
              ("Alan Turing was born in 1912.", "When was Alan Turing born?", "1912"),
              ("bread is baked from flour.", "what is bread baked from?", "flour")]


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
    assert card["format_version"] == 2 and card["versions"]["torch"] and len(card["tensors"]["sha256"]) == 64
    assert card["policy"] == {"name": "learned", "params": {
        "rate": 0.3, "features": list(PORTABLE_FEATURES), "embedding_dim": 8, "hidden_size": 8, "sampling": "gumbel",
        "temperature": 0.3}}


def test_a_saved_ensemble_loads_with_its_members_and_identical_scores(tmp_path):
    policy = LearnedPolicy(rate=0.3, features=PORTABLE_FEATURES, hidden_size=8, embedding_dim=8, seed=7, members=3)
    loaded = load_policy(save_policy(policy, tmp_path / "policy", TRAINING))
    assert loaded.members == 3 and read_card(tmp_path / "policy")["policy"]["params"]["members"] == 3
    with torch.no_grad():
        assert torch.equal(policy.logits(batch()), loaded.logits(batch()))


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
    policy, _ = build_policy(cfg.policy)
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
    card["format_version"] = 3
    (path / CARD).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="card format version 3; this maskpolicy reads versions 1–2. Upgrade"):
        load_policy(path)


def test_a_card_that_does_not_fit_its_weights_is_refused(saved):
    _, path = saved
    card = json.loads((path / CARD).read_text())
    card["policy"]["params"]["hidden_size"] = 16
    (path / CARD).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="does not fit the card's policy parameters"):
        load_policy(path)


def test_an_unknown_policy_name_is_refused(saved):
    _, path = saved
    card = json.loads((path / CARD).read_text())
    card["policy"]["name"] = "pickled"
    (path / CARD).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="unknown policy 'pickled'; known here: entity, .*entry-point group"):
        load_policy(path)


def as_version_1(path: Path) -> Path:
    """Rewrites a learned artifact as version 1 wrote it: ``policy.class``, ``weights`` and unprefixed tensor names."""
    card = json.loads((path / CARD).read_text())
    tensors = {name.removeprefix("scorer."): t for name, t in load_file(path / WEIGHTS).items()}
    save_file(tensors, path / WEIGHTS)
    digest = hashlib.sha256((path / WEIGHTS).read_bytes()).hexdigest()
    (path / CARD).write_text(json.dumps({
        "format": "maskpolicy-policy", "format_version": 1,
        "policy": {"class": "learned", "params": card["policy"]["params"]}, "feature_sizes": card["feature_sizes"],
        "weights": {"file": WEIGHTS, "sha256": digest}, "training": card["training"], "versions": card["versions"],
        "created": card["created"]}))
    return path


def test_a_version_1_artifact_still_loads_with_identical_masks(saved):
    policy, path = saved
    loaded = load_policy(as_version_1(path))
    assert read_card(path)["format_version"] == 1 and loaded.source["training"] == TRAINING
    assert torch.equal(policy.select(batch(), torch.Generator().manual_seed(3)),
                       loaded.select(batch(), torch.Generator().manual_seed(3)))


def test_a_version_1_card_with_an_unknown_class_is_refused(saved):
    _, path = saved
    card = json.loads((as_version_1(path) / CARD).read_text())
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


def tiny_squad(folder: Path) -> Path:
    """A SQuAD-format file of :data:`PARAGRAPHS` in ``folder``."""
    paragraphs = [{"context": context, "qas": [{"id": str(k), "question": question,
                                                "answers": [{"text": answer, "answer_start": context.index(answer)}]}]}
                  for k, (context, question, answer) in enumerate(PARAGRAPHS)]
    path = folder / "tiny-squad.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "Tiny", "paragraphs": paragraphs}]}))
    return path


def gold_policy(folder: Path, features=PORTABLE_FEATURES, training=GOLD_TRAINING) -> Path:
    policy = LearnedPolicy(rate=0.3, features=features, hidden_size=8, embedding_dim=8, seed=7)
    return save_policy(policy, folder / "policy", training)


def pretrain_config(policy: Path, *overrides: str):
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        return compose("pretrain", overrides=["policy=artifact", f"policy.path={policy}", *TINY_RUN, *overrides])


def learn_config(*overrides: str):
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        return compose("learn", overrides=list(overrides))


def test_a_learned_card_records_its_features_entity_source_data_and_quality(tmp_path):
    results = learn_policy(learn_config(*SMALL_LEARN), tmp_path, "bioworld")
    training = read_card(tmp_path / "policy")["training"]
    assert list(training) == ["method", "task", "train_split", "evaluation", "seed", "feature_names", "tagger",
                              "train_documents", "train_questions", "quality", "supervised_loss"]
    assert training["method"] == "supervised" and training["train_split"] == "train" and training["seed"] == 0
    assert training["supervised_loss"] == "listwise"   # learning.supervised.loss=auto, word features alone
    assert training["feature_names"] == ["shape", "position", "entity", "subword", "repeats", "rarity"]
    assert training["tagger"] == {"kind": "gold"}
    # 20 train people (half of 40) with 6 facts each, every question about one biography per person
    assert (training["train_documents"], training["train_questions"]) == (20, 120)
    evaluation = results.evaluation
    assert training["quality"] == {"split": "dev", "precision": evaluation.learned.precision,
                                   "recall": evaluation.learned.recall,
                                   "entity_precision": evaluation.entity.precision,
                                   "random_precision": evaluation.random.precision}
    assert training["quality"]["precision"] > training["quality"]["entity_precision"] > \
        training["quality"]["random_precision"]


def test_learning_on_squad_warns_how_many_documents_the_tagger_found_no_entity_in(tmp_path, caplog):
    squad = tiny_squad(tmp_path)
    with caplog.at_level(logging.WARNING, logger="maskpolicy.meta.learning.train"):
        learn_policy(learn_config("task=squad", f"task.path={squad}", "learning.supervised.epochs=1"),
                     tmp_path / "run", "squad")
    assert [r.getMessage() for r in caplog.records if r.name == "maskpolicy.meta.learning.train"] == [
        "2 of the 4 documents of task 'squad' have no entity span after tagging: their 'entity' feature is 0 "
        "throughout"]
    card = read_card(tmp_path / "run" / "policy")["training"]
    assert card["tagger"] == RULE and (card["train_documents"], card["train_questions"]) == (2, 2)


def test_entity_source_describes_gold_spans_a_tagger_or_none(tmp_path):
    squad = str(tiny_squad(tmp_path))
    assert entity_source(BioWorld(n_people=20, biographies_per_person=1)) == {"kind": "gold"}
    assert entity_source(SquadTask(path=squad, tagger=RuleTagger())) == RULE
    assert entity_source(SquadTask(path=squad, tagger=RuleTagger(dates=False)))["config"] == {
        "names": True, "dates": False, "numbers": True}
    assert entity_source(SquadTask(path=squad)) == {"kind": "none"}
    assert entity_source(SquadTask(path=squad, answer_entities=True)) == {"kind": "gold"}


def test_a_gold_trained_policy_used_with_a_tagger_warns_and_the_results_record_it(tmp_path, caplog):
    policy = gold_policy(tmp_path)
    cfg = pretrain_config(policy, "task=squad", f"task.path={tiny_squad(tmp_path)}")
    with caplog.at_level(logging.WARNING, logger="maskpolicy.meta.learning.artifacts"):
        results = run_pretraining(cfg, tmp_path / "run", RunNames("artifact", "squad", "tiny_bert"))
    expected = (
        f"policy artifact {policy.resolve()} was trained on task 'bioworld' with gold entity spans but is used on "
        "task 'squad' with entity spans from the tagger RuleTagger(names=True, dates=True, numbers=True): its "
        "'entity' feature marks other spans here, so its masks may not match the quality on its card; retrain it "
        "with this entity source to be sure"
    )
    assert [r.getMessage() for r in caplog.records if r.name == "maskpolicy.meta.learning.artifacts"] == [expected]
    assert results.policy.source == {"path": str(policy.resolve()), "training": GOLD_TRAINING,
                                     "created": read_card(policy)["created"], "warnings": [expected]}
    assert results.policy.label == f"artifact[supervised:{tmp_path.name}]"
    save(tmp_path / "run", results)
    assert load(tmp_path / "run", PretrainResults).policy == results.policy


def test_another_tagger_setting_warns_and_the_same_one_does_not(tmp_path, caplog):
    policy = load_policy(gold_policy(tmp_path, training={**TRAINING, "tagger": RULE}))
    squad = str(tiny_squad(tmp_path))
    same, other = SquadTask(path=squad, tagger=RuleTagger()), SquadTask(path=squad, tagger=RuleTagger(numbers=False))
    with caplog.at_level(logging.WARNING, logger="maskpolicy.meta.learning.artifacts"):
        assert check_use(policy, same, same.corpus()) == []
        assert not caplog.records
        (warning,) = check_use(policy, other, other.corpus())
    assert "with entity spans from the tagger RuleTagger(names=True, dates=True, numbers=True) but is used on " \
           "task 'squad' with entity spans from the tagger RuleTagger(names=True, dates=True, numbers=False)" in warning
    assert [r.getMessage() for r in caplog.records] == [warning]


def test_an_entity_reading_policy_on_a_task_without_entity_spans_is_refused_before_training(tmp_path):
    policy = gold_policy(tmp_path)
    cfg = pretrain_config(policy, "task=squad", f"task.path={tiny_squad(tmp_path)}", "task.tagger=null")
    with pytest.raises(ArtifactError, match=(
            r"reads the 'entity' feature, but task 'squad' gives no entity spans \(no gold spans on its documents "
            r"and no tagger\): configure a tagger \(e.g. tagger@task.tagger=rule\) or retrain the policy without "
            r"the 'entity' feature \(policy.features\)")):
        run_pretraining(cfg, tmp_path / "run", RunNames("artifact", "squad", "tiny_bert"))
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_a_policy_without_the_entity_feature_needs_no_entity_spans(tmp_path, caplog):
    features = ("shape", "position", "subword")
    policy = load_policy(gold_policy(tmp_path, features=features))
    task = SquadTask(path=str(tiny_squad(tmp_path)))
    with caplog.at_level(logging.WARNING):
        assert check_use(policy, task, task.corpus()) == []
    assert not caplog.records


def test_a_card_from_an_older_version_loads_and_warns_nothing(saved, tmp_path, caplog):
    _, path = saved  # its training block has no tagger, features or quality
    policy = load_policy(path)
    assert policy.source["training"] == TRAINING
    squad = SquadTask(path=str(tiny_squad(tmp_path)), tagger=RuleTagger())
    world = BioWorld(n_people=20, biographies_per_person=1)
    with caplog.at_level(logging.WARNING):
        assert check_use(policy, squad, squad.corpus()) == []
        assert check_use(policy, world, world.corpus()) == []
    assert not caplog.records
