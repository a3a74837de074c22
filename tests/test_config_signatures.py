"""Every YAML under conf/ checked against the constructor its ``_target_`` names: the target exists, every key is
one of its parameters, every plain value has the parameter's type, and a policy's config restates its
constructor's defaults exactly (it lists them so that the command line can set each one; the signature is where
they live), so the two cannot drift apart. The rate schedule is one shared node, ``conf/policy/schedule/``."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module
from hydra._internal.utils import _locate
from omegaconf import OmegaConf

from maskpolicy.meta.config import SCHEDULE_KEY
from maskpolicy.policies import RateSchedule

CONF = Path(__file__).resolve().parents[1] / "conf"
HYDRA_KEYS = {"_target_", "_recursive_", "_convert_", "_partial_", "_args_", "defaults"}
# a search space's families are written in its own grammar (dotted paths, run-config keys, domains), which
# SearchSpace.from_config checks against the constructors (tests/meta/test_search_space.py: every shipped space)
YAMLS = sorted(path for path in CONF.rglob("*.yaml") if path.parent != CONF / "search" / "space")
# parameters a policy config leaves out or sets on purpose: objects built in code, and a mixture's own parts
NOT_CONFIGURED = {"scorer", "components", "weights"}


def targets(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every mapping with a plain ``_target_`` inside ``node``, with where it sits."""
    if isinstance(node, Mapping):
        if isinstance(node.get("_target_"), str) and "${" not in node["_target_"]:
            yield where, dict(node)
        for key, value in node.items():
            yield from targets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from targets(value, f"{where}[{index}]")


def raw(path: Path) -> Any:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def signature_of(target: Any) -> tuple[inspect.Signature, dict[str, Any]]:
    """The target's signature and whatever of its annotations resolve (names only imported for typing do not)."""
    function = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(function)
    except (NameError, TypeError):
        hints = {}
    return inspect.signature(target), hints


def fits(value: Any, annotation: Any) -> bool:
    """Whether a plain YAML value can be the annotated parameter (annotations this cannot judge pass)."""
    if value is None or value == "???" or (isinstance(value, str) and "${" in value):
        return True  # null, a mandatory value, an interpolation: judged when composed
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, argument) for argument in arguments)
    if origin is typing.Literal:
        return value in arguments
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (bool, str):
        return isinstance(value, annotation)
    if annotation is Path:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence, typing.Sequence) or annotation in (list, tuple):
        return isinstance(value, list)
    if origin in (dict, Mapping, typing.Mapping) or annotation is dict:
        return isinstance(value, dict)
    return True


def problems(where: str, node: dict[str, Any]) -> list[str]:
    target = _locate(node["_target_"])
    signature, hints = signature_of(target)
    parameters = signature.parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    found = []
    for key, value in node.items():
        if key in HYDRA_KEYS:
            continue
        if key == SCHEDULE_KEY and isinstance(value, dict):  # build_policy takes it out for the RateSchedule
            found += problems(f"{where}.{key}", {"_target_": "maskpolicy.policies.RateSchedule", **value})
            continue
        if key not in parameters:
            if not takes_any:
                found.append(f"{where}: {key!r} is not a parameter of {node['_target_']} {list(parameters)}")
            continue
        annotation = hints.get(key)
        if annotation is not None and not isinstance(value, dict) and not fits(value, annotation):
            found.append(f"{where}: {key}={value!r} does not fit {node['_target_']}'s {key}: {annotation}")
    return found


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(CONF)) for p in YAMLS])
def test_every_key_is_a_parameter_of_its_target_and_has_its_type(path):
    found = [problem for where, node in targets(raw(path), str(path.relative_to(CONF)))
             for problem in problems(where, node)]
    assert not found, "\n".join(found)


POLICY_YAMLS = [p for p in sorted((CONF / "policy").glob("*.yaml"))
                if raw(p).get("_target_", "").startswith("maskpolicy.policies.")]


@pytest.mark.parametrize("path", POLICY_YAMLS, ids=[p.stem for p in POLICY_YAMLS])
def test_a_policy_config_restates_every_default_of_its_constructor_exactly(path):
    node = raw(path)
    parameters = inspect.signature(_locate(node["_target_"])).parameters
    for name, parameter in parameters.items():
        if name in NOT_CONFIGURED or parameter.default is inspect.Parameter.empty:
            continue
        assert name in node, f"{path.name} lacks {name}: the command line could not set policy.{name}"
        default = list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
        assert node[name] == default, f"{path.name}: {name}={node[name]!r}, its constructor's default is {default!r}"
    assert {SCHEDULE_KEY: "constant"} in node["defaults"], f"{path.name} takes the shared rate schedule node"
    assert SCHEDULE_KEY not in node, f"{path.name} re-types the schedule; set it in policy/schedule/ or override it"


SCHEDULES = sorted((CONF / "policy" / SCHEDULE_KEY).glob("*.yaml"))


def test_the_constant_schedule_restates_rate_schedules_defaults_exactly():
    defaults = {name: p.default for name, p in inspect.signature(RateSchedule).parameters.items()}
    assert raw(CONF / "policy" / SCHEDULE_KEY / "constant.yaml") == defaults


@pytest.mark.parametrize("path", SCHEDULES, ids=[p.stem for p in SCHEDULES])
def test_every_schedule_preset_composes_into_a_rate_schedule(path):
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        policy = compose("pretrain", overrides=["policy=span", f"policy/schedule={path.stem}"]).policy
    node = OmegaConf.to_container(policy[SCHEDULE_KEY])
    assert not problems(path.name, {"_target_": "maskpolicy.policies.RateSchedule", **node})
    assert RateSchedule(**node).kind == (raw(path).get("kind") or "constant")


def test_a_wrong_key_or_type_is_found():
    assert problems("x", {"_target_": "maskpolicy.policies.RandomPolicy", "rte": 0.2}) == [
        "x: 'rte' is not a parameter of maskpolicy.policies.RandomPolicy ['rate', 'exact']"]
    assert problems("x", {"_target_": "maskpolicy.policies.SpanPolicy", "max_length": "ten"}) == [
        "x: max_length='ten' does not fit maskpolicy.policies.SpanPolicy's max_length: <class 'int'>"]
    wavy = problems("x", {"_target_": "maskpolicy.policies.RandomPolicy", SCHEDULE_KEY: {"kind": "wavy"}})
    assert wavy[0].startswith("x.schedule: kind='wavy' does not fit")
