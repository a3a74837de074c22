"""Every YAML under conf/ composes and instantiates."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from maskpolicy.meta.artifacts import save_policy
from maskpolicy.meta.pretrain import build
from maskpolicy.policies import LearnedPolicy, MaskingPolicy
from maskpolicy.tasks.base import Task, TaskError, TractableTask
from maskpolicy.tasks.models import ModelSpec

CONF = Path(__file__).resolve().parents[2] / "conf"
SQUAD_SAMPLE = Path(__file__).resolve().parents[3] / "shared/data/squad-sample/dev-sample.json"
EXTRA = {"model/hf_masked_lm": ["model.pretrained=bert-base-uncased"],
         "model/hf_seq2seq": ["model.pretrained=facebook/bart-base"],
         "task/squad": [f"task.path={SQUAD_SAMPLE}"]}
GROUP_YAMLS = sorted(str(p.relative_to(CONF).with_suffix("")) for p in CONF.glob("*/*.yaml"))


def compose_with(option: str, *overrides: str):
    group, name = option.split("/")
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        if group == "tagger":
            return compose("pretrain", overrides=[f"+tagger={name}"]).tagger
        if group == "learning":
            return compose("meta", overrides=[f"learning@meta={name}", *overrides]).meta
        return compose("pretrain", overrides=[f"{group}={name}", *EXTRA.get(option, []), *overrides])[group]


def test_every_group_option_is_covered():
    assert {"policy", "task", "model", "trainer", "tagger"} <= {o.split("/")[0] for o in GROUP_YAMLS}
    assert len(GROUP_YAMLS) >= 15


@pytest.mark.parametrize("option", GROUP_YAMLS)
def test_group_option_instantiates(option, tmp_path):
    if option == "task/squad" and not SQUAD_SAMPLE.exists():
        pytest.skip("shared SQuAD sample not present")
    overrides = []
    if option == "policy/artifact":  # a saved policy to point at
        save_policy(LearnedPolicy(), tmp_path / "policy", {"method": "none"})
        overrides.append(f"policy.path={tmp_path / 'policy'}")
    node = compose_with(option, *overrides)
    if option.startswith("learning/"):  # plain options read by maskpolicy-meta, nothing to instantiate
        assert node.method in ("supervised", "meta") and node.meta.engine in ("higher", "torch_func")
        return
    if option == "tagger/spacy":
        try:
            import spacy  # noqa: F401
        except ImportError:
            with pytest.raises(TaskError, match="pip install"):
                build(node, "tagger")
            return
    built = build(node, option)
    expected = {"policy": MaskingPolicy, "task": Task, "model": ModelSpec}.get(option.split("/")[0])
    if option in ("task/ppca", "task/hmm"):
        assert isinstance(built, TractableTask)
    elif expected is not None:
        assert isinstance(built, expected)
    elif option.startswith("trainer/"):
        assert callable(built)
    else:
        assert callable(built) and isinstance(built("Ada Lovelace visited Paris in 1843."), list)


def test_primary_config_composes_with_the_documented_defaults():
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose("pretrain")
    assert cfg.policy._target_.endswith("RandomPolicy") and cfg.task._target_.endswith("BioWorld")
    assert cfg.model.kind == "masked_lm" and cfg.pretrain.steps == 1500
