"""Every YAML under conf/ composes and builds something that works; old command-line spellings still do."""

import dataclasses
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_module

from maskpolicy.meta.config import ConfigError, build, build_policy, modern_key, modern_overrides
from maskpolicy.meta.learning.artifacts import save_policy
from maskpolicy.meta.results.trackers import tracker_missing
from maskpolicy.policies import FEATURES, FitsCorpus, LearnedPolicy, PolicyError, TokenBatch
from maskpolicy.tasks.assets import installed, skip_reason
from maskpolicy.tasks.base import Task, TaskError, TractableTask
from maskpolicy.tasks.data.tagging import spacy_unavailable
from maskpolicy.tasks.training.downstream import METRICS, DownstreamTask

CONF = Path(__file__).resolve().parents[2] / "conf"
SQUAD_SAMPLE = Path(__file__).resolve().parents[3] / "shared/data/squad-sample/dev-sample.json"
EXTRA = {"model/hf_masked_lm": ["model.pretrained=bert-base-uncased"],
         "model/hf_seq2seq": ["model.pretrained=facebook/bart-base"],
         "task/squad": [f"task.path={SQUAD_SAMPLE}"]}
OPTIONS = sorted(str(p.relative_to(CONF).with_suffix("")) for p in CONF.rglob("*.yaml") if p.parent != CONF)
# groups whose every option is exercised by another test module
ELSEWHERE = {"score/estimator": "tests/meta/test_score.py", "search/sampler": "tests/meta/test_search_parts.py",
             "search/pruner": "tests/meta/test_search_parts.py", "search/space": "tests/meta/test_search_space.py",
             "policy/schedule": "tests/test_config_signatures.py"}
CHECKED_HERE = {"policy", "task", "model", "trainer", "tagger", "learning", "logger", "search/profile", "downstream"}


def group_of(option: str) -> str:
    return option.rsplit("/", 1)[0]


def compose_with(option: str, *overrides: str):
    group, name = group_of(option), option.rsplit("/", 1)[1]
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        if group == "tagger":
            return compose("pretrain", overrides=[f"+tagger={name}"]).tagger
        if group == "learning":
            return compose("learn", overrides=[f"learning={name}", *overrides]).learning
        if group == "search/profile":
            return compose("search", overrides=[f"search/profile={name}", *overrides])
        if group == "logger":
            return compose("pretrain", overrides=[f"logger=[{name}]"]).logger[name]
        return compose("pretrain", overrides=[f"{group}={name}", *EXTRA.get(option, []), *overrides])[group]


def test_every_config_group_is_checked_somewhere():
    assert {group_of(option) for option in OPTIONS} == CHECKED_HERE | set(ELSEWHERE)


def tiny_batch() -> TokenBatch:
    ids = torch.arange(24).view(2, 12)
    maskable = torch.ones(2, 12, dtype=torch.bool)
    maskable[:, 0] = maskable[:, -1] = False
    words = torch.arange(12).repeat(2, 1)
    entities = torch.tensor([[-1, 0, 0, -1, 1, -1, 2, 2, -1, 3, -1, -1]] * 2)
    features = torch.randint(1, 3, (2, 12, len(FEATURES)), generator=torch.Generator().manual_seed(0))
    return TokenBatch(ids, maskable, words, entities, features, FEATURES)


@pytest.mark.parametrize("option", [o for o in OPTIONS if group_of(o) in CHECKED_HERE])
def test_group_option_builds_something_that_works(option, tmp_path, request):
    group = group_of(option)
    if option == "task/squad" and not SQUAD_SAMPLE.exists():
        pytest.skip("shared SQuAD sample not present")
    if option == "model/minilm" and not installed("minilm"):
        pytest.skip(skip_reason("minilm"))
    overrides = []
    if option == "policy/artifact":  # a saved policy to point at
        save_policy(LearnedPolicy(), tmp_path / "policy", {"method": "none"})
        overrides.append(f"policy.path={tmp_path / 'policy'}")
    node = compose_with(option, *overrides)
    if group == "learning":  # plain options read by maskpolicy-learn
        assert node.method in ("supervised", "meta_learning") and node.meta_learning.engine in ("higher", "torch_func")
    elif group == "search/profile":
        assert node.search.n_trials >= 1 and node.search.final.n_seeds >= 1 and node.search.final.seeds is None
    elif group == "policy":
        policy, schedule = build_policy(node, option)
        assert schedule is None  # every shipped policy masks at a constant rate unless told otherwise
        check_policy(policy)
    elif group == "task":
        check_task(build(node, option), option)
    elif group == "model":
        assert build(node, option).kind == ("seq2seq" if "bart" in option or "seq2seq" in option else "masked_lm")
    elif group == "trainer":
        check_trainer(build(node, option), option, tmp_path)
    elif group == "logger":
        check_logger(node, option, tmp_path, request)
    elif group == "downstream":
        downstream = build(node, option)
        assert isinstance(downstream, DownstreamTask) and downstream.name == option.rsplit("/", 1)[1]
        assert downstream.metric in METRICS
    else:
        check_tagger(node, option)


def check_policy(policy) -> None:
    batch = tiny_batch()
    if isinstance(policy, FitsCorpus):  # its corpus: the batch seen often enough for every n-gram to count
        policy.fit(TokenBatch(batch.input_ids.repeat(5, 1), batch.maskable.repeat(5, 1), batch.word_ids.repeat(5, 1)))
    context = getattr(policy, "context", None)
    if context is not None:  # a policy that reads an encoder's states: what encoding would give it, in shape
        batch = dataclasses.replace(batch, states=torch.randn(*batch.input_ids.shape, context.dim))
    mask = policy.select(batch, torch.Generator().manual_seed(0))
    assert mask.shape == batch.input_ids.shape and mask.dtype == torch.bool
    assert mask.any() and not (mask & ~batch.maskable).any()


def check_task(task, option: str) -> None:
    if option in ("task/ppca", "task/hmm"):
        assert isinstance(task, TractableTask)
        data = task.data()
        assert torch.isfinite(task.log_likelihood(data)).all() and len(data) == task.n_sequences
        return
    assert isinstance(task, Task) and len(task.corpus()) > 0
    assert all(len(task.qa(split)) > 0 for split in ("train", "dev", "test"))


def check_trainer(factory, option: str, tmp_path: Path) -> None:
    if option == "trainer/ddp":  # data-parallel on CPU processes (gloo) where there is no GPU
        trainer = factory(default_root_dir=tmp_path, max_steps=1, logger=False, devices=2)
        assert isinstance(trainer.strategy, pl.strategies.DDPStrategy) and trainer.num_devices == 2
        if not torch.cuda.is_available():
            assert isinstance(trainer.accelerator, pl.accelerators.CPUAccelerator)
            assert trainer.strategy._get_process_group_backend() == "gloo"
        return
    if option != "trainer/cpu":  # GPU strategies cannot start on a CPU-only machine; check what they would ask for
        assert factory.func is pl.Trainer and factory.keywords["accelerator"] == "gpu"
        return
    trainer = factory(default_root_dir=tmp_path, max_steps=1, logger=False)
    assert isinstance(trainer.accelerator, pl.accelerators.CPUAccelerator) and trainer.max_steps == 1


def check_logger(node, option: str, tmp_path: Path, request) -> None:
    """Built as make_trainer builds it; a metric logged lands in a file under the run directory."""
    tracker = option.rsplit("/", 1)[1]
    if tracker in ("mlflow", "wandb"):  # optional trackers: their own tests are tests/meta/test_trackers.py
        if tracker_missing(tracker):
            pytest.skip(tracker_missing(tracker))
        request.getfixturevalue("tracker_home")  # W&B offline; nothing written outside tmp_path
    logger = build(node, option, save_dir=str(tmp_path / "run"), name="stage", version="")
    logger.log_metrics({"dev/em": 0.5}, step=0)
    logger.finalize("success")
    # Lightning's own loggers write a folder per stage; the trackers' stores hold every stage (mlruns/, wandb/)
    written = tmp_path / "run" / ("stage" if tracker in ("csv", "tensorboard") else "")
    assert any(path.is_file() for path in written.rglob("*"))


def check_tagger(node, option: str) -> None:
    if option == "tagger/spacy" and spacy_unavailable():  # its errors: tests/tasks/test_tagging.py
        pytest.skip(spacy_unavailable())
    text = "Ada Lovelace visited Paris in 1843."
    spans = build(node, "tagger")(text)
    assert {text[start:end] for start, end in spans} >= {"Ada Lovelace", "Paris", "1843"}


def test_primary_configs_compose_with_the_documented_defaults():
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        pretrain, search = compose("pretrain"), compose("search")
    assert pretrain.policy._target_.endswith("RandomPolicy") and pretrain.task._target_.endswith("BioWorld")
    assert pretrain.model.kind == "masked_lm" and pretrain.pretrain.steps == 1500
    assert pretrain.score.estimator._target_.endswith("Stratified") and set(pretrain.logger) == {"csv", "tensorboard"}
    assert search.search.sampler._target_ == "optuna.samplers.TPESampler"
    assert search.search.pruner._target_ == "optuna.pruners.MedianPruner" and search.task.n_people == 100


@pytest.mark.parametrize(("old", "new"), [
    ("meta.method=meta", "learning.method=meta"),
    ("meta.meta.steps=5", "learning.meta_learning.steps=5"),
    ("+meta.supervised.epochs=3", "+learning.supervised.epochs=3"),
    ("metadata=1", "metadata=1"),
    ("hydra.run.dir=outputs/meta.x", "hydra.run.dir=outputs/meta.x"),
    ("--multirun", "--multirun"),
    ("score.estimator=exhaustive", "score/estimator=exhaustive"),
    ("score.estimator.passes=8", "score.estimator.passes=8"),
    ("search.sampler=random", "search/sampler=random"),
    ("search.pruner_options.n_warmup_steps=2", "search.pruner.n_warmup_steps=2"),
])
def test_old_spellings_of_the_learning_options_still_work(old, new):
    assert modern_overrides([old]) == [new]


def test_modern_key_renames_search_space_keys_too():
    assert modern_key("meta.meta.inner_steps") == "learning.meta_learning.inner_steps"
    assert modern_key("pretrain.steps") == "pretrain.steps"


def test_build_policy_takes_the_schedule_out_of_the_policy_config():
    node = compose_with("policy/span", "policy.schedule.kind=cosine", "policy.schedule.start=0.4")
    policy, schedule = build_policy(node)
    assert policy.rate == 0.15 and (schedule.kind, schedule.start, schedule.end) == ("cosine", 0.4, None)
    assert schedule.rate_at(99, 100, policy.rate) == pytest.approx(0.15)


@pytest.mark.parametrize(("overrides", "message"), [
    (["policy.components.entity.schedule.kind=linear"], r"components.entity.schedule: only the whole policy"),
    (["policy.schedule.kind=linear"], r"MixturePolicy has no single rate.*set policy.schedule.start"),
    (["policy.schedule.kind=linear", "policy.schedule.start=0.3", "policy.schedule.end=2"], r"end is a masking rate"),
    (["+policy.schedule.speed=2"], r"policy.schedule: .*speed.*its keys are kind, start, end, at, steps"),
])
def test_bad_schedules_fail_with_the_fix(overrides, message):
    with pytest.raises((ConfigError, PolicyError), match=message):
        build_policy(compose_with("policy/mixture", *overrides))


def test_the_minilm_config_without_its_asset_names_make_real(monkeypatch):
    import importlib.metadata

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    node = compose_with("model/minilm")
    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(TaskError, match=r"model/minilm: asset 'minilm' .* not installed.*`make real`.*--no-deps"):
        build(node, "model/minilm")
