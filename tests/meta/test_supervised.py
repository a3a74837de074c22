"""Direct supervision: a policy learns to mask the answers the downstream task asks about."""

from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_module

from maskpolicy.meta.config import ConfigError
from maskpolicy.meta.learning.artifacts import load_policy
from maskpolicy.meta.learning.evaluation import compare_with_heuristics
from maskpolicy.meta.learning.supervised import (
    ALL,
    answer_spans,
    encode_answers,
    feature_spec,
    resolve_loss,
    supervised_loss,
    train_supervised,
)
from maskpolicy.meta.learning.train import learn_policy
from maskpolicy.meta.results.schema import LearnResults, load, save
from maskpolicy.policies import PORTABLE_FEATURES, LearnedPolicy, PolicyError
from maskpolicy.tasks.base import TaskError
from maskpolicy.tasks.data.bioworld import BioWorld
from maskpolicy.tasks.training.models import ModelSpec

SMALL = ["task.n_people=40", "task.biographies_per_person=2", "learning.supervised.epochs=3"]


@pytest.fixture(scope="module")
def world() -> BioWorld:
    return BioWorld(n_people=60, biographies_per_person=2)


@pytest.fixture(scope="module")
def tokenizer(world):
    return ModelSpec().build_tokenizer(d.text for d in world.corpus())


def test_answer_spans_cover_exactly_the_answers(world):
    spans = answer_spans(world, "dev")
    questions = world.qa("dev")
    assert len(spans) == len({q.context for q in questions}) == 15
    for context, found in spans.items():
        answers = sorted(q.answer for q in questions if q.context == context)
        assert sorted(context[start:end] for start, end in found) == answers


def test_answer_labels_mark_the_answer_tokens(world, tokenizer):
    data = encode_answers(world, "dev", tokenizer, 128, feature_spec(world, PORTABLE_FEATURES))
    first = world.qa("dev")[0].context
    row, labels = data.rows[0], data.answers[0]
    answers = {q.answer for q in world.qa("dev") if q.context == first}
    marked = tokenizer.decode(row["input_ids"][labels]).split()
    assert set(marked) == answers and row["features"].shape == (len(labels), len(PORTABLE_FEATURES))


def test_supervision_beats_entity_and_random_masking_on_held_out_answers(world, tokenizer):
    spec = feature_spec(world, PORTABLE_FEATURES)
    train = encode_answers(world, "train", tokenizer, 128, spec)
    dev = encode_answers(world, "dev", tokenizer, 128, spec)
    policy = LearnedPolicy(features=PORTABLE_FEATURES, seed=0)
    losses = train_supervised(policy, train, tokenizer.pad_token_id, epochs=30, loss="bce", seed=0)
    assert losses[-1] < 0.25 * losses[0]
    scores = compare_with_heuristics(policy, dev, tokenizer.pad_token_id)
    assert scores.split == "dev"
    assert scores.learned_topk.recall > 0.9 and scores.learned_topk.precision > 0.8
    assert scores.learned.recall > scores.entity.recall > scores.random.recall
    assert scores.learned.masked_tokens == scores.random.masked_tokens  # the same budget


def test_each_ensemble_member_trains_as_it_would_alone(world, tokenizer):
    train = encode_answers(world, "train", tokenizer, 128, feature_spec(world, PORTABLE_FEATURES))
    alone = LearnedPolicy(features=PORTABLE_FEATURES, seed=0)
    ensemble = LearnedPolicy(features=PORTABLE_FEATURES, seed=0, members=2)
    alone_losses = train_supervised(alone, train, tokenizer.pad_token_id, epochs=2, seed=0)
    ensemble_losses = train_supervised(ensemble, train, tokenizer.pad_token_id, epochs=2, seed=0)
    first = ensemble.scorer.members[0].state_dict()   # its own loss, the same batches, no dropout without states
    for key, value in alone.scorer.state_dict().items():
        torch.testing.assert_close(first[key], value, rtol=1e-5, atol=1e-6)
    assert ensemble_losses[0] != pytest.approx(alone_losses[0])   # the mean over members, the second one differs


def test_the_listwise_loss_is_the_mean_over_answered_rows_of_the_answers_softmax_cross_entropy():
    logits = torch.tensor([[0.0, math.log(3), 0.0, 5.0], [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    labels = torch.tensor([[False, True, False, False], [False, False, False, False], [True, True, False, False]])
    maskable = torch.tensor([[True, True, True, False], [True] * 4, [True] * 4])
    # row 0: softmax over its 3 maskable tokens puts 3/5 on the answer; row 1 has no answer; row 2: 1/4 each
    expected = (-math.log(3 / 5) - math.log(1 / 4)) / 2
    assert supervised_loss(logits, labels, maskable, "listwise").item() == pytest.approx(expected, abs=1e-6)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[maskable], labels[maskable].float())
    assert supervised_loss(logits, labels, maskable, "bce").item() == pytest.approx(bce.item())
    assert supervised_loss(logits, labels & False, maskable, "listwise").item() == 0.0


def test_an_unknown_supervised_loss_is_refused(world, tokenizer):
    data = encode_answers(world, "dev", tokenizer, 128, feature_spec(world, PORTABLE_FEATURES))
    with pytest.raises(ValueError, match="learning.supervised.loss must be one of auto, bce, listwise, got 'hinge'"):
        train_supervised(LearnedPolicy(features=PORTABLE_FEATURES), data, tokenizer.pad_token_id, loss="hinge")


def test_the_auto_loss_is_listwise_for_word_features_and_bce_with_states():
    states = {"encoder": "minilm", "layers": [-1, -3], "unit": "word", "dim": 768}
    assert resolve_loss("auto", LearnedPolicy()) == "listwise"
    assert resolve_loss("auto", LearnedPolicy(context=states)) == "bce"
    assert resolve_loss("listwise", LearnedPolicy(context=states)) == "listwise"   # a named loss is kept


def test_split_all_takes_every_splits_questions(world):
    assert len(answer_spans(world, ALL)) == sum(len(answer_spans(world, s)) for s in ("train", "dev", "test"))


def test_a_task_without_answer_offsets_cannot_supervise(tiny_task):
    with pytest.raises(TaskError, match="no answer offsets .* direct supervision needs them"):
        answer_spans(tiny_task, "train")


def config(*overrides: str):
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        return compose("learn", overrides=list(overrides))


def test_the_job_returns_results_and_saves_a_loadable_policy(tmp_path):
    results = learn_policy(config(*SMALL), tmp_path, "bioworld")
    assert results.method == "supervised" and results.evaluation.split == "dev"
    assert results.evaluation.learned.answer_tokens == results.evaluation.random.answer_tokens > 0
    assert len(results.history["loss"]) == 3
    policy = load_policy(tmp_path / "policy")
    assert policy.source["training"]["method"] == "supervised"
    assert policy.source["training"]["supervised_loss"] == "listwise"   # learning.supervised.loss=auto, no states
    assert policy.source["training"]["task"]["params"]["n_people"] == 40
    assert results.policy.artifact == "policy" and not (tmp_path / "results.json").exists()  # the caller writes it
    save(tmp_path, results)
    assert load(tmp_path, LearnResults) == results


def test_bad_method_or_policy_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="learning.method must be one of supervised, meta_learning"):
        learn_policy(config(*SMALL, "learning.method=reinforce"), tmp_path, "bioworld")
    with pytest.raises(PolicyError, match="trains a LearnedPolicy"):
        learn_policy(config(*SMALL, "policy=random"), tmp_path, "bioworld")
    assert not (tmp_path / "policy").exists()
