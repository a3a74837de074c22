"""A learned policy that reads contextual states: its settings, its scorer, and what it refuses.

The states themselves come from the ``tasks`` side (``tests/meta/test_context_states.py``); here they are
hand-made tensors, so the policy is tested as the pure function of its inputs that it is.
"""

from __future__ import annotations

import pytest
import torch

from maskpolicy.policies import LearnedPolicy, PolicyError, TokenBatch
from maskpolicy.policies.context import ContextSpec

DIM = 6


def batch(states: torch.Tensor | None, length: int = 7, rows: int = 2) -> TokenBatch:
    ids = torch.arange(rows * length).reshape(rows, length) + 5
    maskable = torch.ones(rows, length, dtype=torch.bool)
    maskable[:, 0] = maskable[:, -1] = False
    features = torch.ones(rows, length, 6, dtype=torch.long)
    names = ("shape", "position", "entity", "subword", "repeats", "rarity")
    return TokenBatch(ids, maskable, features=features, feature_names=names, states=states)


def states(rows: int = 2, length: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, length, DIM, generator=torch.Generator().manual_seed(seed))


def policy(**options) -> LearnedPolicy:
    return LearnedPolicy(0.3, context={"encoder": "minilm", "layers": [-1, -3], "unit": "word", "dim": DIM},
                         **options)


def test_a_context_spec_reads_a_config_mapping_and_writes_json_values():
    spec = ContextSpec.of({"encoder": "some/folder", "layers": [-1, -3], "unit": "token", "dim": 768})
    assert spec == ContextSpec("some/folder", (-1, -3), "token", 768)
    assert spec.as_dict() == {"encoder": "some/folder", "layers": [-1, -3], "unit": "token", "dim": 768,
                              "weights_sha256": None}
    assert ContextSpec.of(None) is None and ContextSpec.of(spec) is spec
    assert ContextSpec.of({"layers": -2}).layers == (-2,)


@pytest.mark.parametrize(("fields", "message"), [
    ({"encoder": ""}, "context.encoder must name an encoder"),
    ({"layers": []}, "context.layers must be a non-empty list"),
    ({"layers": [1.5]}, "context.layers must be a non-empty list"),
    ({"unit": "span"}, "context.unit must be one of token, word"),
    ({"dim": 0}, "context.dim must be a positive channel count"),
    ({"weights_sha256": "abc"}, "context.weights_sha256 must be 64 lower-case hex digits"),
    ({"pooling": "max"}, r"unknown context setting\(s\) pooling; the settings are encoder, layers"),
])
def test_bad_context_settings_name_the_setting_and_the_choices(fields, message):
    with pytest.raises(PolicyError, match=message):
        ContextSpec.of(fields)


def test_a_context_that_is_not_a_mapping_is_refused():
    with pytest.raises(PolicyError, match="must be a mapping .* or null, got str"):
        LearnedPolicy(0.3, context="minilm")


def test_the_policy_reads_its_states_and_its_masks_follow_them():
    reader = policy(seed=1)
    reader.scorer.eval()
    first, second = states(seed=0), states(seed=1)
    one = reader.logits(batch(first))
    assert torch.equal(one, reader.logits(batch(first.clone())))  # a function of its inputs
    assert not torch.allclose(one[:, 1:-1], reader.logits(batch(second))[:, 1:-1])  # the states matter
    assert torch.isinf(one[:, 0]).all() and torch.isinf(one[:, -1]).all()  # never where not maskable
    mask = reader.select(batch(first), torch.Generator().manual_seed(0))
    assert mask.sum(1).tolist() == [2, 2]  # round(0.3 · 5) per row
    assert torch.equal(mask, reader.select(batch(first), torch.Generator().manual_seed(0)))


def test_a_policy_with_a_context_refuses_a_batch_without_states_or_of_another_width():
    reader = policy()
    with pytest.raises(PolicyError, match="reads contextual states of encoder 'minilm' .* but this batch has none"):
        reader.logits(batch(None))
    with pytest.raises(PolicyError, match=f"reads {DIM} contextual channels per token .* the batch's states have 4"):
        reader.logits(batch(torch.zeros(2, 7, 4)))


def test_a_policy_without_a_context_ignores_states():
    plain = LearnedPolicy(0.3, seed=2)
    plain.scorer.eval()
    assert torch.equal(plain.logits(batch(None)), plain.logits(batch(states())))
    assert plain.scorer.context_dim == 0 and plain.context is None


def test_a_scorer_with_a_context_norms_drops_out_and_projects_its_states():
    reader = policy(seed=4)
    assert reader.scorer.context_dim == DIM
    assert reader.scorer.context[0].normalized_shape == (DIM,) and reader.scorer.context[2].out_features == 32
    assert reader.context_dropout == pytest.approx(0.1)


def test_a_scorer_and_a_context_of_other_widths_are_refused():
    other = LearnedPolicy(0.3, seed=0).scorer
    with pytest.raises(PolicyError, match="the scorer reads 0 contextual channels but the policy's context gives 6"):
        policy(scorer=other)
    with pytest.raises(PolicyError, match=r"context_dropout must be in \[0, 1\)"):
        policy(context_dropout=1.0)


def test_token_batch_states_must_be_float_and_shaped_like_the_ids():
    with pytest.raises(PolicyError, match="states must be a float tensor"):
        batch(torch.zeros(2, 6, DIM))
    with pytest.raises(PolicyError, match="states must be a float tensor"):
        batch(torch.zeros(2, 7, DIM, dtype=torch.long))
    sub = batch(states()).rows(torch.tensor([1]))
    assert torch.equal(sub.states, states()[1:])


def test_half_precision_states_score_like_their_float_values():
    reader = policy(seed=3)
    reader.scorer.eval()
    half = states().half()
    assert torch.allclose(reader.logits(batch(half)), reader.logits(batch(half.float())))
