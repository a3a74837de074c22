"""The search space over masking policies, written as configuration.

A search space is a mapping (a YAML file, a Hydra node) with two sections::

    families:                    # the policies the search may pick; the family itself is a categorical
      span:
        rate: {type: float, low: 0.05, high: 0.5}
        p: {type: float, low: 0.1, high: 0.5, log: true}
        max_length: 10           # a plain value is fixed, not searched
      mixture:                   # dotted keys are paths into the policy's nested config
        components.entity._target_: maskpolicy.policies.EntityPolicy
        components.entity.shortfall: top_up
        components.random._target_: maskpolicy.policies.RandomPolicy
        weights.entity: {type: float, low: 0.0, high: 1.0}
        weights.random: {type: float, low: 0.0, high: 1.0}
        rate: {type: float, low: 0.05, high: 0.5, to: [components.entity.rate, components.random.rate]}
      learned:
        rate: {type: float, low: 0.1, high: 0.4}
        learning.method: {type: categorical, choices: [supervised, meta_learning]}   # a run-config override
      span_words:                # a name that is not a registered policy needs a _target_
        _target_: maskpolicy.policies.SpanPolicy
        unit: word
    budget:                      # optional: run-config values for every trial (multi-fidelity knobs)
      pretrain.steps: {type: int, low: 500, high: 1500, step: 500}

A parameter is fixed (a scalar or a list of scalars) or searched:
``{type: float | int, low, high, log: false, step: null, grid: null}`` or
``{type: categorical, choices: [...]}`` (null, booleans, numbers or strings). Ranges
follow Optuna's rules (low ≤ high; a log scale needs low > 0 and no step; a step divides
high - low). ``grid`` lists the values a grid search tries (a float range needs it, or a
step); ``low``/``high`` default to its ends. Write ``1.0e-3``: YAML reads ``1e-3`` as text.

A family's keys are paths into its policy's config; every node with a ``_target_`` (the
family's own, or a nested fixed one like ``components.entity._target_``) is checked
against its constructor, whose signature is the schema; ``schedule.<key>`` (kind, start, end, at,
steps) sets the family's masking-rate schedule, checked against ``RateSchedule``. ``to: [path, ...]`` writes one
searched value to every listed path. A key starting with a run-config section
(``pretrain. finetune. score. learning. trainer. model. task.``) overrides the run's
config when that family is drawn; budget keys do so for every trial. Earlier spellings
(``meta.method``) are accepted with a warning and used in today's (``learning.method``).

Optuna names: ``family``, then ``<family>.<key>`` for the drawn family's keys (so TPE sees
a conditional space), then the budget keys. :meth:`SearchSpace.from_config` checks all of
this and builds every family at the middle and ends of its ranges before any training;
:meth:`SearchSpace.suggest` draws one configuration; :func:`grid` lists a grid's values.

Why this module is long: this docstring is the schema users write against (~45 lines);
the code itself is under 400.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import hydra.utils
import optuna
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from maskpolicy.meta.config import SCHEDULE_KEY, build_policy, modern_key
from maskpolicy.policies import PolicyError, RateSchedule, resolve

log = logging.getLogger(__name__)
FAMILY = "family"
SECTIONS = ("families", "budget")
RUN_SECTIONS = ("pretrain", "finetune", "score", "learning", "trainer", "model", "task")
DISTRIBUTIONS = {"float": FloatDistribution, "int": IntDistribution, "categorical": CategoricalDistribution}
TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


class SearchSpaceError(ValueError):
    """The search space configuration cannot be searched."""


@dataclass(frozen=True)
class Domain:
    """What one parameter may take: an Optuna distribution (searched) or, without one, a fixed value."""

    distribution: BaseDistribution | None = None
    value: Any = None
    grid: tuple[Any, ...] | None = None  # the values a grid search tries

    @property
    def searched(self) -> bool:
        return self.distribution is not None

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        d = self.distribution
        if d is None:
            return copy.deepcopy(self.value)
        if isinstance(d, CategoricalDistribution):
            return trial.suggest_categorical(name, list(d.choices))
        suggest = trial.suggest_int if isinstance(d, IntDistribution) else trial.suggest_float
        return suggest(name, d.low, d.high, step=d.step, log=d.log)

    def grid_values(self, name: str) -> list[Any]:
        d = self.distribution
        if d is None or isinstance(d, CategoricalDistribution) or self.grid is not None:
            return list(self.grid or self.probes())
        if d.step is None:
            raise SearchSpaceError(f"{name}: a grid search needs a float range's values (grid: [...]) or a step")
        return [round(d.low + k * d.step, 12) for k in range(round((d.high - d.low) / d.step) + 1)]

    def probes(self) -> tuple[Any, ...]:
        """A typical value first, then the extremes or every choice: what the up-front build check tries."""
        d = self.distribution
        if d is None or isinstance(d, CategoricalDistribution):
            return (self.value,) if d is None else d.choices
        if self.grid is not None:
            return (self.grid[len(self.grid) // 2], d.low, d.high)
        middle = math.sqrt(d.low * d.high) if d.log else (d.low + d.high) / 2
        if d.step is not None:  # an int range always has one, so its middle is an int
            middle = d.low + round((middle - d.low) / d.step) * d.step
        return (middle, d.low, d.high)


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _number(where: str, value: Any, what: str, integer: bool) -> Any:
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        hint = " (YAML reads 1e-3 as text: write 1.0e-3)" if isinstance(value, str) and "e" in value else ""
        expected = "an integer" if integer else "a number"
        raise SearchSpaceError(f"{where}: {what} must be {expected}, got {value!r}{hint}")
    return value


def _distribution(where: str, kind: str, options: dict[str, Any]) -> Domain:
    """Optuna's distribution, whose constructor checks its arguments; ``grid`` is ours."""
    if kind == "categorical":
        return Domain(CategoricalDistribution(**options))
    grid = options.pop("grid", None)
    if grid is not None:
        if not isinstance(grid, list | tuple) or not grid:
            raise SearchSpaceError(f"{where}: grid must be a non-empty list of values, got {grid!r}")
        grid = tuple(_number(where, value, "every grid value", kind == "int") for value in grid)
        options = {"low": min(grid), "high": max(grid), **options}
    for name in ("low", "high", "step"):
        if options.get(name) is not None:
            _number(where, options[name], name, kind == "int")
    distribution = DISTRIBUTIONS[kind](**options)
    if grid and not all(distribution.low <= value <= distribution.high for value in grid):
        raise SearchSpaceError(f"{where}: grid values {list(grid)} must lie within [low, high]")
    return Domain(distribution, grid=grid)


def parse_domain(where: str, raw: Any) -> Domain:
    """One parameter's entry: a ``{type: ...}`` mapping is searched, a plain value is fixed."""
    if _is_plain(raw) or (isinstance(raw, list | tuple) and all(_is_plain(item) for item in raw)):
        return Domain(value=list(raw) if isinstance(raw, list | tuple) else raw)
    if not isinstance(raw, Mapping):
        raise SearchSpaceError(f"{where}: a fixed value must be null, a boolean, a number, a string or a list of them")
    kind = raw.get("type")
    if kind not in DISTRIBUTIONS:
        raise SearchSpaceError(
            f"{where} {'has no type' if kind is None else f'has unknown type {kind!r}'}: a searched parameter is "
            "a mapping with type: float | int | categorical; a fixed value is a plain scalar or list"
        )
    with warnings.catch_warnings():
        # Optuna only warns when a step does not divide the range (then shrinks it) or a choice cannot be stored
        warnings.simplefilter("error")
        try:
            return _distribution(where, kind, {key: value for key, value in raw.items() if key != "type"})
        except SearchSpaceError:
            raise
        except (TypeError, ValueError, UserWarning) as error:  # a TypeError names an unknown or missing key
            raise SearchSpaceError(f"{where}: {error}") from error


def _import(where: str, target: Any) -> Callable[..., Any]:
    if not isinstance(target, str):
        raise SearchSpaceError(f"{where}: a _target_ is a fixed import path string, got {target!r}")
    try:
        factory = hydra.utils.get_object(target)
    except ImportError as error:
        raise SearchSpaceError(f"{where}: cannot import _target_ {target!r} ({error})") from error
    if not callable(factory):
        raise SearchSpaceError(f"{where}: _target_ {target!r} is not a class or function")
    return factory


def _registered(where: str, name: str) -> str:
    """The ``_target_`` path of a registered policy name."""
    try:
        factory = resolve(name)
    except PolicyError as error:
        raise SearchSpaceError(f"{where}: {error}; or give the family a _target_ (an import path)") from error
    return f"{factory.__module__}.{factory.__qualname__}"


def _parameters(factory: Callable[..., Any]) -> dict[str, inspect.Parameter] | None:
    """The factory's keyword parameters; None when it takes ``**kwargs`` (anything goes)."""
    parameters = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return {name: p for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL}


def _check_parameter(where: str, factory: Callable[..., Any], name: str, domain: Domain | None) -> None:
    """``name`` must be a parameter of ``factory``; a value of another type than its default's is refused."""
    parameters = _parameters(factory)
    if parameters is None:
        return
    if name not in parameters:
        raise SearchSpaceError(
            f"{where}: {getattr(factory, '__qualname__', factory)} has no parameter {name!r}; its parameters: "
            f"{', '.join(parameters) or 'none'}. Keys starting with {', '.join(s + '.' for s in RUN_SECTIONS)} "
            "override the run's config instead"
        )
    default = parameters[name].default
    accepted = {int, float} if type(default) is float else {type(default)}
    values = [value for value in (domain.probes() if domain else ()) if value is not None]
    if type(default) in TYPE_NAMES and any(type(value) not in accepted for value in values):
        raise SearchSpaceError(f"{where}: {name} takes {TYPE_NAMES[type(default)]} (default {default!r}), got {values}")


def _node(config: Any, parts: list[str]) -> dict[str, Any]:
    for part in parts:
        config = config.get(part) if isinstance(config, dict) else None
    return config if isinstance(config, dict) else {}


def _check_path(where: str, skeleton: dict[str, Any], path: str, domain: Domain | None) -> None:
    """Checks ``path`` against the constructor of the nearest enclosing node with a ``_target_``."""
    parts = path.split(".")
    if parts[0] == SCHEDULE_KEY:  # every policy's rate schedule, read by the pipeline rather than the constructor
        if len(parts) != 2:
            raise SearchSpaceError(f"{where}: a schedule key is schedule.<name>, one of kind, start, end, at, steps")
        _check_parameter(where, RateSchedule, parts[1], domain)
        return
    if parts[-1] == "_target_":  # a nested node: its target must import, and its place is checked below
        if domain.searched or len(parts) == 1:
            raise SearchSpaceError(f"{where}: a nested _target_ is a fixed import path under a parameter")
        _import(where, domain.value)
        parts, domain = parts[:-1], None
    depth = max(d for d in range(len(parts)) if "_target_" in _node(skeleton, parts[:d]))
    owner = _import(where, _node(skeleton, parts[:depth])["_target_"])
    _check_parameter(where, owner, parts[depth], domain if depth == len(parts) - 1 else None)


@dataclass(frozen=True)
class Family:
    """One policy family: ``_target_``, policy key → domain and the config paths its value goes to, run keys."""

    name: str
    target: str
    policy_params: dict[str, Domain]
    destinations: dict[str, tuple[str, ...]]
    run_params: dict[str, Domain]  # run-config key → domain, applied when this family is drawn

    def policy_config(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The nested, instantiable policy config for one value per policy key."""
        config: dict[str, Any] = {"_target_": self.target}
        for key, value in values.items():
            for path in self.destinations[key]:
                *parents, leaf = path.split(".")
                node = config
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = copy.deepcopy(value)
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


def _run_key(where: str, key: Any) -> str | None:
    """``key`` in today's spelling if it is a run-config path, else None."""
    modern = modern_key(key) if isinstance(key, str) else ""
    if modern.split(".")[0] not in RUN_SECTIONS or "." not in modern:
        return None
    if modern != key:
        log.warning("%s: %s is now spelt %s", where, key, modern)
    return modern


def _destinations(where: str, raw: Any) -> tuple[Any, tuple[str, ...] | None]:
    """A parameter's entry without its ``to:`` list, and that list."""
    if not isinstance(raw, Mapping) or "to" not in raw:
        return raw, None
    to = raw["to"]
    if not isinstance(to, list | tuple) or not to or not all(isinstance(path, str) and path for path in to):
        raise SearchSpaceError(f"{where}: to is a non-empty list of dotted paths, got {to!r}")
    return {k: v for k, v in raw.items() if k != "to"}, tuple(to)


def parse_family(name: str, raw: Any) -> Family:
    """Checks one family's entry against its policies' constructors and lays out its config."""
    where = f"families.{name}"
    if not isinstance(raw, Mapping | None):
        raise SearchSpaceError(f"{where} must be a mapping of parameters (or empty), got {raw!r}")
    raw = dict(raw or {})
    target = raw.pop("_target_", None) or _registered(where, name)
    own = _parameters(_import(where, target)) or {}  # a policy parameter wins over a run section of its name
    policy, destinations, run = {}, {}, {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key:
            raise SearchSpaceError(f"{where}: parameter names must be non-empty strings, got {key!r}")
        run_key = None if key.split(".")[0] in own else _run_key(f"{where}.{key}", key)
        if run_key in run:
            raise SearchSpaceError(f"{where}.{key}: {run_key} is written twice")
        if run_key is not None:
            run[run_key] = parse_domain(f"{where}.{key}", value)
        else:
            value, to = _destinations(f"{where}.{key}", value)
            policy[key], destinations[key] = parse_domain(f"{where}.{key}", value), to or (key,)
    family = Family(name, target, policy, destinations, run)
    _check_layout(family)
    return family


def _check_layout(family: Family) -> None:
    """Every path is written once, by one key, and names a parameter of the constructor that receives it."""
    paths = sorted((path for paths in family.destinations.values() for path in paths), key=lambda p: p.split("."))
    for path, after in pairwise(paths):
        if after == path or after.startswith(f"{path}."):
            raise SearchSpaceError(f"families.{family.name}: {path} is written twice (also by {after})")
    skeleton = family.policy_config({key: domain.probes()[0] for key, domain in family.policy_params.items()})
    for key, domain in family.policy_params.items():
        for path in family.destinations[key]:
            where = f"families.{family.name}.{key}" + ("" if path == key else f" (to {path})")
            _check_path(where, skeleton, path, domain)


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
            policy, _ = build_policy(family.policy_config(values), f"families.{family.name}")
        except Exception as error:  # a factory may raise anything; all of it is a bad space
            cause = error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error
            shown = ", ".join(f"{key}={value!r}" for key, value in values.items()) or "its defaults"
            raise SearchSpaceError(f"families.{family.name}: cannot build the policy with {shown}: {cause}") from error
        if not callable(getattr(policy, "select", None)):
            raise SearchSpaceError(f"families.{family.name}: {type(policy).__name__} is not a policy (no select)")


@dataclass(frozen=True)
class Suggestion:
    """One trial's draw: the family, an instantiable (nested) policy config that replaces the run's ``policy``
    node, and run-config dotted path → value overrides (apply with ``OmegaConf.update(cfg, key, value)``)."""

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
            raise SearchSpaceError("the search space has no families: list at least one policy under families:")
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
        duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
        if duplicates:
            raise SearchSpaceError(f"parameter name {duplicates[0]!r} is used twice; rename a family or budget key")


def _parse_budget(raw: Any) -> dict[str, Domain]:
    if not isinstance(raw, Mapping):
        raise SearchSpaceError(f"budget must be a mapping of run-config keys, got {raw!r}")
    budget = {}
    for key, value in raw.items():
        run_key = _run_key(f"budget.{key}", key)
        if run_key is None:
            raise SearchSpaceError(f"budget.{key}: budget keys are run-config paths in {RUN_SECTIONS} (pretrain.steps)")
        budget[run_key] = parse_domain(f"budget.{key}", value)
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
