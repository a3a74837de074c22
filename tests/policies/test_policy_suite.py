"""One test suite for every registered masking policy (cf. Optuna's BasicSamplerTestCase).

The cases are every name in :func:`maskpolicy.policies.available` — built-ins and
installed plugins alike — plus a few variants of the built-ins. A policy needing
more than a rate gets a factory below; any other name is built with ``rate=`` only,
so a newly installed plugin is tested with no edit here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from maskpolicy.policies import (
    EntityPolicy,
    InformativePolicy,
    MaskingPolicy,
    MixturePolicy,
    PMIPolicy,
    RandomPolicy,
    SpanPolicy,
    TokenBatch,
    WholeWordPolicy,
    available,
    build,
)
from maskpolicy.policies.features import FEATURES

Factory = Callable[[float], MaskingPolicy]

# Names (from the registry or extra variants) whose policies need more than ``rate``.
FACTORIES: dict[str, Factory] = {
    "mixture": lambda rate: MixturePolicy(
        {"random": RandomPolicy(rate), "span": SpanPolicy(rate), "whole_word": WholeWordPolicy(rate)},
        weights={"random": 0.5, "span": 0.3, "whole_word": 0.2},
    ),
    "random[bernoulli]": lambda rate: RandomPolicy(rate, exact=False),
    "span[word]": lambda rate: SpanPolicy(rate, unit="word"),
    "entity[top_up]": lambda rate: EntityPolicy(rate, shortfall="top_up"),
    "entity[allow]": lambda rate: EntityPolicy(rate, shortfall="allow"),
    "mixture[entity+random]": lambda rate: MixturePolicy([EntityPolicy(rate), RandomPolicy(rate)], [0.5, 0.5]),
    "pmi": lambda rate: fitted(PMIPolicy(rate)),
    "pmi[bigrams]": lambda rate: fitted(PMIPolicy(rate, max_n=2)),
    "informative": lambda rate: fitted(InformativePolicy(rate)),
}


def phrase_corpus(n_rows: int = 40, seed: int = 0) -> TokenBatch:
    """Rows of the same twelve three-word phrases (one or two tokens a word) in shuffled order, so n-grams recur."""
    generator = torch.Generator().manual_seed(seed)
    phrases = torch.randint(10, 1000, (12, 3, 2), generator=generator)
    sizes = torch.randint(1, 3, (12, 3), generator=generator)
    rows, words = [], []
    for _ in range(n_rows):
        tokens, word_ids = [1], [-1]
        for phrase in torch.randperm(12, generator=generator).tolist():
            for word in range(3):
                size = int(sizes[phrase, word])
                tokens += phrases[phrase, word, :size].tolist()
                word_ids += [len(set(word_ids)) - 1] * size
        rows.append([*tokens, 2])
        words.append([*word_ids, -1])
    input_ids = torch.tensor(rows)
    return TokenBatch(input_ids, input_ids >= 10, torch.tensor(words))


def fitted(policy):
    """A policy that reads corpus tables, fitted on :func:`phrase_corpus`."""
    policy.fit(phrase_corpus())
    return policy
CASES = sorted({*available(), *FACTORIES})


def make_policy(case: str, rate: float) -> MaskingPolicy:
    if case in FACTORIES:
        return FACTORIES[case](rate)
    return build(case, rate=rate)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def featured(input_ids: torch.Tensor, maskable: torch.Tensor, word_ids: torch.Tensor, entity_ids: torch.Tensor
             ) -> TokenBatch:
    """A hand-made batch with feature 1 in every channel at word tokens, 0 elsewhere."""
    features = (word_ids >= 0).long()[..., None].expand(*word_ids.shape, len(FEATURES)).clone()
    return TokenBatch(input_ids, maskable, word_ids, entity_ids, features, FEATURES)


def clone(batch: TokenBatch) -> TokenBatch:
    """A deep copy: every tensor field cloned."""
    fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    return dataclasses.replace(batch, **{name: t.clone() for name, t in fields.items() if isinstance(t, torch.Tensor)})


def assert_batches_equal(a: TokenBatch, b: TokenBatch) -> None:
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        assert (x is None) == (y is None), field.name
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and torch.equal(x, y), f"{field.name} was modified"


def full_coverage_batch(length: int, n_rows: int = 3) -> TokenBatch:
    """Rows where every maskable token is inside a word and an entity (so rate 1 masks all)."""
    input_ids = torch.full((n_rows, length), 20)
    input_ids[:, 0] = 1
    input_ids[1:, -1] = 0  # padding
    maskable = input_ids >= 10
    positions = torch.arange(length).expand(n_rows, length)
    word_ids = torch.where(maskable, positions // 2, -1)
    entity_ids = torch.where(maskable, positions // 5, -1)
    return featured(input_ids, maskable, word_ids, entity_ids)


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest) -> str:
    return request.param


def test_is_a_masking_policy(case: str) -> None:
    assert isinstance(make_policy(case, 0.15), MaskingPolicy)


def test_shape_and_dtype(case: str, big_batch: TokenBatch) -> None:
    mask = make_policy(case, 0.15).select(big_batch, seeded(0))
    assert mask.dtype == torch.bool
    assert mask.shape == big_batch.input_ids.shape
    assert mask.any()


@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_never_selects_special_or_padding(case: str, rate: float, big_batch: TokenBatch) -> None:
    mask = make_policy(case, rate).select(big_batch, seeded(1))
    assert not (mask & ~big_batch.maskable).any()


@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_rate_honoured(case: str, rate: float, big_batch: TokenBatch) -> None:
    """Over ~36k maskable tokens the masked share is within 0.01 of the rate."""
    mask = make_policy(case, rate).select(big_batch, seeded(2))
    share = mask.sum().item() / big_batch.maskable.sum().item()
    assert share == pytest.approx(rate, abs=0.01)


def test_rate_one_masks_every_maskable_token(case: str) -> None:
    batch = full_coverage_batch(12)
    mask = make_policy(case, 1.0).select(batch, seeded(3))
    assert torch.equal(mask, batch.maskable)


def test_deterministic_for_a_seed(case: str, big_batch: TokenBatch) -> None:
    policy = make_policy(case, 0.15)
    first = policy.select(big_batch, seeded(4))
    again = policy.select(big_batch, seeded(4))
    rebuilt = make_policy(case, 0.15).select(big_batch, seeded(4))
    assert torch.equal(first, again)
    assert torch.equal(first, rebuilt)


def test_different_seed_gives_different_mask(case: str, big_batch: TokenBatch) -> None:
    policy = make_policy(case, 0.15)
    assert not torch.equal(policy.select(big_batch, seeded(5)), policy.select(big_batch, seeded(6)))


def test_generator_advances(case: str, big_batch: TokenBatch) -> None:
    """All randomness comes from the generator: two calls on one generator differ."""
    policy, generator = make_policy(case, 0.15), seeded(7)
    assert not torch.equal(policy.select(big_batch, generator), policy.select(big_batch, generator))


def test_inputs_not_mutated(case: str, big_batch: TokenBatch) -> None:
    before = clone(big_batch)
    make_policy(case, 0.4).select(big_batch, seeded(8))
    assert_batches_equal(big_batch, before)


def test_rows_without_maskable_tokens_give_no_mask(case: str) -> None:
    input_ids = torch.tensor([[1, 2, 0, 0, 0], [1, 2, 2, 0, 0], [1, 2, 2, 2, 2]])
    no_ids = torch.full_like(input_ids, -1)
    batch = featured(input_ids, torch.zeros_like(input_ids, dtype=torch.bool), no_ids, no_ids.clone())
    mask = make_policy(case, 0.4).select(batch, seeded(9))
    assert mask.shape == input_ids.shape and mask.dtype == torch.bool
    assert not mask.any()


def test_some_rows_without_maskable_tokens(case: str, batch_factory: Callable[..., TokenBatch]) -> None:
    """An empty row next to ordinary rows stays unmasked; the others are masked."""
    batch = batch_factory(4, 40, seed=10)
    keep = torch.tensor([True, False, True, False]).unsqueeze(1)
    batch = dataclasses.replace(batch, maskable=batch.maskable & keep)
    mask = make_policy(case, 0.4).select(batch, seeded(10))
    assert not mask[~keep.squeeze(1)].any()
    assert not (mask & ~batch.maskable).any()
    assert mask[keep.squeeze(1)].any(dim=1).all()


def test_empty_batch(case: str) -> None:
    empty = torch.zeros((0, 6), dtype=torch.long)
    batch = featured(empty, empty.bool(), empty.clone(), empty.clone())
    mask = make_policy(case, 0.15).select(batch, seeded(11))
    assert mask.shape == (0, 6) and mask.dtype == torch.bool


def test_batch_of_one_row(case: str, big_batch: TokenBatch) -> None:
    row = big_batch.rows(torch.tensor([0]))
    policy = make_policy(case, 0.4)
    mask = policy.select(row, seeded(12))
    assert mask.shape == row.input_ids.shape and mask.dtype == torch.bool
    assert mask.any() and not (mask & ~row.maskable).any()
    assert torch.equal(mask, policy.select(row, seeded(12)))
    assert 0.2 < mask.sum().item() / row.maskable.sum().item() < 0.6


@pytest.mark.parametrize("rate", [0.15, 0.4, 1.0])
def test_length_one_sequences(case: str, rate: float) -> None:
    # One maskable token (its own word and entity), one special token, one padding token.
    batch = featured(
        torch.tensor([[42], [1], [0]]),
        torch.tensor([[True], [False], [False]]),
        torch.tensor([[5], [-1], [-1]]),
        torch.tensor([[9], [-1], [-1]]),
    )
    mask = make_policy(case, rate).select(batch, seeded(13))
    assert mask.shape == (3, 1) and mask.dtype == torch.bool
    assert mask[1:].tolist() == [[False], [False]]
    if rate == 1.0:
        assert mask[0].item()
