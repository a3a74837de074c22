"""The plugin mechanism, end to end, with the example plugin in ``tests/plugins/maskpolicy-vowel``.

Install it with ``pip install --no-build-isolation -e tests/plugins/maskpolicy-vowel``;
it then registers ``every_nth`` under the entry-point group ``maskpolicy.policies``,
and ``test_policy_suite.py`` runs the shared invariants over it too.
"""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from maskpolicy.policies import ENTRY_POINT_GROUP, MaskingPolicy, TokenBatch, available, build, resolve

DISTRIBUTION, NAME = "maskpolicy-vowel", "every_nth"

try:
    importlib.metadata.distribution(DISTRIBUTION)
except importlib.metadata.PackageNotFoundError:
    pytest.skip(
        f"the example plugin {DISTRIBUTION!r} is not installed; "
        "run `pip install --no-build-isolation -e tests/plugins/maskpolicy-vowel`",
        allow_module_level=True,
    )


def test_plugin_declares_the_entry_point() -> None:
    points = importlib.metadata.distribution(DISTRIBUTION).entry_points
    assert [(ep.group, ep.name) for ep in points] == [(ENTRY_POINT_GROUP, NAME)]


def test_plugin_is_available() -> None:
    assert NAME in available()


def test_plugin_builds_a_working_policy() -> None:
    policy = build(NAME, rate=0.25)
    assert isinstance(policy, MaskingPolicy)
    assert type(policy).__module__ == "maskpolicy_vowel" and resolve(NAME) is type(policy)
    maskable = torch.tensor([[False] + [True] * 20 + [False], [False] + [True] * 8 + [False] * 13])
    batch = TokenBatch(torch.full((2, 22), 10), maskable)
    mask = policy.select(batch, torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (2, 22)
    assert mask.sum(1).tolist() == [5, 2]  # 25% of 20 and of 8, exact here
    assert not (mask & ~maskable).any()
    # evenly spaced: every fourth maskable token
    gaps = mask[0].nonzero().squeeze(1).diff()
    assert (gaps == 4).all()
