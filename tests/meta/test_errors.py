"""Bad input stops a run early with a message naming the problem and the fix."""

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.errors import MissingConfigException

import maskpolicy.meta.pipeline as pipeline
from maskpolicy.meta.config import build_policy
from maskpolicy.policies import BudgetError, EntityPolicy, PolicyError, TokenBatch, build
from maskpolicy.tasks.base import TaskError


@pytest.mark.parametrize("group", ["policy", "task", "model", "trainer"])
def test_unknown_names_list_the_available_ones(group):
    with (
        initialize_config_module("maskpolicy.conf", version_base="1.3"),
        pytest.raises(MissingConfigException) as error,
    ):
        compose("pretrain", overrides=[f"{group}=no_such_thing"])
    assert f"Available options in '{group}'" in str(error.value)


def test_unknown_policy_in_the_registry_lists_names():
    with pytest.raises(PolicyError, match="available: .*entity.*random"):
        build("no_such_policy")


@pytest.mark.parametrize("rate", [0, -0.1, 1.5])
def test_rate_outside_the_unit_interval_is_refused_at_build_time(rate):
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose("pretrain", overrides=["policy=span", f"policy.rate={rate}"])
    with pytest.raises(PolicyError, match=r"policy: masking rate must be in \(0, 1\]"):
        build_policy(cfg.policy)


def test_an_unreachable_entity_budget_says_how_to_fix_it():
    batch = TokenBatch(torch.arange(12).view(1, 12), torch.ones(1, 12, dtype=torch.bool),
                       entity_ids=torch.full((1, 12), -1))
    with pytest.raises(BudgetError, match="shortfall=top_up"):
        EntityPolicy(rate=0.15).select(batch, torch.Generator().manual_seed(0))


def test_an_empty_task_corpus_is_refused_before_training(tiny_task, monkeypatch):
    class EmptyTask:
        name = "empty"

        def corpus(self):
            return []

        def qa(self, split):
            return tiny_task.qa(split)

    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose("pretrain")
    original = pipeline.build
    fake_build = lambda node, what: EmptyTask() if what == "task" else original(node, what)  # noqa: E731
    monkeypatch.setattr(pipeline, "build", fake_build)
    with pytest.raises(TaskError, match="empty pre-training corpus"):
        pipeline.setup(cfg)
