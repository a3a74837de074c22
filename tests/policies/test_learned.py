"""The learned policy: a token scorer over word features, budgeted masks by its scores."""

from __future__ import annotations

import pytest
import torch

from maskpolicy.policies import (
    FEATURES,
    PORTABLE_FEATURES,
    LearnedPolicy,
    PolicyError,
    ScorerEnsemble,
    TokenBatch,
    TokenScorer,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_scores_ignore_trailing_padding(big_batch):
    policy = LearnedPolicy()
    rows = big_batch.rows(torch.arange(4))
    padded = TokenBatch(
        torch.nn.functional.pad(rows.input_ids, (0, 7)), torch.nn.functional.pad(rows.maskable, (0, 7)),
        torch.nn.functional.pad(rows.word_ids, (0, 7), value=-1),
        torch.nn.functional.pad(rows.entity_ids, (0, 7), value=-1),
        torch.nn.functional.pad(rows.features, (0, 0, 0, 7)), rows.feature_names,
    )
    with torch.no_grad():
        short, long = policy.logits(rows), policy.logits(padded)
    assert torch.allclose(short, long[:, : short.shape[1]], atol=1e-6)
    assert torch.isinf(long[:, short.shape[1]:]).all()


def test_topk_masks_the_highest_scoring_tokens(big_batch):
    policy = LearnedPolicy(rate=0.2, sampling="topk")
    mask = policy.select(big_batch, seeded(0))
    with torch.no_grad():
        logits = policy.logits(big_batch)
    lowest_chosen = torch.where(mask, logits, float("inf")).amin(1)
    highest_left = torch.where(big_batch.maskable & ~mask, logits, float("-inf")).amax(1)
    assert (lowest_chosen >= highest_left).all()
    assert torch.equal(mask, policy.select(big_batch, seeded(99)))  # no randomness


def high_to_low_ratio(policy: LearnedPolicy, batch: TokenBatch) -> float:
    """How much more often the upper half of tokens by score is masked than the lower half (20 draws)."""
    with torch.no_grad():
        logits = policy.logits(batch)
    counts = sum(policy.select(batch, seeded(seed)).long() for seed in range(20)).float()
    high = logits > logits[batch.maskable].median()
    return float(counts[high & batch.maskable].mean() / counts[~high & batch.maskable].mean())


def test_gumbel_sampling_follows_the_scores_as_sharply_as_the_temperature_says(big_batch):
    # the untrained scorer's logits spread over ~0.2, so temperature 0.02 makes them decisive
    assert high_to_low_ratio(LearnedPolicy(rate=0.2, temperature=0.02), big_batch) > 3
    assert high_to_low_ratio(LearnedPolicy(rate=0.2, temperature=100.0), big_batch) < 1.1
    policy = LearnedPolicy(rate=0.2)
    assert not torch.equal(policy.select(big_batch, seeded(1)), policy.select(big_batch, seeded(2)))


def test_features_are_read_by_name_in_any_order(big_batch):
    policy = LearnedPolicy(features=PORTABLE_FEATURES)
    order = [FEATURES.index(name) for name in reversed(FEATURES)]
    shuffled = TokenBatch(big_batch.input_ids, big_batch.maskable, features=big_batch.features[..., order],
                          feature_names=tuple(reversed(FEATURES)))
    with torch.no_grad():
        assert torch.equal(policy.logits(big_batch), policy.logits(shuffled))


def test_logits_are_differentiable_in_the_scorer(big_batch):
    policy = LearnedPolicy()
    logits = policy.logits(big_batch.rows(torch.arange(3)))
    logits[logits.isfinite()].sum().backward()
    assert all(p.grad is not None for p in policy.scorer.parameters())


def test_the_seed_decides_the_untrained_scorer(big_batch):
    rows = big_batch.rows(torch.arange(2))
    with torch.no_grad():
        same = torch.equal(LearnedPolicy(seed=3).logits(rows), LearnedPolicy(seed=3).logits(rows))
        different = torch.equal(LearnedPolicy(seed=3).logits(rows), LearnedPolicy(seed=4).logits(rows))
    assert same and not different
    state = torch.random.get_rng_state()
    LearnedPolicy(seed=5)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone


def test_missing_features_name_the_fix(big_batch):
    bare = TokenBatch(big_batch.input_ids, big_batch.maskable)
    with pytest.raises(PolicyError, match="encode text with features"):
        LearnedPolicy().select(bare, seeded(0))
    partial = TokenBatch(big_batch.input_ids, big_batch.maskable, features=big_batch.features[..., :2],
                         feature_names=FEATURES[:2])
    with pytest.raises(PolicyError, match=r"the batch lacks \['position'"):
        LearnedPolicy().select(partial, seeded(0))


@pytest.mark.parametrize(
    ("knobs", "message"),
    [({"sampling": "softmax"}, "sampling must be 'gumbel' or 'topk'"), ({"temperature": 0}, "temperature must be > 0"),
     ({"features": ["word", "colour"]}, "unknown: colour"), ({"features": []}, "features must be distinct names"),
     ({"rate": 0}, "masking rate must be in"), ({"members": 0}, "members must be a positive number of scorers"),
     ({"members": True}, "members must be a positive number")],
)
def test_bad_settings_are_refused(knobs, message):
    with pytest.raises(PolicyError, match=message):
        LearnedPolicy(**knobs)


def test_an_ensemble_masks_by_its_members_mean_logit_and_its_first_member_is_the_single_scorer(big_batch):
    single = LearnedPolicy(features=PORTABLE_FEATURES, seed=3)
    ensemble = LearnedPolicy(features=PORTABLE_FEATURES, seed=3, members=3)
    assert isinstance(ensemble.scorer, ScorerEnsemble) and ensemble.members == 3 and single.members == 1
    first = ensemble.scorer.members[0].state_dict()
    assert all(torch.equal(value, first[key]) for key, value in single.scorer.state_dict().items())
    with torch.no_grad():
        each = ensemble.member_logits(big_batch)
        assert each.shape == (3, *big_batch.maskable.shape)
        assert torch.equal(each[0], single.logits(big_batch))
        assert torch.allclose(ensemble.logits(big_batch)[big_batch.maskable], each.mean(0)[big_batch.maskable])
        assert not torch.equal(each[1], each[0])   # members start apart
    assert single.member_logits(big_batch).shape == (1, *big_batch.maskable.shape)
    greedy = LearnedPolicy(sampling="topk", scorer=ensemble.scorer)
    assert greedy.members == 3 and greedy.features == PORTABLE_FEATURES


def test_an_ensemble_refuses_members_that_read_different_inputs():
    with pytest.raises(PolicyError, match="at least 2 members"):
        ScorerEnsemble([TokenScorer(PORTABLE_FEATURES)])
    with pytest.raises(PolicyError, match="same features and contextual states"):
        ScorerEnsemble([TokenScorer(PORTABLE_FEATURES), TokenScorer(PORTABLE_FEATURES[:2])])
