"""Behaviour specific to each policy, the selection primitives, rate checks and the registry.

The invariants every policy shares live in ``test_policy_suite.py``.
"""

from __future__ import annotations

import math
from importlib.metadata import EntryPoint

import pytest
import torch
from torch import Tensor

from maskpolicy.policies import (
    ENTRY_POINT_GROUP,
    BudgetError,
    EntityPolicy,
    MaskingPolicy,
    MixturePolicy,
    PolicyError,
    RandomPolicy,
    SpanPolicy,
    TokenBatch,
    WholeWordPolicy,
    available,
    build,
    check_rate,
    registry,
    resolve,
)
from maskpolicy.policies.ops import (
    budget,
    dense_groups,
    partition_into_segments,
    select_count,
    select_count_nonnegative,
    select_groups,
    truncated_geometric,
)

BUILTINS = ["entity", "mixture", "random", "span", "whole_word"]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def plain_batch(n_rows: int, length: int) -> TokenBatch:
    """Rows of ``length`` maskable tokens and nothing else."""
    return TokenBatch(torch.full((n_rows, length), 10), torch.ones(n_rows, length, dtype=torch.bool))


def word_batch(n_rows: int, length: int, seed: int) -> TokenBatch:
    """Rows of ``length`` maskable tokens cut into words of 1-3 tokens, numbered 0, 1, 2, …"""
    sizes = torch.randint(1, 4, (n_rows, length), generator=seeded(seed))
    first_tokens = (sizes.cumsum(1) - sizes).clamp(max=length - 1)
    starts = torch.zeros(n_rows, length, dtype=torch.bool).scatter(1, first_tokens, True)
    batch = plain_batch(n_rows, length)
    return TokenBatch(batch.input_ids, batch.maskable, starts.cumsum(1) - 1)


def run_starts(mask: Tensor) -> Tensor:
    """True at the first token of each maximal run of masked tokens."""
    return mask & ~torch.nn.functional.pad(mask[:, :-1], (1, 0), value=False)


def run_lengths(mask: Tensor) -> Tensor:
    """Lengths of the maximal runs of True in each row, concatenated."""
    ends = mask & ~torch.nn.functional.pad(mask[:, 1:], (0, 1), value=False)
    count = mask.long().cumsum(1)
    at_end = count[ends]
    at_start = (count - mask.long())[run_starts(mask)]
    return at_end - at_start


def changes_only_between_units(mask: Tensor, ids: Tensor, maskable: Tensor) -> bool:
    """True when neighbours inside one unit (equal id ≥ 0, both maskable) are masked alike."""
    same_unit = (ids[:, 1:] == ids[:, :-1]) & (ids[:, 1:] >= 0) & maskable[:, 1:] & maskable[:, :-1]
    return bool((mask[:, 1:] == mask[:, :-1])[same_unit].all())


# A small batch for golden values. Row 0: [CLS] w70 w70 w30 w90 w90 [SEP] w90 w40 w40 w40 [SEP]
# (the two 90s are separate words: a special token sits between them); entities
# {1,2}, {4,5}, {8,9,10}. Row 1: word ids reused (5, 6, 6, 5, 5, 5, 8), one entity
# {2..6}, then padding. 9 and 7 maskable tokens.
SMALL = TokenBatch(
    input_ids=torch.tensor(
        [
            [1, 11, 12, 13, 14, 15, 2, 16, 17, 18, 19, 2],
            [1, 21, 22, 23, 24, 25, 26, 27, 2, 0, 0, 0],
        ]
    ),
    maskable=torch.tensor(
        [
            [0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0],
            [0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
        ]
    ).bool(),
    word_ids=torch.tensor(
        [
            [-1, 70, 70, 30, 90, 90, -1, 90, 40, 40, 40, -1],
            [-1, 5, 6, 6, 5, 5, 5, 8, -1, -1, -1, -1],
        ]
    ),
    entity_ids=torch.tensor(
        [
            [-1, 3, 3, -1, 1, 1, -1, -1, 2, 2, 2, -1],
            [-1, -1, 4, 4, 4, 4, 4, -1, -1, -1, -1, -1],
        ]
    ),
)


def golden(policy: MaskingPolicy, seed: int = 0) -> list[list[int]]:
    return policy.select(SMALL, seeded(seed)).int().tolist()


# --------------------------------------------------------------------------- check_rate


@pytest.mark.parametrize("rate", [0, 0.0, -0.1, 1.5, 1.0000001, float("nan")])
def test_check_rate_rejects(rate: float) -> None:
    with pytest.raises(PolicyError, match="rate"):
        check_rate(rate)


@pytest.mark.parametrize("rate", [1e-6, 0.15, 0.4, 1, 1.0])
def test_check_rate_accepts(rate: float) -> None:
    assert check_rate(rate) == rate and isinstance(check_rate(rate), float)


@pytest.mark.parametrize("cls", [RandomPolicy, WholeWordPolicy, SpanPolicy, EntityPolicy])
@pytest.mark.parametrize("rate", [0, -0.1, 1.5])
def test_policies_check_their_rate(cls: type, rate: float) -> None:
    with pytest.raises(PolicyError):
        cls(rate=rate)


def test_policy_error_is_a_value_error() -> None:
    assert issubclass(PolicyError, ValueError) and issubclass(BudgetError, PolicyError)


# --------------------------------------------------------------------------- TokenBatch


def test_token_batch_validates_shapes() -> None:
    ids = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(PolicyError, match="batch, length"):
        TokenBatch(ids[0], ids[0].bool())
    with pytest.raises(PolicyError, match="maskable"):
        TokenBatch(ids, ids.clone())  # not bool
    with pytest.raises(PolicyError, match="word_ids"):
        TokenBatch(ids, ids.bool(), word_ids=ids[:, :2])
    with pytest.raises(PolicyError, match="entity_ids"):
        TokenBatch(ids, ids.bool(), entity_ids=ids[:1])


def test_token_batch_rows() -> None:
    sub = SMALL.rows(torch.tensor([1]))
    assert torch.equal(sub.input_ids, SMALL.input_ids[1:]) and torch.equal(sub.entity_ids, SMALL.entity_ids[1:])
    assert plain_batch(3, 4).rows(torch.tensor([0, 2])).word_ids is None


# --------------------------------------------------------------------------- ops


def test_budget_rounds_per_row() -> None:
    maskable = torch.arange(12).unsqueeze(0) < torch.tensor([[0], [1], [4], [10], [12]])
    assert budget(maskable, 0.25).tolist() == [0, 0, 1, 2, 3]  # 0, .25, 1, 2.5 (half to even), 3
    assert budget(maskable, 1.0).tolist() == [0, 1, 4, 10, 12]


def test_dense_groups() -> None:
    ids = torch.tensor([[5, 5, -1, 7, 7, 7, 5, 9, 9]])
    maskable = torch.tensor([[1, 1, 1, 1, 0, 1, 1, 1, 1]]).bool()
    # a run cut by a non-maskable token becomes two groups; a reused id is a new group
    assert dense_groups(ids, maskable).tolist() == [[0, 0, -1, 1, -1, 2, 3, 4, 4]]
    assert dense_groups(torch.tensor([[-1, -1]]), torch.tensor([[True, True]])).tolist() == [[-1, -1]]


def test_dense_groups_rows_are_independent() -> None:
    ids = torch.tensor([[3, 3, 4], [4, 2, 2]])
    assert dense_groups(ids, torch.ones(2, 3, dtype=torch.bool)).tolist() == [[0, 0, 1], [0, 1, 1]]


def test_select_count_smallest_keys() -> None:
    keys = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.0], [0.2, 0.4, 0.6, 0.8, 0.1]])
    maskable = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]).bool()
    chosen = select_count(keys, maskable, torch.tensor([2, 3]))
    # row 0: position 4 has the smallest key but is not maskable
    assert chosen.int().tolist() == [[0, 1, 0, 1, 0], [1, 1, 0, 0, 1]]


def test_select_count_nonnegative_makes_the_same_choice_as_select_count() -> None:
    generator = torch.Generator().manual_seed(0)
    keys = torch.rand(50, 40, generator=generator)
    maskable = torch.rand(50, 40, generator=generator) < 0.8
    count = (torch.rand(50, generator=generator) * (maskable.sum(1) + 1)).long().clamp(max=maskable.sum(1))
    count[:3] = torch.tensor([0, int(maskable[1].sum()), 0])
    chosen = select_count_nonnegative(keys, maskable, count)
    assert torch.equal(chosen, select_count(keys, maskable, count))
    assert chosen.sum(1).tolist() == count.tolist()
    assert select_count_nonnegative(keys, maskable, torch.zeros(50, dtype=torch.long)).sum() == 0


def test_select_count_is_exact_with_tied_keys() -> None:
    keys = torch.zeros(3, 8)
    maskable = torch.arange(8).expand(3, 8) % 2 == 0
    chosen = select_count(keys, maskable, torch.tensor([0, 2, 4]))
    assert chosen.sum(1).tolist() == [0, 2, 4]
    assert not (chosen & ~maskable).any()


@pytest.mark.parametrize(
    ("sizes", "target", "masked"),
    [
        ([1, 1, 1, 1, 1], 3, 3),  # unit groups: exact
        ([2, 2, 2], 2, 2),
        ([2, 2, 2], 6, 6),
        ([3], 1, 0),  # crossing lands farther than stopping (2 > 1): stop
        ([3], 2, 3),  # crossing is nearer (1 < 2): take
        ([2], 1, 2),  # a tie takes the group
        ([4], 0, 0),
        ([], 0, 0),
    ],
)
def test_select_groups_counts(sizes: list[int], target: int, masked: int) -> None:
    groups = torch.tensor([[g for g, size in enumerate(sizes) for _ in range(size)] + [-1]])
    for seed in range(5):
        chosen = select_groups(groups, torch.tensor([target]), seeded(seed))
        assert chosen.sum().item() == masked
        assert not chosen[0, -1]


def test_select_groups_stops_at_the_first_crossing_group() -> None:
    """Groups of 5 and 1 tokens, budget 2: either nothing (5 drawn first) or only the 1."""
    groups = torch.tensor([[0, 0, 0, 0, 0, 1]])
    outcomes = {tuple(select_groups(groups, torch.tensor([2]), seeded(s)).int()[0].tolist()) for s in range(40)}
    assert outcomes == {(0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 1)}


def test_select_groups_whole_groups_in_random_order() -> None:
    groups = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]]).expand(4000, 8)
    chosen = select_groups(groups, torch.full((4000,), 4), seeded(0))
    assert (chosen.sum(1) == 4).all()
    assert (chosen[:, 0::2] == chosen[:, 1::2]).all()
    assert torch.allclose(chosen.float().mean(0), torch.full((8,), 0.5), atol=0.03)


def truncated_geometric_pmf(p: float, max_length: int) -> Tensor:
    k = torch.arange(1, max_length + 1, dtype=torch.float64)
    pmf = p * (1 - p) ** (k - 1)
    return pmf / pmf.sum()


def test_truncated_geometric_mean_of_spanbert() -> None:
    pmf = truncated_geometric_pmf(0.2, 10)
    assert (pmf * torch.arange(1, 11)).sum().item() == pytest.approx(3.797, abs=1e-3)


@pytest.mark.parametrize(("p", "max_length"), [(0.2, 10), (0.5, 3), (0.05, 6)])
def test_truncated_geometric_distribution(p: float, max_length: int) -> None:
    lengths = truncated_geometric((200_000,), p, max_length, seeded(0))
    assert lengths.dtype == torch.long and lengths.shape == (200_000,)
    assert lengths.min() >= 1 and lengths.max() == max_length
    empirical = torch.bincount(lengths, minlength=max_length + 1)[1:].double() / len(lengths)
    assert torch.allclose(empirical, truncated_geometric_pmf(p, max_length), atol=0.004)


@pytest.mark.parametrize(("p", "max_length"), [(1.0, 10), (0.3, 1)])
def test_truncated_geometric_degenerate(p: float, max_length: int) -> None:
    assert (truncated_geometric((3, 50), p, max_length, seeded(0)) == 1).all()


def test_partition_into_segments() -> None:
    units = torch.tensor([[0, 1, 2, -1, 3, 4, 5], [-1, 0, 0, 1, 1, 2, -1]])
    lengths = torch.tensor([[2, 3, 5], [1, 1, 7]])
    # row 0: segments cover units {0,1}, {2,3,4}, {5,…}; row 1: {0}, {1}, {2,…}
    assert partition_into_segments(units, lengths).tolist() == [[0, 0, 1, -1, 1, 1, 2], [-1, 0, 0, 1, 1, 2, -1]]


# --------------------------------------------------------------------------- random


def test_random_golden() -> None:
    assert golden(RandomPolicy(0.25)) == [[0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]]
    assert golden(RandomPolicy(0.5, exact=False)) == [
        [0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1, 0],
        [0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0],
    ]


@pytest.mark.parametrize("rate", [0.1, 0.15, 0.3, 0.4, 0.55, 0.8])
def test_random_exact_count(rate: float) -> None:
    """Each row masks round(rate · n) tokens, n = its maskable tokens (n = 0…199)."""
    n = torch.arange(200)
    maskable = torch.arange(200).expand(200, 200) < n.unsqueeze(1)
    mask = RandomPolicy(rate).select(TokenBatch(torch.full((200, 200), 10), maskable), seeded(0))
    counts = mask.sum(1).tolist()
    for n_row, count in zip(n.tolist(), counts, strict=True):
        x = rate * n_row
        if abs(x - math.floor(x) - 0.5) > 1e-6:
            assert count == round(x), (n_row, count)
        else:  # an exact half (in decimal): either neighbour is a fair rounding
            assert count in (math.floor(x), math.ceil(x)), (n_row, count)


def test_random_exact_positions_uniform() -> None:
    """Every maskable position is equally likely, special tokens never."""
    batch = TokenBatch(
        torch.full((5000, 12), 10), (torch.arange(12) % 4 != 0).expand(5000, 12).contiguous()
    )  # 9 maskable of 12
    frequency = RandomPolicy(1 / 3).select(batch, seeded(0)).float().mean(0)
    assert torch.allclose(frequency[batch.maskable[0]], torch.full((9,), 1 / 3), atol=0.03)
    assert (frequency[~batch.maskable[0]] == 0).all()


@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_random_bernoulli_mean(rate: float) -> None:
    batch = plain_batch(400, 100)
    mask = RandomPolicy(rate, exact=False).select(batch, seeded(0))
    assert mask.float().mean().item() == pytest.approx(rate, abs=0.005)
    counts = mask.sum(1).float()
    assert counts.std().item() == pytest.approx(math.sqrt(100 * rate * (1 - rate)), rel=0.15)


# --------------------------------------------------------------------------- whole word


def test_whole_word_golden() -> None:
    # budgets 4 and 4; row 0 takes the words {4,5}, {7} (3 tokens) and stops before the
    # 3-token word (6 would overshoot by 2, stopping undershoots by 1); row 1 likewise.
    assert golden(WholeWordPolicy(0.5)) == [
        [0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0],
        [0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    ]


@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_whole_word_never_splits_a_word(rate: float, big_batch: TokenBatch) -> None:
    mask = WholeWordPolicy(rate).select(big_batch, seeded(0))
    assert changes_only_between_units(mask, big_batch.word_ids, big_batch.maskable)
    assert not (mask & (big_batch.word_ids < 0)).any()


def test_whole_word_count_within_half_a_word_of_budget(big_batch: TokenBatch) -> None:
    """The last word is taken only when that lands nearer the budget: |count − budget| ≤ 3/2."""
    mask = WholeWordPolicy(0.15).select(big_batch, seeded(1))
    assert ((mask.sum(1) - budget(big_batch.maskable, 0.15)).abs() <= 1.5).all()


def test_whole_word_ignores_word_id_numbering(big_batch: TokenBatch) -> None:
    """Only the partition into words matters, not the ids: relabelled ids give the same mask."""
    ids = big_batch.word_ids
    relabelled = [
        torch.where(ids >= 0, (ids * 7919 + 13) % 100_003, -1),  # a scrambled injective relabelling
        torch.where(ids >= 0, 10**9 - ids, -1),  # descending, huge
        torch.where(ids >= 0, dense_groups(ids, big_batch.maskable) % 2, -1),  # only 0 and 1, alternating
    ]
    reference = WholeWordPolicy(0.3).select(big_batch, seeded(2))
    for words in relabelled:
        batch = TokenBatch(big_batch.input_ids, big_batch.maskable, words, big_batch.entity_ids)
        assert torch.equal(WholeWordPolicy(0.3).select(batch, seeded(2)), reference)


def test_whole_word_needs_word_ids() -> None:
    with pytest.raises(PolicyError, match="word_ids"):
        WholeWordPolicy().select(plain_batch(2, 5), seeded(0))


# --------------------------------------------------------------------------- span


def test_span_golden() -> None:
    assert golden(SpanPolicy(0.5, p=0.3, max_length=4)) == [  # budgets 4 and 4: the span at 1-2 is cut to 1
        [0, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0],
        [0, 1, 0, 1, 0, 0, 1, 1, 0, 0, 0, 0],
    ]
    assert golden(SpanPolicy(0.5, unit="word")) == [
        [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0],
    ]


def test_span_lengths_follow_the_truncated_geometric() -> None:
    """SpanBERT's law: p=0.2, max 10, mean μ ≈ 3.80 tokens per span.

    Two chosen spans can touch and then read as one masked run. Spans are chosen
    in random order whatever their length, a fraction ≈ rate of them, so a run
    holds Geometric(1 − rate) spans: the mean run is μ / (1 − rate), and a run
    of length 1 is a lone 1-token span, with probability pmf(1) · (1 − rate).
    """
    rate = 0.15
    pmf = truncated_geometric_pmf(0.2, 10)
    mu = (pmf * torch.arange(1, 11)).sum().item()
    mask = SpanPolicy(rate, p=0.2, max_length=10).select(plain_batch(64, 2000), seeded(0))
    runs = run_lengths(mask).double()
    assert mask.float().mean().item() == pytest.approx(rate, abs=0.002)
    assert runs.mean().item() == pytest.approx(mu / (1 - rate), rel=0.03)
    assert (runs == 1).double().mean().item() == pytest.approx(pmf[0].item() * (1 - rate), abs=0.02)
    # far longer than the runs of random masking at the same rate (1 / (1 − rate) ≈ 1.18)
    random_runs = run_lengths(RandomPolicy(rate).select(plain_batch(64, 2000), seeded(0))).double()
    assert random_runs.mean().item() == pytest.approx(1 / (1 - rate), rel=0.03)


def test_span_of_length_one_is_random_exact_count(big_batch: TokenBatch) -> None:
    for policy in (SpanPolicy(0.3, p=1.0), SpanPolicy(0.3, max_length=1)):
        mask = policy.select(big_batch, seeded(0))
        assert torch.equal(mask.sum(1), budget(big_batch.maskable, 0.3))


def test_span_count_within_half_a_span_of_budget(big_batch: TokenBatch) -> None:
    mask = SpanPolicy(0.15, max_length=6).select(big_batch, seeded(3))
    assert ((mask.sum(1) - budget(big_batch.maskable, 0.15)).abs() <= 3).all()


def test_span_unit_word_masks_whole_words(big_batch: TokenBatch) -> None:
    mask = SpanPolicy(0.4, unit="word").select(big_batch, seeded(0))
    assert changes_only_between_units(mask, big_batch.word_ids, big_batch.maskable)
    assert not (mask & (big_batch.word_ids < 0)).any()


def test_span_unit_word_lengths_in_words() -> None:
    """Span lengths count words: mean run ≈ μ / (1 − rate) words (see the token-level test)."""
    rate = 0.15
    batch = word_batch(64, 2000, seed=0)
    mask = SpanPolicy(rate, unit="word").select(batch, seeded(0))
    assert changes_only_between_units(mask, batch.word_ids, batch.maskable)
    word_starts = torch.nn.functional.pad(batch.word_ids[:, 1:] != batch.word_ids[:, :-1], (1, 0), value=True)
    words_per_run = (mask & word_starts).sum().item() / run_starts(mask).sum().item()
    mu = (truncated_geometric_pmf(0.2, 10) * torch.arange(1, 11)).sum().item()
    assert words_per_run == pytest.approx(mu / (1 - rate), rel=0.04)
    assert mask.float().mean().item() == pytest.approx(rate, abs=0.005)


def test_span_never_crosses_a_special_token() -> None:
    """A special token in the middle cuts spans; it is never masked, even at rate 1."""
    batch = TokenBatch(torch.full((50, 9), 10), (torch.arange(9) != 4).expand(50, 9).contiguous())
    mask = SpanPolicy(1.0, p=0.01).select(batch, seeded(0))
    assert torch.equal(mask, batch.maskable)


@pytest.mark.parametrize("length", [4, 5, 6, 7, 8, 10, 12, 16, 24, 32, 64, 128, 256, 512])
def test_token_spans_mask_exactly_the_budget_on_rows_of_any_length(length: int) -> None:
    """The span that crosses the budget is cut to fit: round(rate · n) tokens in every row, short rows included."""
    batch = plain_batch(400, length)
    mask = SpanPolicy(0.15).select(batch, seeded(0))
    assert mask.sum(1).tolist() == [round(0.15 * length)] * 400
    assert run_starts(mask).sum(1).max().item() <= round(0.15 * length)  # spans, not scattered tokens


@pytest.mark.parametrize(
    "kwargs", [{"p": 0.0}, {"p": 1.5}, {"p": -0.2}, {"max_length": 0}, {"unit": "char"}, {"rate": 0.0}]
)
def test_span_rejects_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(PolicyError):
        SpanPolicy(**kwargs)


def test_span_unit_word_needs_word_ids() -> None:
    SpanPolicy(unit="token").select(plain_batch(2, 5), seeded(0))
    with pytest.raises(PolicyError, match="word_ids"):
        SpanPolicy(unit="word").select(plain_batch(2, 5), seeded(0))


# --------------------------------------------------------------------------- entity


def entity_batch() -> TokenBatch:
    """20 maskable tokens per row between [CLS] and [SEP]; rows hold 10, 4, 0 and 2 entity tokens."""
    n_rows, length = 4, 22
    ids = torch.full((n_rows, length), 10)
    ids[:, 0], ids[:, -1] = 1, 2
    entities = torch.full((n_rows, length), -1)
    entities[0, 1:11] = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])  # 4 entities, 10 tokens
    entities[1, 5:9] = torch.tensor([8, 8, 6, 6])  # 2 entities, 4 tokens
    entities[3, 19:21] = 4  # 1 entity, 2 tokens
    words = torch.where(ids >= 10, torch.arange(length), -1)
    return TokenBatch(ids, ids >= 10, words, entities)


def test_entity_golden() -> None:
    # budgets 4 and 4: row 0 takes {1,2}, then {8,9,10} (5, one over, is nearer than 2);
    # row 1 takes its only (5-token) entity.
    assert golden(EntityPolicy(0.5)) == [
        [0, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 0],
        [0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    ]
    # budgets 3 and 2: row 1's 5-token entity overshoots by 3 > 2, so it is not taken.
    assert golden(EntityPolicy(0.3)) == [
        [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ]


@pytest.mark.parametrize("shortfall", ["error", "allow"])
def test_entity_masks_whole_entities_only(shortfall: str, big_batch: TokenBatch) -> None:
    mask = EntityPolicy(0.4, shortfall=shortfall).select(big_batch, seeded(0))
    assert not (mask & (big_batch.entity_ids < 0)).any()
    assert changes_only_between_units(mask, big_batch.entity_ids, big_batch.maskable)
    assert mask.float().sum().item() / big_batch.maskable.sum().item() == pytest.approx(0.4, abs=0.01)


def test_entity_shortfall_error_names_the_fix() -> None:
    with pytest.raises(BudgetError, match="shortfall=top_up") as caught:
        EntityPolicy(0.25).select(entity_batch(), seeded(0))  # budget 5: rows 1, 2, 3 fall short
    message = str(caught.value)
    assert "3 of 4 sequences" in message and "shortfall=allow" in message and "lower the rate" in message
    assert isinstance(caught.value, PolicyError)


def test_entity_error_only_when_short() -> None:
    batch = entity_batch().rows(torch.tensor([0, 1]))  # budget 2: both rows have enough entity tokens
    mask = EntityPolicy(0.1).select(batch, seeded(0))
    assert mask.any(dim=1).all() and not (mask & (batch.entity_ids < 0)).any()


def test_entity_top_up_reaches_the_budget() -> None:
    batch = entity_batch()
    target = budget(batch.maskable, 0.25)  # 5 per row
    row_0_counts = set()
    for seed in range(20):
        mask = EntityPolicy(0.25, shortfall="top_up").select(batch, seeded(seed))
        counts = mask.sum(1)
        # rows 1-3 fall short: every entity token, then random non-entity tokens, exactly the budget
        assert (counts[1:] == target[1:]).all()
        assert ((batch.entity_ids[1:] >= 0) <= mask[1:]).all()
        assert not (mask & ~batch.maskable).any()
        # row 0 has enough entities: whole entities only, as near the budget as they get (the
        # crossing one is at most 4 tokens, so within 2), never topped up with other tokens
        assert not (mask[0] & (batch.entity_ids[0] < 0)).any()
        assert changes_only_between_units(mask[:1], batch.entity_ids[:1], batch.maskable[:1])
        assert (counts[0] - target[0]).abs() <= 2
        row_0_counts.add(int(counts[0]))
    assert min(row_0_counts) < target[0] < max(row_0_counts)  # stops short sometimes, and over


def test_entity_top_up_changes_nothing_without_a_shortfall(big_batch: TokenBatch) -> None:
    """Every row of the big batch has enough entity tokens: all three modes agree exactly."""
    masks = [EntityPolicy(0.4, shortfall=mode).select(big_batch, seeded(5)) for mode in ("error", "top_up", "allow")]
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])


def test_entity_allow_masks_fewer() -> None:
    batch = entity_batch()
    mask = EntityPolicy(0.25, shortfall="allow").select(batch, seeded(0))
    # the short rows get exactly their entity tokens: 4, 0 and 2 of a budget of 5
    assert torch.equal(mask[1:], (batch.entity_ids[1:] >= 0) & batch.maskable[1:])
    assert mask.sum(1)[1:].tolist() == [4, 0, 2]


def test_entity_needs_entity_ids() -> None:
    with pytest.raises(PolicyError, match="entity_ids"):
        EntityPolicy().select(plain_batch(2, 5), seeded(0))


def test_entity_rejects_unknown_shortfall() -> None:
    with pytest.raises(PolicyError, match="shortfall"):
        EntityPolicy(shortfall="ignore")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- mixture


def two_component_batch() -> TokenBatch:
    return plain_batch(4000, 20)


def test_mixture_golden() -> None:
    mixture = MixturePolicy({"random": RandomPolicy(0.5), "whole_word": WholeWordPolicy(0.5)})
    assert golden(mixture) == [[0, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]]


def component_shares(mixture: MixturePolicy, seed: int = 0) -> Tensor:
    """Shares of rows masked by ``RandomPolicy(1.0)`` (20 tokens) and ``RandomPolicy(0.1)`` (2 tokens)."""
    counts = mixture.select(two_component_batch(), seeded(seed)).sum(1)
    assert set(counts.unique().tolist()) <= {2, 20}
    return torch.stack([(counts == 20).double().mean(), (counts == 2).double().mean()])


def test_mixture_component_frequencies_match_weights() -> None:
    everything, little = RandomPolicy(1.0), RandomPolicy(0.1)
    shares = component_shares(MixturePolicy({"all": everything, "little": little}, {"all": 0.7, "little": 0.3}))
    assert shares.tolist() == pytest.approx([0.7, 0.3], abs=0.02)
    shares = component_shares(MixturePolicy([everything, little]))  # uniform by default
    assert shares.tolist() == pytest.approx([0.5, 0.5], abs=0.02)


def test_mixture_weights_mapping_or_sequence_are_equivalent() -> None:
    everything, little = RandomPolicy(1.0), RandomPolicy(0.1)
    batch = two_component_batch()
    masks = [
        MixturePolicy({"a": everything, "b": little}, {"a": 0.7, "b": 0.3}),
        MixturePolicy({"a": everything, "b": little}, {"b": 3, "a": 7}),  # order and scale do not matter
        MixturePolicy({"a": everything, "b": little}, [0.7, 0.3]),
        MixturePolicy([everything, little], [14, 6]),
    ]
    reference = masks[0].select(batch, seeded(1))
    for mixture in masks[1:]:
        assert torch.equal(mixture.select(batch, seeded(1)), reference)


def test_mixture_zero_weight_component_is_never_used() -> None:
    shares = component_shares(MixturePolicy([RandomPolicy(1.0), RandomPolicy(0.1)], [0.0, 2.0]))
    assert shares.tolist() == [0.0, 1.0]


class Recorder:
    """Masks every maskable token and remembers the row counts it was given."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def select(self, batch: TokenBatch, generator: torch.Generator) -> Tensor:
        self.rows.append(batch.input_ids.shape[0])
        return batch.maskable.clone()


def test_mixture_calls_each_component_once_with_its_rows(big_batch: TokenBatch) -> None:
    first, second, never = Recorder(), Recorder(), Recorder()
    mask = MixturePolicy([first, second, never], [1, 1, 0]).select(big_batch, seeded(0))
    assert torch.equal(mask, big_batch.maskable)
    assert len(first.rows) == len(second.rows) == 1 and never.rows == []
    assert first.rows[0] + second.rows[0] == big_batch.input_ids.shape[0]


@pytest.mark.parametrize(
    ("components", "weights", "match"),
    [
        ({}, None, "at least one"),
        ([], None, "at least one"),
        ([RandomPolicy(), SpanPolicy()], [1.0], "one non-negative weight per component"),
        ([RandomPolicy(), SpanPolicy()], [1.0, 1.0, 1.0], "one non-negative weight per component"),
        ([RandomPolicy(), SpanPolicy()], [0.5, -0.1], "non-negative"),
        ([RandomPolicy(), SpanPolicy()], [0, 0], "not all zero"),
        ({"a": RandomPolicy(), "b": SpanPolicy()}, {"a": 1.0}, "must name the components"),
        ({"a": RandomPolicy(), "b": SpanPolicy()}, {"a": 1.0, "c": 1.0}, "must name the components"),
    ],
)
def test_mixture_rejects_bad_weights(components: object, weights: object, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        MixturePolicy(components, weights)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- registry


def test_available_lists_the_builtins_sorted() -> None:
    names = available()
    assert set(BUILTINS) <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("random", RandomPolicy),
        ("whole_word", WholeWordPolicy),
        ("span", SpanPolicy),
        ("entity", EntityPolicy),
        ("mixture", MixturePolicy),
    ],
)
def test_resolve_builtins(name: str, cls: type) -> None:
    assert resolve(name) is cls


def test_build_passes_parameters() -> None:
    policy = build("span", rate=0.3, p=0.5, max_length=4, unit="word")
    assert isinstance(policy, SpanPolicy)
    assert (policy.rate, policy.p, policy.max_length, policy.unit) == (0.3, 0.5, 4, "word")
    mixture = build("mixture", components={"r": RandomPolicy()}, weights={"r": 1})
    assert isinstance(mixture, MixturePolicy)


def test_build_unknown_lists_available_names() -> None:
    with pytest.raises(PolicyError, match="unknown policy 'nope'") as caught:
        build("nope")
    message = str(caught.value)
    assert all(name in message for name in available())
    assert ENTRY_POINT_GROUP in message


def test_build_rejects_a_factory_without_select(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.BUILTIN, "broken", lambda **_: object())
    with pytest.raises(PolicyError, match="no select"):
        build("broken")


def test_plugins_are_found_and_cannot_shadow_builtins(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = [
        EntryPoint(name="random", value="somewhere:Impostor", group=ENTRY_POINT_GROUP),
        EntryPoint(name="fake_policy", value="maskpolicy.policies:RandomPolicy", group=ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep for ep in fake if ep.group == group])
    assert "fake_policy" in available() and available().count("random") == 1
    assert resolve("random") is RandomPolicy
    assert isinstance(build("fake_policy", rate=0.2), RandomPolicy)
