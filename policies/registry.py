"""Name → policy factory, for built-ins and for installed plugins.

A third-party package adds a policy by declaring an entry point in the group
``maskpolicy.policies``, e.g. in its ``pyproject.toml``::

    [project.entry-points."maskpolicy.policies"]
    vowel = "my_package.policies:VowelPolicy"

Once installed, ``build("vowel", rate=0.2)`` works, and so does ``policy=vowel``
on any maskpolicy command line.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .base import MaskingPolicy, PolicyError
from .entity import EntityPolicy
from .informative import InformativePolicy
from .learned import LearnedPolicy
from .mixture import MixturePolicy
from .pmi import PMIPolicy
from .span import SpanPolicy
from .token import RandomPolicy
from .whole_word import WholeWordPolicy

ENTRY_POINT_GROUP = "maskpolicy.policies"

BUILTIN: dict[str, Callable[..., MaskingPolicy]] = {
    "random": RandomPolicy,
    "whole_word": WholeWordPolicy,
    "span": SpanPolicy,
    "entity": EntityPolicy,
    "mixture": MixturePolicy,
    "learned": LearnedPolicy,
    "pmi": PMIPolicy,
    "informative": InformativePolicy,
}


def plugin_entry_points() -> dict[str, EntryPoint]:
    """Installed third-party policies, by name. Built-in names cannot be shadowed."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILTIN}


def available() -> list[str]:
    """Names of every policy that :func:`build` accepts."""
    return sorted([*BUILTIN, *plugin_entry_points()])


def resolve(name: str) -> Callable[..., MaskingPolicy]:
    """The factory (usually a class) registered under ``name``."""
    if name in BUILTIN:
        return BUILTIN[name]
    plugins = plugin_entry_points()
    if name not in plugins:
        raise PolicyError(
            f"unknown policy {name!r}; available: {', '.join(available())}. Third-party policies "
            f"register under the entry-point group {ENTRY_POINT_GROUP!r}"
        )
    return plugins[name].load()


def build(name: str, **params: Any) -> MaskingPolicy:
    """Builds the policy registered under ``name`` with the given parameters."""
    policy = resolve(name)(**params)
    if not isinstance(policy, MaskingPolicy):
        raise PolicyError(f"policy {name!r} built a {type(policy).__name__}, which has no select(batch, generator)")
    return policy
