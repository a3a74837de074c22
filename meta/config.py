"""From Hydra configs to objects: building nodes with clear errors, plugin policies, old spellings.

Every command builds what its config names with :func:`build`; installed plugin policies
become ``policy=<name>`` choices through :func:`register_plugin_policies`; and
:func:`modern_overrides` keeps the command lines of earlier releases working.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from maskpolicy.meta.scoring.estimators import MLLError
from maskpolicy.policies import MaskingPolicy, PolicyError, RateSchedule
from maskpolicy.policies.registry import plugin_entry_points
from maskpolicy.tasks.assets import asset_path
from maskpolicy.tasks.base import TaskError

log = logging.getLogger(__name__)
_PLAIN = (bool, int, float, str, type(None), list, tuple, dict)
SCHEDULE_KEY = "schedule"  # every policy config's rate schedule: conf/policy/schedule/, taken out by build_policy
# Earlier releases called the learning options ``meta`` (meta-learning's own ``meta.meta``) and chose the
# estimator, sampler and pruner by a name key where today a config group does.
_RENAMED_KEYS = ((re.compile(r"^([+~]{0,2})meta\.meta\."), r"\1learning.meta_learning."),
                 (re.compile(r"^([+~]{0,2})meta\."), r"\1learning."),
                 (re.compile(r"^(score|search)\.(estimator|sampler|pruner)$"), r"\1/\2"),
                 (re.compile(r"^([+~]{0,2})search\.(sampler|pruner)_options\."), r"\1search.\2."))


class ConfigError(ValueError):
    """The composed configuration cannot be built into a run."""


# ``${asset:minilm}`` in a config: the folder or file where an optional real asset was installed (tasks.assets).
OmegaConf.register_new_resolver("asset", lambda key: str(asset_path(key)), replace=True)


def build(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """Instantiates a config node, turning Hydra's deep tracebacks into one clear message."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except (InstantiationException, InterpolationResolutionError) as error:  # the latter: ${asset:…} not installed
        cause = error.__cause__ or error.__context__ or error
        if isinstance(cause, PolicyError | TaskError | ConfigError | MLLError):
            raise type(cause)(f"{what}: {cause}") from error
        raise ConfigError(f"could not build the {what} from its config: {cause}") from error


def plain(node: Any) -> Any:
    """A config node as plain, JSON-ready Python containers (interpolations resolved)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def modern_key(key: str) -> str:
    """A config path in today's spelling: ``meta.*`` → ``learning.*``, ``meta.meta.*`` →
    ``learning.meta_learning.*``, ``score.estimator`` → ``score/estimator`` (a group choice), and so on."""
    for pattern, replacement in _RENAMED_KEYS:
        renamed = pattern.sub(replacement, key, count=1)
        if renamed != key:
            return renamed
    return key


def modern_overrides(arguments: Sequence[str]) -> list[str]:
    """Command-line overrides with old key spellings renamed (logged once each); other arguments unchanged."""
    renamed = []
    for argument in arguments:
        key, equals, value = argument.partition("=")
        new_key = modern_key(key) if equals and not argument.startswith("-") else key
        if new_key != key:
            log.warning("%s is now spelt %s", key, new_key)
        renamed.append(f"{new_key}{equals}{value}")
    return renamed


def plugin_policy_node(target: str, factory: Any) -> dict[str, Any]:
    """A Hydra node for ``factory``: ``_target_`` plus each plain parameter's default (the signature is the schema),
    with the rate schedule every policy config takes (``policy/schedule/``)."""
    node: dict[str, Any] = {"defaults": [{SCHEDULE_KEY: "constant"}, "_self_"], "_target_": target}
    for name, parameter in inspect.signature(factory).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        default = parameter.default
        if default is parameter.empty:
            node[name] = MISSING
        elif isinstance(default, _PLAIN):
            node[name] = list(default) if isinstance(default, tuple) else default
    return node


def expose_hydra_plugins() -> None:
    """Makes this project's Hydra plugins (``hydra/sweeper=maskpolicy_optuna``) visible to Hydra's plugin scan.

    Hydra walks the directories of the ``hydra_plugins`` namespace; an editable install (``pip install -e``)
    serves ours through an import hook instead of a directory, so its real directory is added here.
    """
    try:
        import hydra_plugins
    except ImportError:
        return
    spec = importlib.util.find_spec("hydra_plugins.maskpolicy_optuna_sweeper")
    for location in (spec.submodule_search_locations or []) if spec else []:
        parent = str(Path(location).parent)
        if parent not in list(hydra_plugins.__path__):
            hydra_plugins.__path__.append(parent)


def register_plugin_policies(config_store: ConfigStore | None = None) -> list[str]:
    """Stores a ``policy/<name>`` config for every installed plugin policy; returns the names.

    Hydra only offers the options of a group it can find, so each policy a third-party
    package registers under the ``maskpolicy.policies`` entry-point group (and that
    ``conf/policy/`` has no YAML for) gets a node in Hydra's ConfigStore.
    """
    config_store = config_store or ConfigStore.instance()
    registered = []
    for name, entry_point in sorted(plugin_entry_points().items()):
        factory = entry_point.load()
        target = entry_point.value.replace(":", ".")
        config_store.store(group="policy", name=name, node=plugin_policy_node(target, factory))
        registered.append(name)
    return registered



def build_policy(node: Any, what: str = "policy") -> tuple[MaskingPolicy, RateSchedule | None]:
    """Builds a policy config and its rate schedule (``None`` when constant).

    ``schedule`` is a key of every policy config, not a constructor argument: the top-level one
    drives the rate over pre-training; a nested one (a mixture component's) must stay constant.
    """
    container = plain(node) if isinstance(node, DictConfig) else dict(node)
    schedule = container.pop(SCHEDULE_KEY, None) or {}
    _drop_nested_schedules(container, what)
    try:
        rate_schedule = RateSchedule(**schedule) if isinstance(schedule, dict) else RateSchedule(kind=schedule)
    except TypeError as error:
        raise ConfigError(f"{what}.schedule: {error}; its keys are kind, start, end, at, steps") from error
    policy = build(OmegaConf.create(container), what)
    if not rate_schedule.varies:
        return policy, None
    if (rate_schedule.start is None or rate_schedule.end is None) and not hasattr(policy, "rate"):
        raise ConfigError(f"{what}.schedule: {type(policy).__name__} has no single rate to start or end at; set "
                          f"{what}.schedule.start and {what}.schedule.end")
    return policy, rate_schedule


def policy_file(path: str | Path) -> Any:
    """A policy config file as plain values. A shipped ``conf/policy/`` file's defaults list names only the constant
    schedule (what a missing schedule means); any other defaults entry needs Hydra to compose the file first."""
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    others = [entry for entry in (node.pop("defaults", None) or [] if isinstance(node, dict) else [])
              if entry not in ("_self_", {SCHEDULE_KEY: "constant"})]
    if others:
        raise ConfigError(f"{path} has a Hydra defaults list ({others}); compose it first (e.g. "
                          "hydra.compose('pretrain', overrides=['policy=<name>']).policy) and pass that config")
    return node


def _drop_nested_schedules(container: dict, what: str) -> None:
    for key, value in container.items():
        if isinstance(value, dict):
            nested = value.pop(SCHEDULE_KEY, None)
            kind = nested.get("kind", "constant") if isinstance(nested, dict) else (nested or "constant")
            if kind != "constant":
                raise ConfigError(f"{what}.{key}.schedule: only the whole policy's rate can follow a schedule; set "
                                  f"{what}.schedule instead")
            _drop_nested_schedules(value, f"{what}.{key}")
