"""maskpolicy: find the best way to mask text for intermediate pre-training, and use it in your own training.

``from maskpolicy import MaskingCollator, load_policy, save_policy`` — the names a user reaches for first:

- :class:`MaskingCollator` (``maskpolicy.meta.collator``): any policy as a Hugging Face data collator;
- :func:`load_policy` / :func:`save_policy` (``maskpolicy.meta.learning.artifacts``): portable policy folders.

Why this folder exists: the project's four rooms install as ``maskpolicy.policies``, ``maskpolicy.tasks``,
``maskpolicy.meta`` and ``maskpolicy.conf`` (``[tool.setuptools.package-dir]`` in ``pyproject.toml``), and
until now ``maskpolicy`` itself was only a namespace over them. A top-level import needs a module for the
name ``maskpolicy``, and no room can be it: ``policies`` may import neither ``tasks`` nor ``meta``, and a
room mapped to ``maskpolicy`` would put its modules beside the rooms. So this folder is mapped to the package
``maskpolicy`` and holds nothing but this file. Its names resolve lazily (PEP 562), so ``import
maskpolicy.policies`` still loads torch only, and the rooms never import from here (``tests/test_layout.py``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MaskingCollator": "maskpolicy.meta.collator",
    "CollatorError": "maskpolicy.meta.collator",
    "load_policy": "maskpolicy.meta.learning.artifacts",
    "save_policy": "maskpolicy.meta.learning.artifacts",
    "read_card": "maskpolicy.meta.learning.artifacts",
    "ArtifactError": "maskpolicy.meta.learning.artifacts",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'maskpolicy' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*_EXPORTS, "conf", "meta", "policies", "tasks"})
