"""Meta-learning a policy: weighted inner steps, QA feedback, both engines, the command end to end."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module

from maskpolicy.meta.artifacts import load_policy
from maskpolicy.meta.learn import run_meta
from maskpolicy.meta.metalearn import candidate_weights
from maskpolicy.policies import FEATURES, LearnedPolicy, TokenBatch

SMALL = ["meta.method=meta", "task.n_people=40", "task.biographies_per_person=2", "meta.meta.steps=3",
         "meta.meta.batch_size=4", "model.config.hidden_size=32", "model.config.intermediate_size=64"]


def config(*overrides: str):
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        return compose("meta", overrides=list(overrides))


def test_candidate_weights_average_one_per_row_and_follow_the_scores():
    generator = torch.Generator().manual_seed(0)
    features = torch.randint(1, 3, (2, 6, len(FEATURES)), generator=generator)
    batch = TokenBatch(torch.zeros(2, 6, dtype=torch.long), torch.ones(2, 6, dtype=torch.bool), features=features,
                       feature_names=FEATURES)
    candidates = torch.tensor([[1, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    policy = LearnedPolicy(seed=1)
    weights = candidate_weights(policy, batch, candidates)
    assert weights[0].sum().item() == pytest.approx(3.0) and (weights[0][~candidates[0]] == 0).all()
    assert (weights[1] == 0).all()  # a row without candidates contributes nothing
    logits = policy.logits(batch)[0][candidates[0]]
    assert torch.equal(weights[0][candidates[0]].argsort(), logits.argsort())
    weights[0].sum().backward()
    assert all(p.grad is not None for p in policy.scorer.parameters())


@pytest.mark.parametrize("engine", ["higher", "torch_func"])
def test_the_command_meta_learns_and_saves_a_policy(tmp_path, engine):
    results = run_meta(config(*SMALL, f"meta.meta.engine={engine}"), tmp_path, "bioworld")
    history = results["history"]
    assert results["method"] == "meta" and len(history["outer_loss"]) == 3 == len(history["inner_loss"])
    assert all(loss > 0 for loss in history["outer_loss"])
    assert (tmp_path / "policy/policy.safetensors").exists()


def test_the_engines_take_the_same_first_step(tmp_path):
    # dropout makes training steps differ between engines; with it off, one step must agree
    off = ["+model.config.hidden_dropout_prob=0.0", "+model.config.attention_probs_dropout_prob=0.0",
           "meta.meta.steps=1"]
    first = run_meta(config(*SMALL, *off, "meta.meta.engine=higher"), tmp_path / "a", "bioworld")
    second = run_meta(config(*SMALL, *off, "meta.meta.engine=torch_func"), tmp_path / "b", "bioworld")
    assert first["history"]["outer_loss"][0] == pytest.approx(second["history"]["outer_loss"][0], rel=1e-6)
    left, right = load_policy(tmp_path / "a/policy").scorer, load_policy(tmp_path / "b/policy").scorer
    for x, y in zip(left.parameters(), right.parameters(), strict=True):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-6)
