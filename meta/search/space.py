"""The search space over masking policies, written as configuration.

A search space is a mapping (a YAML file, a Hydra node) with two sections::

    families:                    # the policies the search may pick; the family itself is a categorical
      random:
        rate: {type: float, low: 0.05, high: 0.5}
      span:
        rate: {type: float, low: 0.05, high: 0.5}
        p: {type: float, low: 0.1, high: 0.5, log: true}
        max_length: 10           # a plain value is fixed, not searched
      entity:
        rate: {type: float, low: 0.05, high: 0.5}
        shortfall: top_up
      mixture:                   # its components are the policies named under weights.*
        rate: {type: float, low: 0.05, high: 0.5}          # shared: every component gets it
        weights.entity: {type: float, low: 0.0, high: 1.0}
        weights.random: {type: float, low: 0.0, high: 1.0}
        components.entity.shortfall: top_up                # one component's own parameter
      learned:
        rate: {type: float, low: 0.1, high: 0.4}
        temperature: {type: float, low: 0.3, high: 3.0, log: true}
        meta.method: {type: categorical, choices: [supervised, meta]}   # a run-config override
      span_words:                # any other name needs a _target_, as in Hydra configs
        _target_: maskpolicy.policies.SpanPolicy
        unit: word
    budget:                      # optional: run-config values for every trial (multi-fidelity knobs)
      pretrain.steps: {type: int, low: 500, high: 1500, step: 500}

A family is a registered policy name (``maskpolicy.policies.available()``: built-ins and
installed plugins) or any name with a ``_target_`` import path.

A parameter is searched or fixed:

- ``{type: float, low, high, log: false, step: null, grid: null}``
- ``{type: int, low, high, step: 1, log: false, grid: null}``
- ``{type: categorical, choices: [...]}`` (choices are null, booleans, numbers or strings)
- a plain value (a scalar or a list of scalars), which is fixed.

``grid`` lists the values Optuna's GridSampler tries; a float range needs it (or a
``step``) to take part in a grid search. ``low`` and ``high`` default to the grid's ends.

A family's keys are dotted paths into the policy's config and must name parameters
of its constructor (the signature is the schema). A key that starts with a run-config
section (``pretrain.``, ``finetune.``, ``score.``, ``meta.``, ``trainer.``, ``model.``,
``task.``) is instead an override of the run's config, applied only when that family
is drawn (e.g. how a learned policy is trained). Budget keys are run-config overrides
for every trial.

Optuna parameter names: ``family``, then ``<family>.<key>`` for the drawn family's
keys (so TPE sees a conditional space), then the budget keys as written.

:meth:`SearchSpace.from_config` checks all of this, and builds every family at the
middle and the ends of its ranges, before any training; :meth:`SearchSpace.suggest`
draws one configuration; :func:`grid` lists the values for a grid search.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import hydra.utils
import optuna
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from maskpolicy.policies import available, resolve

FAMILY = "family"
SECTIONS = ("families", "budget")
RUN_SECTIONS = ("pretrain", "finetune", "score", "meta", "trainer", "model", "task")
TYPES = ("float", "int", "categorical")
KIND_NAMES = {"bool": "a boolean", "int": "an integer", "float": "a number", "str": "a string"}


class SearchSpaceError(ValueError):
    """The search space configuration cannot be searched."""


# ---------------------------------------------------------------------------- parameter domains


class Domain(Protocol):
    """What one parameter may take: a range, a set of choices, or one fixed value."""

    searched: bool

    def suggest(self, trial: optuna.Trial, name: str) -> Any: ...

    def grid_values(self, name: str) -> list[Any]: ...

    def probes(self) -> tuple[Any, ...]:
        """A typical value first, then the extremes: what the up-front build check tries."""
        ...


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False
    step: float | None = None
    grid: tuple[float, ...] | None = None
    searched: bool = field(default=True, init=False)

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def grid_values(self, name: str) -> list[float]:
        if self.grid is not None:
            return list(self.grid)
        if self.step is not None:
            count = round((self.high - self.low) / self.step) + 1
            return [round(self.low + k * self.step, 12) for k in range(count)]
        raise SearchSpaceError(
            f"{name}: a float range cannot be enumerated for a grid search; list the values to try "
            f"(grid: [{self.low}, {self.high}]) or give a step"
        )

    def probes(self) -> tuple[float, ...]:
        if self.grid is not None:
            return (self.grid[len(self.grid) // 2], self.low, self.high)
        middle = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        if self.step is not None:
            middle = self.low + round((middle - self.low) / self.step) * self.step
        return (middle, self.low, self.high)


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False
    step: int = 1
    grid: tuple[int, ...] | None = None
    searched: bool = field(default=True, init=False)

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def grid_values(self, name: str) -> list[int]:
        return list(self.grid) if self.grid is not None else list(range(self.low, self.high + 1, self.step))

    def probes(self) -> tuple[int, ...]:
        if self.grid is not None:
            return (self.grid[len(self.grid) // 2], self.low, self.high)
        middle = self.low + (self.high - self.low) // (2 * self.step) * self.step
        return (middle, self.low, self.high)


@dataclass(frozen=True)
class Choice:
    choices: tuple[Any, ...]
    searched: bool = field(default=True, init=False)

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))

    def grid_values(self, name: str) -> list[Any]:
        return list(self.choices)

    def probes(self) -> tuple[Any, ...]:
        return self.choices


@dataclass(frozen=True)
class Fixed:
    value: Any
    searched: bool = field(default=False, init=False)

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return copy.deepcopy(self.value)

    def grid_values(self, name: str) -> list[Any]:
        return [self.value]

    def probes(self) -> tuple[Any, ...]:
        return (self.value,)


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _number(where: str, value: Any, what: str, integer: bool = False) -> Any:
    kind = int if integer else int | float
    if isinstance(value, bool) or not isinstance(value, kind):
        hint = " (YAML reads 1e-3 as text: write 1.0e-3)" if isinstance(value, str) and "e" in value else ""
        expected = "an integer" if integer else "a number"
        raise SearchSpaceError(f"{where}: {what} must be {expected}, got {value!r}{hint}")
    return value


def _check_keys(where: str, raw: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(raw) - {"type", *allowed})
    if unknown:
        raise SearchSpaceError(f"{where}: unknown key(s) {unknown} for type {raw['type']}; allowed: {list(allowed)}")


def _grid(where: str, raw: Mapping[str, Any], integer: bool) -> tuple[Any, ...] | None:
    grid = raw.get("grid")
    if grid is None:
        return None
    if not isinstance(grid, list | tuple) or not grid:
        raise SearchSpaceError(f"{where}: grid must be a non-empty list of values, got {grid!r}")
    return tuple(_number(where, value, "every grid value", integer) for value in grid)


def _bounds(where: str, raw: Mapping[str, Any], grid: tuple[Any, ...] | None, integer: bool) -> tuple[Any, Any]:
    if grid is None and ("low" not in raw or "high" not in raw):
        raise SearchSpaceError(f"{where}: a {raw['type']} range needs low and high (or a grid)")
    low = _number(where, raw.get("low", min(grid) if grid else None), "low", integer)
    high = _number(where, raw.get("high", max(grid) if grid else None), "high", integer)
    if low > high:
        raise SearchSpaceError(f"{where}: low ({low}) is greater than high ({high})")
    if grid is not None and not all(low <= value <= high for value in grid):
        raise SearchSpaceError(f"{where}: grid values {list(grid)} must lie within [low, high] = [{low}, {high}]")
    return low, high


def _check_step(where: str, low: float, high: float, step: float) -> None:
    if not step > 0:
        raise SearchSpaceError(f"{where}: step must be > 0, got {step}")
    steps = (high - low) / step
    if abs(steps - round(steps)) > 1e-8:
        raise SearchSpaceError(f"{where}: high - low ({high} - {low}) must be a whole number of steps ({step})")


def _parse_float(where: str, raw: Mapping[str, Any]) -> FloatRange:
    _check_keys(where, raw, ("low", "high", "log", "step", "grid"))
    grid = _grid(where, raw, integer=False)
    low, high = _bounds(where, raw, grid, integer=False)
    log = bool(raw.get("log", False))
    if log and low <= 0:
        raise SearchSpaceError(f"{where}: a log-scale range needs low > 0, got low = {low}")
    step = raw.get("step")
    if step is not None:
        if log:
            raise SearchSpaceError(f"{where}: Optuna cannot combine log: true with a step; drop one of them")
        _check_step(where, low, high, _number(where, step, "step"))
    return FloatRange(float(low), float(high), log, None if step is None else float(step),
                      None if grid is None else tuple(float(v) for v in grid))


def _parse_int(where: str, raw: Mapping[str, Any]) -> IntRange:
    _check_keys(where, raw, ("low", "high", "log", "step", "grid"))
    grid = _grid(where, raw, integer=True)
    low, high = _bounds(where, raw, grid, integer=True)
    log = bool(raw.get("log", False))
    if log and low < 1:
        raise SearchSpaceError(f"{where}: a log-scale int range needs low ≥ 1, got low = {low}")
    step = _number(where, raw.get("step", 1), "step", integer=True)
    if log and step != 1:
        raise SearchSpaceError(f"{where}: Optuna cannot combine log: true with a step other than 1")
    _check_step(where, low, high, step)
    return IntRange(low, high, log, step, grid)


def _parse_categorical(where: str, raw: Mapping[str, Any]) -> Choice:
    _check_keys(where, raw, ("choices",))
    choices = raw.get("choices")
    if not isinstance(choices, list | tuple) or not choices:
        raise SearchSpaceError(f"{where}: a categorical needs a non-empty list of choices, got {choices!r}")
    if not all(_is_plain(choice) for choice in choices):
        raise SearchSpaceError(f"{where}: Optuna's choices are null, booleans, numbers or strings; got {choices!r}")
    return Choice(tuple(choices))


PARSERS: dict[str, Callable[[str, Mapping[str, Any]], Domain]] = {
    "float": _parse_float, "int": _parse_int, "categorical": _parse_categorical,
}


def parse_domain(where: str, raw: Any) -> Domain:
    """One parameter's entry: a ``{type: ...}`` mapping is searched, a plain value is fixed."""
    if isinstance(raw, Mapping):
        kind = raw.get("type")
        if kind not in PARSERS:
            problem = "has no type" if kind is None else f"has unknown type {kind!r}"
            raise SearchSpaceError(
                f"{where} {problem}: a searched parameter is a mapping with type: {' | '.join(TYPES)}; "
                "a fixed value is a plain scalar or list (fix one entry of a mapping with a dotted key)"
            )
        return PARSERS[kind](where, raw)
    if _is_plain(raw) or (isinstance(raw, list | tuple) and all(_is_plain(item) for item in raw)):
        return Fixed(list(raw) if isinstance(raw, list | tuple) else raw)
    raise SearchSpaceError(
        f"{where}: a fixed value must be null, a boolean, a number, a string or a list of them; "
        f"got a {type(raw).__name__}"
    )


# ---------------------------------------------------------------------------- policy factories


def _import(path: str) -> Any:
    """The object at a dotted import path (``package.module.Class``)."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(f"no module in {path!r} can be imported")


def _factory(where: str, name: str, target: Any) -> tuple[Callable[..., Any], str]:
    """The policy factory and its ``_target_`` path, for a registered name or an explicit target."""
    if target is not None:
        if not isinstance(target, str):
            raise SearchSpaceError(f"{where}._target_ must be an import path string, got {target!r}")
        try:
            factory = _import(target)
        except (ImportError, AttributeError) as error:
            raise SearchSpaceError(f"{where}: cannot import _target_ {target!r} ({error})") from error
        if not callable(factory):
            raise SearchSpaceError(f"{where}: _target_ {target!r} is not a class or function")
        return factory, target
    if name not in available():
        raise SearchSpaceError(
            f"{where}: unknown policy {name!r}; available: {', '.join(available())}. A policy that is not "
            "registered needs a _target_ (its import path, e.g. my_package.policies.MyPolicy)"
        )
    factory = resolve(name)
    return factory, f"{factory.__module__}.{factory.__qualname__}"


def _signature(factory: Callable[..., Any]) -> dict[str, inspect.Parameter] | None:
    """The factory's keyword parameters; None when it takes ``**kwargs`` (anything goes)."""
    parameters = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return {name: p for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL}


def _is_mixture(factory: Callable[..., Any]) -> bool:
    parameters = _signature(factory) or {}
    return "components" in parameters and "weights" in parameters


def _kind(value: Any) -> str | None:
    for kind, types in (("bool", bool), ("int", int), ("float", float), ("str", str), ("list", list | tuple)):
        if isinstance(value, types):
            return kind
    return None


def _domain_kinds(domain: Domain) -> set[str | None]:
    if isinstance(domain, FloatRange):
        return {"float"}
    if isinstance(domain, IntRange):
        return {"int"}
    return {_kind(value) for value in domain.probes() if value is not None}


def _check_kind(where: str, domain: Domain, parameter: inspect.Parameter | None) -> None:
    """A value of another kind than the parameter's default (a string for a rate) is refused."""
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return
    expected = _kind(parameter.default)
    accepted = {"float": {"float", "int"}}.get(expected, {expected})
    if expected in KIND_NAMES and not _domain_kinds(domain) <= accepted:
        shown = {FloatRange: "a float range", IntRange: "an int range"}.get(type(domain), list(domain.probes()))
        raise SearchSpaceError(
            f"{where}: {parameter.name} takes {KIND_NAMES[expected]} (its default is {parameter.default!r}), "
            f"got {shown}"
        )


def _require_parameter(where: str, factory: Callable[..., Any], name: str) -> inspect.Parameter | None:
    """The constructor parameter ``name``; a clear error when the factory has none by that name."""
    parameters = _signature(factory)
    if parameters is None:
        return None
    if name not in parameters:
        label = getattr(factory, "__qualname__", repr(factory))
        raise SearchSpaceError(
            f"{where}: {label} has no parameter {name!r}; its parameters: {', '.join(parameters) or 'none'}. "
            f"Keys starting with {', '.join(s + '.' for s in RUN_SECTIONS)} override the run's config instead"
        )
    return parameters[name]


# ---------------------------------------------------------------------------- families


@dataclass(frozen=True)
class Family:
    """One policy family: how to turn its parameters' values into a policy config.

    Attributes:
        name: the family's name (the value of the ``family`` categorical).
        template: the policy config before parameters: ``_target_`` (and a mixture's components).
        policy_params: policy key → domain.
        destinations: policy key → the config paths its value is written to (a mixture's
            shared keys go to every component).
        run_params: run-config key → domain, applied when this family is drawn.
    """

    name: str
    template: dict[str, Any]
    policy_params: dict[str, Domain]
    destinations: dict[str, tuple[str, ...]]
    run_params: dict[str, Domain]

    def policy_config(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The nested, instantiable policy config for one value per policy key."""
        config = copy.deepcopy(self.template)
        for key, value in values.items():
            for path in self.destinations[key]:
                _set_path(config, path, value)
        return config

    def suggest(self, trial: optuna.Trial) -> tuple[dict[str, Any], dict[str, Any]]:
        """Draws this family's parameters: (policy config, run-config overrides)."""
        values = {key: domain.suggest(trial, f"{self.name}.{key}") for key, domain in self.policy_params.items()}
        overrides = {key: domain.suggest(trial, f"{self.name}.{key}") for key, domain in self.run_params.items()}
        return self.policy_config(values), overrides

    def searched(self) -> dict[str, Domain]:
        """Optuna name → domain for every searched key."""
        params = {**self.policy_params, **self.run_params}
        return {f"{self.name}.{key}": domain for key, domain in params.items() if domain.searched}


def _set_path(config: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        config = config.setdefault(part, {})
    config[leaf] = copy.deepcopy(value)


def _split_run_keys(where: str, raw: Mapping[str, Any], factory: Callable[..., Any]) -> tuple[dict, dict]:
    """Parses a family's keys into (policy key → domain, run-config key → domain)."""
    parameters = _signature(factory)
    policy, run = {}, {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key:
            raise SearchSpaceError(f"{where}: parameter names must be non-empty strings, got {key!r}")
        domain = parse_domain(f"{where}.{key}", value)
        first = key.split(".")[0]
        is_run_key = first in RUN_SECTIONS and "." in key and (parameters is None or first not in parameters)
        (run if is_run_key else policy)[key] = domain
    return policy, run


def _plain_layout(where: str, factory: Callable[..., Any], params: dict[str, Domain]) -> dict[str, tuple[str, ...]]:
    for key, domain in params.items():
        parameter = _require_parameter(f"{where}.{key}", factory, key.split(".")[0])
        if "." not in key:
            _check_kind(f"{where}.{key}", domain, parameter)
    return {key: (key,) for key in params}


@dataclass
class _Mixture:
    """A mixture family's parts while it is parsed."""

    components: dict[str, Callable[..., Any]] = field(default_factory=dict)
    targets: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Domain] = field(default_factory=dict)


def _mixture_components(where: str, params: dict[str, Domain]) -> _Mixture:
    """Finds the components (names under ``weights.`` and ``components.``) and their factories."""
    mixture = _Mixture()
    for key, domain in params.items():
        parts = key.split(".")
        if parts[0] == "weights" and len(parts) == 2:
            mixture.weights[parts[1]] = domain
            mixture.targets.setdefault(parts[1], None)
        elif parts[0] == "components" and len(parts) >= 3:
            mixture.targets.setdefault(parts[1], None)
            if parts[2] == "_target_" and len(parts) == 3:
                if not isinstance(domain, Fixed):
                    raise SearchSpaceError(f"{where}.{key}: a component's _target_ is fixed, not searched")
                mixture.targets[parts[1]] = domain.value
        elif parts[0] in ("weights", "components"):
            raise SearchSpaceError(
                f"{where}.{key}: write weights.<component> or components.<component>.<parameter>"
            )
    if not mixture.targets:
        raise SearchSpaceError(
            f"{where}: a mixture needs components: give weights.<policy> for each, e.g. "
            "weights.entity: {type: float, low: 0.0, high: 1.0} and weights.random: {...}"
        )
    if mixture.weights and set(mixture.weights) != set(mixture.targets):
        missing = sorted(set(mixture.targets) - set(mixture.weights))
        raise SearchSpaceError(f"{where}: every mixture component needs a weight; missing weights.{missing[0]}")
    for name, target in mixture.targets.items():
        factory, path = _factory(f"{where}.components.{name}", name, target)
        if _is_mixture(factory):
            raise SearchSpaceError(f"{where}: component {name!r} is itself a mixture; list its parts directly")
        mixture.components[name], mixture.targets[name] = factory, path
    return mixture


def _check_weights(where: str, weights: dict[str, Domain]) -> None:
    for name, domain in weights.items():
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in domain.probes()):
            raise SearchSpaceError(f"{where}.weights.{name}: mixture weights are non-negative numbers")
    if weights and not any(max(domain.probes()) > 0 for domain in weights.values()):
        raise SearchSpaceError(f"{where}: the mixture weights can only be zero; let at least one be positive")


def _mixture_layout(where: str, params: dict[str, Domain]) -> tuple[dict[str, Any], dict[str, tuple[str, ...]]]:
    """A mixture's template (its components' targets) and where each key's value goes."""
    mixture = _mixture_components(where, params)
    _check_weights(where, mixture.weights)
    template = {"components": {name: {"_target_": path} for name, path in mixture.targets.items()}}
    destinations: dict[str, tuple[str, ...]] = {}
    for key, domain in params.items():
        parts = key.split(".")
        if parts[0] == "weights":
            destinations[key] = (key,)
        elif parts[0] == "components":
            if parts[2] == "_target_":
                continue  # already in the template
            parameter = _require_parameter(f"{where}.{key}", mixture.components[parts[1]], parts[2])
            if len(parts) == 3:
                _check_kind(f"{where}.{key}", domain, parameter)
            destinations[key] = (key,)
        else:  # shared by every component
            for name, factory in mixture.components.items():
                parameter = _require_parameter(f"{where}.{key} (shared with component {name!r})", factory, parts[0])
                if len(parts) == 1:
                    _check_kind(f"{where}.{key}", domain, parameter)
            destinations[key] = tuple(f"components.{name}.{key}" for name in mixture.components)
    return template, destinations


def parse_family(name: str, raw: Any) -> Family:
    """Checks one family's entry against its policy's constructor and lays out its config."""
    where = f"families.{name}"
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SearchSpaceError(f"{where} must be a mapping of parameters (or empty), got {raw!r}")
    raw = dict(raw)
    factory, target = _factory(where, name, raw.pop("_target_", None))
    policy_params, run_params = _split_run_keys(where, raw, factory)
    if _is_mixture(factory):
        template, destinations = _mixture_layout(where, policy_params)
        policy_params = {key: domain for key, domain in policy_params.items() if key in destinations}
    else:
        template, destinations = {}, _plain_layout(where, factory, policy_params)
    return Family(name, {"_target_": target, **template}, policy_params, destinations, run_params)


def _probe_points(family: Family) -> list[dict[str, Any]]:
    """Every key at its typical value, then each key in turn at each extreme or choice."""
    base = {key: domain.probes()[0] for key, domain in family.policy_params.items()}
    points = [base]
    for key, domain in family.policy_params.items():
        points.extend({**base, key: value} for value in domain.probes()[1:] if value != base[key])
    return points


def check_builds(family: Family) -> None:
    """Builds the family's policy at its probe points; a policy that cannot be built stops here."""
    for values in _probe_points(family):
        try:
            policy = hydra.utils.instantiate(family.policy_config(values))
        except Exception as error:  # a factory may raise anything; all of it is a bad space
            cause = error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error
            shown = ", ".join(f"{key}={value!r}" for key, value in values.items()) or "its defaults"
            raise SearchSpaceError(
                f"families.{family.name}: the policy cannot be built with {shown}: {cause}"
            ) from error
        if not callable(getattr(policy, "select", None)):
            raise SearchSpaceError(
                f"families.{family.name}: {type(policy).__name__} is not a masking policy (no select method)"
            )


# ---------------------------------------------------------------------------- the space


@dataclass(frozen=True)
class Suggestion:
    """One trial's draw.

    Attributes:
        family: the drawn family's name.
        policy: an instantiable policy config (``_target_`` plus parameters, nested; a
            mixture with its component configs): it replaces the run's ``policy`` node.
        overrides: run-config dotted path → value (the budget and the family's run keys),
            e.g. ``{"pretrain.steps": 1000}``; apply with ``OmegaConf.update(cfg, key, value)``.
    """

    family: str
    policy: dict[str, Any]
    overrides: dict[str, Any]


@dataclass(frozen=True)
class SearchSpace:
    """Policy families to choose from, each with its parameters, plus budget knobs."""

    families: dict[str, Family]
    budget: dict[str, Domain]

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, check: bool = True) -> SearchSpace:
        """Parses and validates a search space; ``check`` also builds each family's policy once per probe."""
        if isinstance(config, DictConfig):
            config = OmegaConf.to_container(config, resolve=True)
        if not isinstance(config, Mapping):
            raise SearchSpaceError(f"a search space is a mapping with {' and '.join(SECTIONS)}, got {config!r}")
        unknown = sorted(set(config) - set(SECTIONS))
        if unknown:
            raise SearchSpaceError(f"unknown search-space section(s) {unknown}; the sections are {list(SECTIONS)}")
        families_config = config.get("families") or {}
        if not isinstance(families_config, Mapping) or not families_config:
            raise SearchSpaceError(
                "the search space has no families: list at least one policy under families:, e.g. "
                "families: {random: {rate: {type: float, low: 0.05, high: 0.5}}}"
            )
        families = {str(name): parse_family(str(name), raw) for name, raw in families_config.items()}
        space = cls(families, _parse_budget(config.get("budget") or {}))
        space._check_names()
        if check:
            for family in families.values():
                check_builds(family)
        return space

    def suggest(self, trial: optuna.Trial) -> Suggestion:
        """Draws the family, then only that family's parameters, then the budget."""
        family = self.families[trial.suggest_categorical(FAMILY, list(self.families))]
        policy, overrides = family.suggest(trial)
        for key, domain in self.budget.items():
            overrides[key] = domain.suggest(trial, key)
        return Suggestion(family.name, policy, overrides)

    def _check_names(self) -> None:
        """Optuna names must be unique, and a family's run keys must not repeat the budget's."""
        names = [FAMILY, *self.budget]
        for family in self.families.values():
            names += [f"{family.name}.{key}" for key in [*family.policy_params, *family.run_params]]
            both = sorted(set(family.run_params) & set(self.budget))
            if both:
                raise SearchSpaceError(f"families.{family.name}.{both[0]} is also in budget; set it in one place")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise SearchSpaceError(f"parameter name {duplicates[0]!r} is used twice; rename a family or budget key")


def _parse_budget(raw: Any) -> dict[str, Domain]:
    if not isinstance(raw, Mapping):
        raise SearchSpaceError(f"budget must be a mapping of run-config keys, got {raw!r}")
    budget = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key.split(".")[0] not in RUN_SECTIONS or "." not in key:
            raise SearchSpaceError(
                f"budget.{key}: budget keys are run-config paths starting with one of "
                f"{', '.join(s + '.' for s in RUN_SECTIONS)} (e.g. pretrain.steps)"
            )
        budget[key] = parse_domain(f"budget.{key}", value)
    return budget


def grid(space: SearchSpace) -> dict[str, list[Any]]:
    """The values of every searched parameter, for ``optuna.samplers.GridSampler``.

    GridSampler walks the full product of these lists, but a trial only uses the drawn
    family's parameters, so grid points differing in another family's parameters repeat
    a configuration; ``BruteForceSampler`` enumerates conditional spaces without repeats.
    """
    values: dict[str, list[Any]] = {FAMILY: list(space.families)}
    for family in space.families.values():
        values.update({name: domain.grid_values(name) for name, domain in family.searched().items()})
    values.update({key: domain.grid_values(key) for key, domain in space.budget.items() if domain.searched})
    return values
