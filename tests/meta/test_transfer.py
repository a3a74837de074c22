"""Transfer: a policy learned on one task drives intermediate pre-training on another."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from test_cli import TINY, TINY_BERT, run_command  # tests/meta is on sys.path (pytest's prepend mode)

from maskpolicy.meta.pipeline import RunNames, run_pretraining
from maskpolicy.meta.results.schema import LearnResults, PretrainResults, load

pytestmark = pytest.mark.slow

SQUAD_SAMPLE = Path(__file__).resolve().parents[3] / "shared/data/squad-sample/dev-sample.json"
LEARN = ["task.n_people=40", "task.biographies_per_person=2", "learning.supervised.epochs=3",
         "policy.features=[shape,position,entity,frequency,subword]"]


@pytest.fixture(scope="module")
def learned(tmp_path_factory) -> Path:
    """A policy supervised on bioworld (world seed 0), saved by the real command."""
    root = tmp_path_factory.mktemp("learned")
    run_command(*LEARN, f"hydra.run.dir={root}", cwd=root, module="maskpolicy.meta.commands.learn")
    assert load(root, LearnResults).method == "supervised"
    return root / "policy"


def pretrain_with(policy: Path, tmp_path: Path, task: str, *overrides: str, settings: list[str] = TINY
                  ) -> PretrainResults:
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose("pretrain", overrides=["policy=artifact", f"policy.path={policy}", *settings, *TINY_BERT,
                                             *overrides])
    return run_pretraining(cfg, tmp_path / "run", RunNames("artifact", task, "tiny_bert"), test=True)


def test_a_policy_learned_on_one_world_pre_trains_another(learned, tmp_path):
    results = pretrain_with(learned, tmp_path, "bioworld", "task.seed=1",
                            "task.attributes=[birth_city,university,employer]")
    source = results.policy.source
    assert source["path"] == str(learned.resolve())
    assert source["training"]["method"] == "supervised"
    assert source["training"]["task"]["name"] == "bioworld"
    assert source["training"]["task"]["params"]["seed"] == 0 and results.task.params["seed"] == 1
    assert results.pretrain.masked_tokens > 0 and results.mll.nats_per_token < 0


@pytest.mark.skipif(not SQUAD_SAMPLE.exists(), reason="the SQuAD sample in ../shared/data is not present")
def test_a_policy_learned_on_bioworld_pre_trains_on_squad(learned, tmp_path):
    settings = [override for override in TINY if not override.startswith("task.")]
    results = pretrain_with(learned, tmp_path, "squad", "task=squad", f"task.path={SQUAD_SAMPLE}", settings=settings)
    assert results.task.name == "squad" and results.policy.source["training"]["task"]["name"] == "bioworld"
    assert results.pretrain.masked_tokens > 0
