"""What a policy file holds, for every registered policy: its registry name, its constructor parameters, its tensors.

:func:`encode` turns a policy into a JSON node ``{"name": …, "params": …}`` and a flat dict of tensors;
:func:`decode` rebuilds it. No files here: :mod:`.artifacts` writes and reads them. The rules are the
same for built-in and plugin policies (nothing here knows a concrete policy class but the learned one,
whose sizes live in its scorer):

- **name**: the registry name (``maskpolicy.policies.available()``) whose factory is the policy's class;
  loading resolves the name through the registry, so a file never names code to import.
- **params**: each constructor parameter, read back from the attribute of the same name (the built-in
  policies keep their arguments so). JSON values stay as they are, tuples become lists, a small tensor
  (a mixture's normalised weights) a list, and a policy (a mixture's component) a nested
  ``{"policy": node}``. A parameter with no attribute is refused, not silently defaulted.
- **tensors**: a fitted policy's corpus tables (the ``tables`` attribute that
  :class:`~maskpolicy.policies.FitsCorpus` policies keep) as ``tables.<name>``; the state of every
  ``torch.nn.Module`` attribute (the learned scorer) as ``<attribute>.<key>``; a nested policy's under
  ``<param>.<index>.``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from maskpolicy.policies import FEATURE_SIZES, FitsCorpus, MaskingPolicy, PolicyError
from maskpolicy.policies.registry import BUILTIN, ENTRY_POINT_GROUP, available, resolve

TABLES = "tables"
Node = dict[str, Any]


class ArtifactError(PolicyError):
    """A policy artifact is missing, damaged, tampered with, or from an incompatible version."""


def policy_parts(policy: MaskingPolicy) -> Iterator[MaskingPolicy]:
    """The policy and, recursively, its components (a mixture's)."""
    yield policy
    for component in getattr(policy, "components", None) or ():
        yield from policy_parts(component)


def feature_names(policy: MaskingPolicy) -> tuple[str, ...]:
    """The word features any part of the policy reads (a learned scorer's ``features``), in first-seen order."""
    names: list[str] = []
    for part in policy_parts(policy):
        names += [name for name in getattr(part, "features", ()) or () if name in FEATURE_SIZES and name not in names]
    return tuple(names)


def registry_name(policy: MaskingPolicy) -> str:
    """The name the registry builds this policy's class under."""
    kind = type(policy)
    for name, factory in BUILTIN.items():
        if factory is kind:
            return name
    for name in available():
        if name not in BUILTIN and resolve(name) is kind:
            return name
    raise ArtifactError(
        f"{kind.__module__}.{kind.__qualname__} is not a registered policy, so a file cannot name it: register it "
        f"under the entry-point group {ENTRY_POINT_GROUP!r} (see tests/plugins/maskpolicy-vowel) and save it again"
    )


def learned_params(policy: Any) -> dict[str, Any]:
    """The constructor arguments that rebuild a learned policy around its weights (its sizes are its scorer's)."""
    encoder = policy.scorer.members[0].encoder
    params = {"rate": policy.rate, "features": list(policy.features), "embedding_dim": encoder.input_size,
              "hidden_size": encoder.hidden_size, "sampling": policy.sampling, "temperature": policy.temperature}
    context = getattr(policy, "context", None)
    if context is not None:  # a policy without one keeps the card of earlier versions
        params.update(context=context.as_dict(), context_dropout=policy.context_dropout)
    if policy.members > 1:  # likewise a single scorer
        params["members"] = policy.members
    return params


def context_spec(policy: MaskingPolicy) -> Any:
    """The :class:`~maskpolicy.policies.context.ContextSpec` of the first part of ``policy`` that reads contextual
    states, or None."""
    for part in policy_parts(policy):
        if getattr(part, "context", None) is not None:
            return part.context
    return None


PARAM_READERS = {"learned": learned_params}  # policies that keep a parameter somewhere else than in its attribute
NOT_SAVED = {"learned": ("seed", "scorer")}   # rebuilt from the saved tensors instead


def encode(policy: MaskingPolicy, prefix: str = "") -> tuple[Node, dict[str, Tensor]]:
    """``({"name", "params"}, tensors)`` of ``policy``; tensor names start with ``prefix``."""
    name = registry_name(policy)
    tensors: dict[str, Tensor] = {}
    if name in PARAM_READERS:
        raw = PARAM_READERS[name](policy)
    else:
        raw = _attribute_params(policy, name, NOT_SAVED.get(name, ()))
    params = {key: _plain(value, f"{prefix}{key}", tensors, f"{name}.{key}") for key, value in raw.items()}
    tables = getattr(policy, TABLES, None)
    if isinstance(policy, FitsCorpus) and tables:
        tensors.update({f"{prefix}{TABLES}.{key}": _stored(t) for key, t in tables.items()})
    for attribute, module in vars(policy).items():
        if isinstance(module, nn.Module):
            tensors.update({f"{prefix}{attribute}.{key}": _stored(t) for key, t in module.state_dict().items()})
    return {"name": name, "params": params}, tensors


def decode(node: Mapping[str, Any], tensors: Mapping[str, Tensor], prefix: str = "",
           overrides: Mapping[str, Any] | None = None, where: str = "policy file") -> MaskingPolicy:
    """The policy of a node from :func:`encode`, its tensors loaded; ``overrides`` replace top-level params."""
    name = node.get("name")
    if name not in available():
        raise ArtifactError(
            f"{where}: unknown policy {name!r}; known here: {', '.join(available())}. A plugin policy needs its "
            f"package installed (it registers under the entry-point group {ENTRY_POINT_GROUP!r})"
        )
    factory = resolve(name)
    params = {key: _from_plain(value, f"{prefix}{key}", tensors, where) for key, value in
              dict(node.get("params") or {}).items()}
    accepted = _parameters(factory)
    unknown = sorted(set(overrides or {}) - set(accepted))
    if unknown:
        raise ArtifactError(f"{where}: policy {name!r} has no parameter {', '.join(unknown)}; its parameters: "
                            f"{', '.join(accepted)}")
    params.update(overrides or {})
    try:
        policy = factory(**params)
    except (TypeError, PolicyError) as error:
        raise ArtifactError(f"{where}: the card's parameters do not build policy {name!r} ({error})") from error
    own = {key[len(prefix):]: t for key, t in tensors.items() if key.startswith(prefix)}
    nested = tuple(f"{key}." for key, value in params.items() if _holds_policy(value))
    groups: dict[str, dict[str, Tensor]] = {}
    for key, tensor in own.items():
        if not key.startswith(nested):
            group, _, rest = key.partition(".")
            groups.setdefault(group, {})[rest] = tensor
    for group, state in groups.items():
        _load_group(policy, name, group, state, where)
    return policy


def _attribute_params(policy: MaskingPolicy, name: str, skipped: tuple[str, ...]) -> dict[str, Any]:
    params = {}
    for key in _parameters(type(policy)):
        if key in skipped:
            continue
        if not hasattr(policy, key):
            raise ArtifactError(
                f"cannot save policy {name!r}: its constructor parameter {key!r} is not kept as an attribute of the "
                f"same name, so the file could not rebuild it; keep each constructor argument as an attribute "
                f"(self.{key} = {key}), as the built-in policies do"
            )
        params[key] = getattr(policy, key)
    return params


def _parameters(factory: Any) -> list[str]:
    return [key for key, p in inspect.signature(factory).parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _stored(tensor: Tensor) -> Tensor:
    return tensor.detach().cpu().contiguous()


def _plain(value: Any, path: str, tensors: dict[str, Tensor], what: str) -> Any:
    """A parameter value as JSON (nested policies as nodes, their tensors added to ``tensors``)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Tensor):  # before the policy check: a tensor has a select() method too
        if value.dim() <= 1 and value.numel() <= 4096:
            return value.tolist()
    elif isinstance(value, MaskingPolicy):
        node, inner = encode(value, f"{path}.")
        tensors.update(inner)
        return {"policy": node}
    if isinstance(value, list | tuple):
        return [_plain(item, f"{path}.{i}", tensors, what) for i, item in enumerate(value)]
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        return {key: _plain(item, f"{path}.{key}", tensors, what) for key, item in value.items()}
    raise ArtifactError(f"cannot save parameter {what} = {type(value).__name__}: a policy file holds JSON values, "
                        "policies and small tensors")


def _from_plain(value: Any, path: str, tensors: Mapping[str, Tensor], where: str) -> Any:
    if isinstance(value, dict) and set(value) == {"policy"} and isinstance(value["policy"], dict):
        return decode(value["policy"], tensors, f"{path}.", where=where)
    if isinstance(value, list):
        return [_from_plain(item, f"{path}.{i}", tensors, where) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {key: _from_plain(item, f"{path}.{key}", tensors, where) for key, item in value.items()}
    return value


def _holds_policy(value: Any) -> bool:
    if isinstance(value, Tensor):
        return False
    if isinstance(value, MaskingPolicy):
        return True
    if isinstance(value, list | tuple):
        return any(_holds_policy(item) for item in value)
    return isinstance(value, Mapping) and any(_holds_policy(item) for item in value.values())


def _load_group(policy: MaskingPolicy, name: str, group: str, state: dict[str, Tensor], where: str) -> None:
    if group == TABLES and isinstance(policy, FitsCorpus):
        try:
            policy.load_tables(state)
        except PolicyError as error:
            raise ArtifactError(f"{where}: the saved tables do not fit policy {name!r} ({error})") from error
        return
    module = getattr(policy, group, None)
    if not isinstance(module, nn.Module):
        raise ArtifactError(f"{where}: tensors {group}.* belong to nothing in policy {name!r}; the file is damaged")
    expected = {key: tuple(t.shape) for key, t in module.state_dict().items()}
    found = {key: tuple(t.shape) for key, t in state.items()}
    if expected != found:
        wrong = sorted(set(expected) ^ set(found)) or sorted(k for k in expected if expected[k] != found[k])
        raise ArtifactError(f"{where}: the tensor file does not fit the card's policy parameters (mismatched "
                            f"{group} tensors: {wrong})")
    with torch.no_grad():
        module.load_state_dict(state)
    module.eval()
