"""The search space: parsing, validation before any training, conditional suggestions, grids."""

from __future__ import annotations

from pathlib import Path

import hydra.utils
import optuna
import pytest
import torch
import yaml
from omegaconf import OmegaConf

import maskpolicy.conf
from maskpolicy.meta.config import build_policy
from maskpolicy.meta.search.space import SearchSpace, SearchSpaceError, grid
from maskpolicy.policies import (
    EntityPolicy,
    LearnedPolicy,
    MaskingPolicy,
    MixturePolicy,
    RandomPolicy,
    SpanPolicy,
    TokenBatch,
    available,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = yaml.safe_load("""
families:
  random: {rate: {type: float, low: 0.05, high: 0.5}}
  span:
    rate: {type: float, low: 0.05, high: 0.5}
    p: {type: float, low: 0.1, high: 0.5, log: true}
    max_length: 10
  whole_word: {rate: {type: categorical, choices: [0.15, 0.3]}}
  entity:
    rate: {type: float, low: 0.05, high: 0.5}
    shortfall: top_up
  mixture:
    components.entity._target_: maskpolicy.policies.EntityPolicy
    components.entity.shortfall: top_up
    components.random._target_: maskpolicy.policies.RandomPolicy
    weights.entity: {type: float, low: 0.0, high: 1.0}
    weights.random: {type: float, low: 0.0, high: 1.0}
    rate: {type: float, low: 0.05, high: 0.5, to: [components.entity.rate, components.random.rate]}
  learned:
    rate: {type: float, low: 0.1, high: 0.4}
    hidden_size: {type: int, low: 8, high: 32, step: 8}
    learning.method: {type: categorical, choices: [supervised, meta_learning]}
  span_words:
    _target_: maskpolicy.policies.SpanPolicy
    unit: word
budget:
  pretrain.steps: {type: int, low: 500, high: 1500, step: 500}
""")
SEARCHED = {
    "random": {"random.rate"},
    "span": {"span.rate", "span.p"},
    "whole_word": {"whole_word.rate"},
    "entity": {"entity.rate"},
    "mixture": {"mixture.rate", "mixture.weights.entity", "mixture.weights.random"},
    "learned": {"learned.rate", "learned.hidden_size", "learned.learning.method"},
    "span_words": set(),
}
MIXTURE = SPACE["families"]["mixture"]


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.from_config(SPACE)


def with_family(family: str, **params) -> dict:
    """A copy of SPACE with one family replaced."""
    return {"families": {family: params}}


def tiny_batch() -> TokenBatch:
    ids = torch.arange(2 * 12).view(2, 12)
    words = torch.arange(12).div(2, rounding_mode="floor").expand(2, 12)
    entities = torch.tensor([-1, 0, 0, -1, 1, 1, -1, -1, 2, -1, -1, -1]).expand(2, 12)
    return TokenBatch(ids, torch.ones(2, 12, dtype=torch.bool), word_ids=words, entity_ids=entities)


def test_a_fixed_trial_draws_only_the_chosen_family(space):
    trial = optuna.trial.FixedTrial({"family": "span", "span.rate": 0.2, "span.p": 0.3, "pretrain.steps": 1000})
    suggestion = space.suggest(trial)
    assert suggestion.family == "span"
    assert suggestion.policy == {"_target_": "maskpolicy.policies.span.SpanPolicy", "rate": 0.2, "p": 0.3,
                                 "max_length": 10}
    assert suggestion.overrides == {"pretrain.steps": 1000}
    policy = hydra.utils.instantiate(suggestion.policy)
    assert isinstance(policy, SpanPolicy) and (policy.rate, policy.p, policy.max_length) == (0.2, 0.3, 10)


def test_study_trials_hold_the_drawn_family_params_within_their_ranges(space):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(40):
        trial = study.ask()
        suggestion = space.suggest(trial)
        study.tell(trial, 0.0)
        assert set(trial.params) == {"family", "pretrain.steps"} | SEARCHED[suggestion.family]
        assert suggestion.overrides["pretrain.steps"] in (500, 1000, 1500)
    for frozen in study.trials:
        for name, value in frozen.params.items():
            assert frozen.distributions[name]._contains(frozen.distributions[name].to_internal_repr(value))
        if "span.p" in frozen.params:
            assert 0.1 <= frozen.params["span.p"] <= 0.5
    assert {trial.params["family"] for trial in study.trials} == set(SEARCHED)


@pytest.mark.parametrize("family", sorted(SEARCHED))
def test_every_family_suggests_a_buildable_policy(space, family):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    study.enqueue_trial({"family": family})
    suggestion = space.suggest(study.ask())
    assert suggestion.family == family
    policy = hydra.utils.instantiate(suggestion.policy)
    assert isinstance(policy, MaskingPolicy)
    if family != "learned":  # the learned policy reads word features this hand-made batch lacks
        mask = policy.select(tiny_batch(), torch.Generator().manual_seed(0))
        assert mask.shape == (2, 12) and mask.dtype == torch.bool and mask.any()


def test_mixture_suggestion_is_a_mixture_policy_config(space):
    params = {"family": "mixture", "mixture.rate": 0.25, "mixture.weights.entity": 0.3,
              "mixture.weights.random": 0.9, "pretrain.steps": 500}
    suggestion = space.suggest(optuna.trial.FixedTrial(params))
    assert suggestion.policy == {
        "_target_": "maskpolicy.policies.mixture.MixturePolicy",
        "components": {
            "entity": {"_target_": "maskpolicy.policies.EntityPolicy", "rate": 0.25, "shortfall": "top_up"},
            "random": {"_target_": "maskpolicy.policies.RandomPolicy", "rate": 0.25},
        },
        "weights": {"entity": 0.3, "random": 0.9},
    }
    policy = hydra.utils.instantiate(suggestion.policy)
    assert isinstance(policy, MixturePolicy)
    entity, random = policy.components
    assert isinstance(entity, EntityPolicy) and entity.shortfall == "top_up" and entity.rate == 0.25
    assert isinstance(random, RandomPolicy) and random.rate == 0.25
    assert torch.allclose(policy.weights, torch.tensor([0.25, 0.75]))


def test_to_writes_one_optuna_parameter_to_every_listed_path(space):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(5):
        study.enqueue_trial({"family": "mixture"})
        trial = study.ask()
        suggestion = space.suggest(trial)
        assert set(trial.params) == {"family", "mixture.rate", "mixture.weights.entity", "mixture.weights.random",
                                     "pretrain.steps"}
        rate = trial.params["mixture.rate"]
        assert 0.05 <= rate <= 0.5
        entity, random = hydra.utils.instantiate(suggestion.policy).components
        assert entity.rate == random.rate == rate
        assert "rate" not in suggestion.policy  # only the listed paths get it, not the key itself
        study.tell(trial, 0.0)
    assert len({t.params["mixture.rate"] for t in study.trials}) == 5


def test_nested_targets_are_checked_against_their_own_constructor_at_any_depth():
    nested = {
        "components.inner._target_": "maskpolicy.policies.MixturePolicy",
        "components.inner.components.span._target_": "maskpolicy.policies.SpanPolicy",
        "components.inner.components.span.p": {"type": "float", "low": 0.1, "high": 0.5},
        "components.random._target_": "maskpolicy.policies.RandomPolicy",
    }
    space = SearchSpace.from_config(with_family("mixture", **nested))
    params = {"family": "mixture", "mixture.components.inner.components.span.p": 0.4}
    suggestion = space.suggest(optuna.trial.FixedTrial(params))
    inner, _ = hydra.utils.instantiate(suggestion.policy).components
    assert isinstance(inner, MixturePolicy) and isinstance(inner.components[0], SpanPolicy)
    assert inner.components[0].p == 0.4
    with pytest.raises(SearchSpaceError, match=r"families.mixture.components.inner.components.span.q: "
                                                r"SpanPolicy has no parameter 'q'"):
        SearchSpace.from_config(with_family("mixture", **nested, **{"components.inner.components.span.q": 0.3}))


def test_run_config_keys_of_a_family_become_overrides(space):
    params = {"family": "learned", "learned.rate": 0.2, "learned.hidden_size": 16,
              "learned.learning.method": "meta_learning", "pretrain.steps": 1500}
    suggestion = space.suggest(optuna.trial.FixedTrial(params))
    assert suggestion.overrides == {"learning.method": "meta_learning", "pretrain.steps": 1500}
    assert "learning" not in suggestion.policy
    policy = hydra.utils.instantiate(suggestion.policy)
    assert isinstance(policy, LearnedPolicy) and policy.rate == 0.2


def test_earlier_key_spellings_are_accepted_with_a_warning(caplog):
    config = {"families": {"learned": {"meta.method": {"type": "categorical", "choices": ["supervised"]},
                                       "meta.meta.steps": 3}},
              "budget": {"meta.supervised.epochs": 7}}
    with caplog.at_level("WARNING", logger="maskpolicy.meta.search.space"):
        space = SearchSpace.from_config(config)
    assert "meta.method is now spelt learning.method" in caplog.text
    assert set(space.families["learned"].run_params) == {"learning.method", "learning.meta_learning.steps"}
    suggestion = space.suggest(optuna.trial.FixedTrial({"family": "learned", "learned.learning.method": "supervised"}))
    assert suggestion.overrides == {"learning.method": "supervised", "learning.meta_learning.steps": 3,
                                    "learning.supervised.epochs": 7}
    assert grid(space) == {"family": ["learned"], "learned.learning.method": ["supervised"]}


SHIPPED_SPACES = sorted(p.stem for p in (Path(maskpolicy.conf.__file__).parent / "search" / "space").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED_SPACES)
def test_every_shipped_space_parses_and_builds(name):
    config = yaml.safe_load((Path(maskpolicy.conf.__file__).parent / "search" / "space" / f"{name}.yaml").read_text())
    space = SearchSpace.from_config(config)  # every family's probe points built into policies
    assert space.families
    if "learned" in space.families:  # the cheap method first: it is what a probe and a grid try
        assert space.families["learned"].run_params["learning.method"].probes()[0] == "supervised"
    if name == "grid":
        assert len(grid(space)["family"]) == 4
    if name == "default":
        assert space.families["learned"].searched()["learned.learning.method"].distribution.choices == (
            "supervised", "meta_learning")
        params = {"family": "mixture", "mixture.rate": 0.3, "mixture.weights.entity": 1.0, "mixture.weights.random": 0}
        mixture = hydra.utils.instantiate(space.suggest(optuna.trial.FixedTrial(params)).policy)
        entity, random = mixture.components
        assert (entity.rate, entity.shortfall, random.rate) == (0.3, "top_up", 0.3)
        assert mixture.weights.tolist() == [1.0, 0.0]


def test_a_hydra_node_is_accepted():
    space = SearchSpace.from_config(OmegaConf.create(with_family("random", rate={"type": "float", "low": 0.1,
                                                                                 "high": 0.2})))
    assert list(space.families) == ["random"]


def test_registered_plugin_policies_are_families():
    if "every_nth" not in available():
        pytest.skip("the example plugin is not installed")
    space = SearchSpace.from_config({"families": {"every_nth": {}}})
    assert isinstance(hydra.utils.instantiate(space.suggest(optuna.trial.FixedTrial({"family": "every_nth"})).policy),
                      MaskingPolicy)


def test_grid_enumerates_categoricals_ints_steps_and_listed_floats():
    space = SearchSpace.from_config(yaml.safe_load("""
        families:
          random: {rate: {type: float, low: 0.1, high: 0.3, grid: [0.1, 0.2, 0.3]}, exact: true}
          span:
            rate: {type: float, low: 0.1, high: 0.2, step: 0.05}
            max_length: {type: int, low: 2, high: 6, step: 2}
          entity: {shortfall: {type: categorical, choices: [top_up, allow]}}
        budget:
          pretrain.steps: {type: int, low: 500, high: 1500, step: 500}
    """))
    assert grid(space) == {
        "family": ["random", "span", "entity"],
        "random.rate": [0.1, 0.2, 0.3],
        "span.rate": [0.1, 0.15, 0.2],
        "span.max_length": [2, 4, 6],
        "entity.shortfall": ["top_up", "allow"],
        "pretrain.steps": [500, 1000, 1500],
    }


def test_grid_sampler_visits_every_configuration_repeating_other_families_values():
    space = SearchSpace.from_config(yaml.safe_load("""
        families:
          random: {rate: {type: float, low: 0.1, high: 0.3, grid: [0.1, 0.3]}}
          entity: {shortfall: {type: categorical, choices: [top_up, allow]}}
    """))
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid(space), seed=0))
    study.optimize(lambda trial: len(space.suggest(trial).policy), n_trials=None)  # stops when the grid is done
    configurations = [(s.family, s.policy.get("rate"), s.policy.get("shortfall"))
                      for s in (space.suggest(optuna.trial.FixedTrial(t.params)) for t in study.trials)]
    assert len(study.trials) == 2 * 2 * 2  # the full product of the four lists
    assert set(configurations) == {("random", 0.1, None), ("random", 0.3, None), ("entity", None, "top_up"),
                                   ("entity", None, "allow")}


def test_grid_refuses_a_float_range_without_listed_values():
    space = SearchSpace.from_config(with_family("random", rate={"type": "float", "low": 0.1, "high": 0.3}))
    with pytest.raises(SearchSpaceError, match=r"random.rate: a grid search needs .*grid: \["):
        grid(space)


FLOAT = {"type": "float", "low": 0.1, "high": 0.5}
BAD_SPACES = [
    ({}, "no families"),
    ({"families": {}}, "no families"),
    ({"families": {"random": {}}, "budgets": {}}, r"unknown search-space section\(s\) \['budgets'\]"),
    ({"families": {"no_such_policy": {}}}, r"families.no_such_policy: unknown policy 'no_such_policy'.*_target_"),
    # Optuna's own argument checks, reported with the parameter's path
    (with_family("random", rate={"type": "float", "low": 0.5, "high": 0.1}), r"families.random.rate: `low <= high`"),
    (with_family("span", p={**FLOAT, "low": 0.0, "log": True}), r"families.span.p: `low > 0` must hold for `log=True`"),
    (with_family("span", max_length={"type": "int", "low": 0, "high": 8, "log": True}), r"max_length: `low >= 1`"),
    (with_family("span", p={**FLOAT, "step": 0.15}), r"families.span.p: .*not divisible by `step`"),
    (with_family("span", p={**FLOAT, "step": 0.1, "log": True}), r"families.span.p: .*`step` is not supported"),
    (with_family("span", max_length={"type": "int", "low": 2, "high": 8, "step": 0}), r"`step > 0` must hold"),
    (with_family("entity", shortfall={"type": "categorical", "choices": []}), "shortfall: The `choices` must contain"),
    (with_family("entity", shortfall={"type": "categorical", "choices": [{"a": 1}]}), "tuple of None, bool, int"),
    (with_family("random", rate={"type": "float", "low": 0.1, "hihg": 0.2}), "unexpected keyword argument 'hihg'"),
    (with_family("random", rate={"type": "float", "high": 0.2}), "missing 1 required positional argument: 'low'"),
    (with_family("entity", shortfall={"type": "categorical", "choices": ["a"], "grid": ["a"]}), "argument 'grid'"),
    # the project's own checks, where Optuna has none
    (with_family("random", rate={"type": "normal", "low": 0.1, "high": 0.2}), "unknown type 'normal'"),
    (with_family("random", rate={"low": 0.1, "high": 0.2}), "has no type"),
    (with_family("random", rate={"type": "float", "low": "1e-3", "high": 0.2}), "write 1.0e-3"),
    (with_family("span", max_length={"type": "int", "low": 2.5, "high": 8}), "low must be an integer, got 2.5"),
    (with_family("random", rate={"type": "float", "low": 0.1, "high": 0.2, "grid": 0.1}), "grid must be a non-empty"),
    (with_family("random", rate={"type": "float", "grid": []}), "grid must be a non-empty list"),
    (with_family("random", rate={"type": "float", "low": 0.1, "high": 0.3, "grid": [0.1, 0.4]}),
     r"grid values \[0.1, 0.4\] must lie within"),
    (with_family("random", rate={"nested": {"deep": 1}}), "has no type"),
    (with_family("random", rate=[{"a": 1}]), "a fixed value must be"),
    # the constructor is the schema
    (with_family("random", rate="high"), r"rate takes a number \(default 0.15\), got \['high'\]"),
    (with_family("span", max_length={"type": "float", "low": 2, "high": 8}), "max_length takes an integer"),
    (with_family("entity", shortfall={"type": "categorical", "choices": [1, 2]}), "shortfall takes a string"),
    (with_family("span", q=0.3), r"SpanPolicy has no parameter 'q'; its parameters: rate, p, max_length, unit"),
    (with_family("span", p={**FLOAT, "low": 0.0}), r"cannot build the policy with .*p=0.0.*\(0, 1\]"),
    (with_family("custom", _target_="no.such.module.Policy"), "cannot import _target_ 'no.such.module.Policy'"),
    (with_family("custom", _target_="maskpolicy.policies.available"), "not a policy"),
    # nested policies: each node with a _target_ is checked against its own constructor
    (with_family("mixture", rate=0.2), "MixturePolicy has no parameter 'rate'"),
    (with_family("mixture", **{**MIXTURE, "components.random.shortfall": "allow"}),
     r"families.mixture.components.random.shortfall: RandomPolicy has no parameter 'shortfall'"),
    (with_family("mixture", **{**MIXTURE, "p": {**FLOAT, "to": ["components.entity.p"]}}),
     r"families.mixture.p \(to components.entity.p\): EntityPolicy has no parameter 'p'"),
    (with_family("mixture", **{**MIXTURE, "components.bogus._target_": "no.such.Policy"}), "cannot import _target_"),
    (with_family("mixture", **{**MIXTURE, "components.random._target_": {"type": "categorical", "choices": ["a"]}}),
     "a nested _target_ is a fixed import path"),
    (with_family("mixture", **{**MIXTURE, "rate": {**FLOAT, "to": "components.random.rate"}}), "to is a non-empty"),
    (with_family("mixture", **{**MIXTURE, "components.random.rate": 0.2}), "components.random.rate is written twice"),
    (with_family("mixture", **{**MIXTURE, "weights": 1.0}), r"weights is written twice \(also by weights.entity\)"),
    (with_family("mixture", **{**MIXTURE, "weights.entity": -1.0}), r"cannot build .*non-negative weight"),
    (with_family("mixture", **{**MIXTURE, "weights.entity": 0.0, "weights.random": 0.0}), "not all zero"),
    (with_family("mixture", **{**MIXTURE, "components.span._target_": "maskpolicy.policies.SpanPolicy"}),
     r"cannot build .*weights \['entity', 'random'\] must name the components"),
    # run-config keys
    ({"families": {"random": {}}, "budget": {"steps": 100}}, "budget keys are run-config paths"),
    ({"families": {"random": {}}, "budget": {"meta": 100}}, "budget keys are run-config paths"),
    ({"families": {"learned": {"learning.method": "supervised"}}, "budget": {"learning.method": "supervised"}},
     "families.learned.learning.method is also in budget"),
    ({"families": {"learned": {"learning.method": "supervised", "meta.method": "supervised"}}},
     "meta.method: learning.method is written twice"),
]


@pytest.mark.parametrize(("config", "message"), BAD_SPACES, ids=[m[:40] for _, m in BAD_SPACES])
def test_a_bad_space_is_refused_with_its_reason(config, message):
    with pytest.raises(SearchSpaceError, match=message):
        SearchSpace.from_config(config)


def test_a_family_searches_its_rate_schedule():
    space = SearchSpace.from_config(with_family(
        "random", rate={"type": "float", "low": 0.1, "high": 0.2},
        **{"schedule.kind": {"type": "categorical", "choices": ["constant", "linear"]},
           "schedule.start": {"type": "float", "low": 0.3, "high": 0.4}}))
    trial = optuna.trial.FixedTrial({"family": "random", "random.rate": 0.15, "random.schedule.kind": "linear",
                                     "random.schedule.start": 0.35})
    suggestion = space.suggest(trial)
    assert suggestion.policy["schedule"] == {"kind": "linear", "start": 0.35}
    policy, schedule = build_policy(suggestion.policy)
    assert isinstance(policy, RandomPolicy) and schedule.rate_at(0, 10, policy.rate) == 0.35
    assert schedule.rate_at(9, 10, policy.rate) == pytest.approx(0.15)


@pytest.mark.parametrize(("params", "message"), [
    ({"schedule.speed": 2}, "RateSchedule has no parameter 'speed'"),
    ({"schedule.kind.name": "linear"}, "a schedule key is schedule.<name>"),
    ({"schedule.kind": "linear", "schedule.start": 1.5}, r"start is a masking rate"),
])
def test_bad_schedule_keys_are_refused_before_any_training(params, message):
    with pytest.raises(SearchSpaceError, match=message):
        SearchSpace.from_config(with_family("random", **params))
