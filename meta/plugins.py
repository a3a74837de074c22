"""Makes installed plugin policies selectable as ``policy=<name>`` on the command line.

Hydra only offers the options of a config group it can find. For each policy a
third-party package registers under the ``maskpolicy.policies`` entry-point group
and for which ``conf/policy/`` has no YAML, a config node is added to Hydra's
ConfigStore: its ``_target_`` is the entry point and its keys are the
constructor's parameters with their defaults (the signature is the schema).
"""

from __future__ import annotations

import inspect
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from maskpolicy.policies.registry import plugin_entry_points

_PLAIN = (bool, int, float, str, type(None), list, tuple, dict)


def plugin_policy_node(target: str, factory: Any) -> dict[str, Any]:
    """A Hydra node for ``factory``: ``_target_`` plus each plain parameter's default."""
    node: dict[str, Any] = {"_target_": target}
    for name, parameter in inspect.signature(factory).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        default = parameter.default
        if default is parameter.empty:
            node[name] = MISSING
        elif isinstance(default, _PLAIN):
            node[name] = list(default) if isinstance(default, tuple) else default
    return node


def register_plugin_policies(config_store: ConfigStore | None = None) -> list[str]:
    """Stores a ``policy/<name>`` config for every installed plugin policy; returns the names."""
    config_store = config_store or ConfigStore.instance()
    registered = []
    for name, entry_point in sorted(plugin_entry_points().items()):
        factory = entry_point.load()
        target = entry_point.value.replace(":", ".")
        config_store.store(group="policy", name=name, node=plugin_policy_node(target, factory))
        registered.append(name)
    return registered
