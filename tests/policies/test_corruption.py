"""Corruption: BERT's 80/10/10 replacement and seq2seq sentinel spans."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from maskpolicy.policies import (
    IGNORE_INDEX,
    PolicyError,
    RandomPolicy,
    Seq2SeqBatch,
    SpanPolicy,
    TokenBatch,
    mlm_corrupt,
    sentinel_corrupt,
)

MASK_ID, EOS, PAD = 3, 1, 0
REPLACEMENTS = torch.arange(2000, 2100)  # disjoint from the ids in the batches, so replacements are visible


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def corrupt(input_ids: Tensor, mask: Tensor, seed: int = 0, **fractions: float) -> tuple[Tensor, Tensor]:
    return mlm_corrupt(
        input_ids, mask, mask_token_id=MASK_ID, replacement_ids=REPLACEMENTS, generator=seeded(seed), **fractions
    )


@pytest.fixture(scope="module")
def large() -> tuple[Tensor, Tensor]:
    """``(input_ids, mask)``: 400 × 100 ids in 10…999 with 30% of positions selected."""
    input_ids = torch.randint(10, 1000, (400, 100), generator=seeded(100))
    mask = torch.rand(400, 100, generator=seeded(101)) < 0.3
    return input_ids, mask


# --------------------------------------------------------------------------- mlm_corrupt


def test_mlm_labels_and_unselected_inputs(large: tuple[Tensor, Tensor]) -> None:
    input_ids, mask = large
    inputs, labels = corrupt(input_ids, mask)
    assert inputs.shape == labels.shape == input_ids.shape
    assert inputs.dtype == labels.dtype == torch.long
    assert (labels[~mask] == IGNORE_INDEX).all()
    assert torch.equal(labels[mask], input_ids[mask])
    assert torch.equal(inputs[~mask], input_ids[~mask])


def test_mlm_shares_80_10_10(large: tuple[Tensor, Tensor]) -> None:
    input_ids, mask = large  # ~12,000 selected tokens
    inputs, _ = corrupt(input_ids, mask)
    chosen, original = inputs[mask], input_ids[mask]
    masked = chosen == MASK_ID
    replaced = torch.isin(chosen, REPLACEMENTS)
    unchanged = chosen == original
    assert bool((masked | replaced | unchanged).all()) and not bool((masked & replaced).any())
    shares = [x.double().mean().item() for x in (masked, replaced, unchanged)]
    assert shares == pytest.approx([0.8, 0.1, 0.1], abs=0.01)


def test_mlm_random_replacements_come_from_replacement_ids(large: tuple[Tensor, Tensor]) -> None:
    input_ids, mask = large
    inputs, _ = corrupt(input_ids, mask, mask_fraction=0.0, random_fraction=1.0)
    assert torch.isin(inputs[mask], REPLACEMENTS).all()
    # drawn uniformly: all 100 ids show up, each near 1%
    counts = torch.bincount(inputs[mask] - 2000, minlength=100).double() / mask.sum()
    assert torch.allclose(counts, torch.full((100,), 0.01, dtype=torch.float64), atol=0.005)


@pytest.mark.parametrize(
    ("mask_fraction", "random_fraction", "expected"),
    [(1.0, 0.0, "mask"), (0.0, 0.0, "unchanged"), (0.5, 0.5, "no unchanged")],
)
def test_mlm_extreme_fractions(
    large: tuple[Tensor, Tensor], mask_fraction: float, random_fraction: float, expected: str
) -> None:
    input_ids, mask = large
    inputs, labels = corrupt(input_ids, mask, mask_fraction=mask_fraction, random_fraction=random_fraction)
    assert torch.equal(labels[mask], input_ids[mask])
    if expected == "mask":
        assert (inputs[mask] == MASK_ID).all()
    elif expected == "unchanged":
        assert torch.equal(inputs, input_ids)
    else:
        assert ((inputs[mask] == MASK_ID) | torch.isin(inputs[mask], REPLACEMENTS)).all()


def test_mlm_golden() -> None:
    input_ids = torch.tensor([[11, 12, 13, 14, 15, 16], [21, 22, 23, 24, 25, 26]])
    mask = torch.ones_like(input_ids, dtype=torch.bool)
    inputs, _ = corrupt(input_ids, mask, seed=0, mask_fraction=0.5, random_fraction=0.25)
    assert inputs.tolist() == [[3, 12, 3, 3, 3, 2068], [3, 22, 3, 2019, 3, 3]]


def test_mlm_deterministic(large: tuple[Tensor, Tensor]) -> None:
    input_ids, mask = large
    first, again = corrupt(input_ids, mask, seed=5), corrupt(input_ids, mask, seed=5)
    other = corrupt(input_ids, mask, seed=6)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_mlm_does_not_mutate(large: tuple[Tensor, Tensor]) -> None:
    input_ids, mask = large
    ids_before, mask_before, replacements_before = input_ids.clone(), mask.clone(), REPLACEMENTS.clone()
    corrupt(input_ids, mask)
    assert torch.equal(input_ids, ids_before) and torch.equal(mask, mask_before)
    assert torch.equal(REPLACEMENTS, replacements_before)


@pytest.mark.parametrize(("mask_fraction", "random_fraction"), [(-0.1, 0.1), (0.8, -0.1), (0.8, 0.3), (1.5, 0.0)])
def test_mlm_rejects_bad_fractions(mask_fraction: float, random_fraction: float) -> None:
    ids = torch.tensor([[11, 12]])
    with pytest.raises(PolicyError, match="fraction"):
        corrupt(ids, ids > 0, mask_fraction=mask_fraction, random_fraction=random_fraction)


# --------------------------------------------------------------------------- sentinel_corrupt

T5_SENTINELS = torch.tensor([100, 101, 102])
BART_MASK = torch.tensor([50])

# Row 0: a b c d e f </s> <pad>, masking "b c" and "e"; row 1: a b c d </s>, masking "a" and "d".
IDS = torch.tensor([[11, 12, 13, 14, 15, 16, EOS, PAD], [21, 22, 23, 24, EOS, PAD, PAD, PAD]])
ATTENTION = (IDS != PAD).long()
MASK = torch.tensor([[0, 1, 1, 0, 1, 0, 0, 0], [1, 0, 0, 1, 0, 0, 0, 0]]).bool()


def seq2seq(mask: Tensor = MASK, sentinels: Tensor = T5_SENTINELS, **kwargs: object) -> Seq2SeqBatch:
    return sentinel_corrupt(IDS, ATTENTION, mask, sentinel_ids=sentinels, pad_token_id=PAD, **kwargs)


def test_t5_spans_target() -> None:
    out = seq2seq()
    assert out.input_ids.tolist() == [[11, 100, 14, 101, 16, EOS], [100, 22, 23, 101, EOS, PAD]]
    assert out.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]]
    assert out.labels.tolist() == [[100, 12, 13, 101, 15], [100, 21, 101, 24, -100]]


def test_t5_spans_target_with_eos() -> None:
    out = seq2seq(eos_token_id=EOS)
    assert out.input_ids.tolist() == [[11, 100, 14, 101, 16, EOS], [100, 22, 23, 101, EOS, PAD]]
    assert out.labels.tolist() == [[100, 12, 13, 101, 15, EOS], [100, 21, 101, 24, EOS, -100]]


def test_t5_full_target() -> None:
    out = seq2seq(target="full", eos_token_id=EOS)  # the full target already ends in the input's eos
    assert out.input_ids.tolist() == [[11, 100, 14, 101, 16, EOS], [100, 22, 23, 101, EOS, PAD]]
    assert out.labels.tolist() == [[11, 12, 13, 14, 15, 16, EOS, -100], [21, 22, 23, 24, EOS, -100, -100, -100]]


def test_bart_one_shared_mask_id() -> None:
    out = seq2seq(sentinels=BART_MASK, eos_token_id=EOS)
    assert out.input_ids.tolist() == [[11, 50, 14, 50, 16, EOS], [50, 22, 23, 50, EOS, PAD]]
    assert out.labels.tolist() == [[50, 12, 13, 50, 15, EOS], [50, 21, 50, 24, EOS, -100]]
    full = seq2seq(sentinels=BART_MASK, target="full")
    assert torch.equal(full.input_ids, out.input_ids)
    assert full.labels.tolist() == [[11, 12, 13, 14, 15, 16, EOS, -100], [21, 22, 23, 24, EOS, -100, -100, -100]]


def test_bart_many_spans_share_the_mask_id() -> None:
    every_other = (torch.arange(8) % 2 == 0).expand(2, 8) & ATTENTION.bool() & (IDS != EOS)
    out = seq2seq(every_other, sentinels=BART_MASK)  # 3 and 2 spans
    assert out.input_ids.tolist() == [[50, 12, 50, 14, 50, 16, EOS], [50, 22, 50, 24, EOS, PAD, PAD]]
    assert out.labels.tolist() == [[50, 11, 50, 13, 50, 15], [50, 21, 50, 23, -100, -100]]


def test_adjacent_spans_and_whole_rows() -> None:
    ids = torch.tensor([[11, 12, 13, 14], [21, 22, 23, 24], [31, 32, 33, 34]])
    mask = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]]).bool()
    out = sentinel_corrupt(ids, torch.ones_like(ids), mask, sentinel_ids=T5_SENTINELS, pad_token_id=PAD, eos_token_id=9)
    assert out.input_ids.tolist() == [[100, 13, 101, PAD], [100, PAD, PAD, PAD], [31, 32, 33, 34]]
    assert out.attention_mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert out.labels.tolist() == [
        [100, 11, 12, 101, 14, 9],
        [100, 21, 22, 23, 24, 9],
        [9, -100, -100, -100, -100, -100],
    ]


def test_nothing_masked() -> None:
    out = seq2seq(torch.zeros_like(MASK), eos_token_id=EOS)
    assert out.input_ids.tolist() == [[11, 12, 13, 14, 15, 16, EOS], [21, 22, 23, 24, EOS, PAD, PAD]]
    assert out.labels.tolist() == [[EOS], [EOS]]
    assert seq2seq(torch.zeros_like(MASK)).labels.shape == (2, 0)


def test_left_padding() -> None:
    ids = torch.tensor([[PAD, PAD, 11, 12, 13, EOS]])
    mask = torch.tensor([[0, 0, 0, 1, 0, 0]]).bool()
    out = sentinel_corrupt(ids, (ids != PAD).long(), mask, sentinel_ids=T5_SENTINELS, pad_token_id=PAD)
    assert out.input_ids.tolist() == [[11, 100, 13, EOS]]
    assert out.attention_mask.tolist() == [[1, 1, 1, 1]]
    assert out.labels.tolist() == [[100, 12]]


def test_as_many_spans_as_sentinels_is_fine_one_more_raises() -> None:
    ids = torch.arange(10, 20).unsqueeze(0)
    three = torch.tensor([[1, 0, 1, 0, 1, 0, 0, 0, 0, 0]]).bool()
    out = sentinel_corrupt(ids, torch.ones_like(ids), three, sentinel_ids=T5_SENTINELS, pad_token_id=PAD)
    assert out.input_ids.tolist() == [[100, 11, 101, 13, 102, 15, 16, 17, 18, 19]]
    four = three.clone()
    four[0, 8] = True
    with pytest.raises(PolicyError, match="4 masked spans in one sequence but only 3 sentinel"):
        sentinel_corrupt(ids, torch.ones_like(ids), four, sentinel_ids=T5_SENTINELS, pad_token_id=PAD)
    # one shared id (BART) has no limit
    sentinel_corrupt(ids, torch.ones_like(ids), four, sentinel_ids=BART_MASK, pad_token_id=PAD)


def test_rejects_unknown_target() -> None:
    with pytest.raises(PolicyError, match="target"):
        seq2seq(target="masked")


def test_sentinel_does_not_mutate() -> None:
    before = [t.clone() for t in (IDS, ATTENTION, MASK, T5_SENTINELS)]
    seq2seq(eos_token_id=EOS)
    seq2seq(target="full")
    for tensor, copy in zip((IDS, ATTENTION, MASK, T5_SENTINELS), before, strict=True):
        assert torch.equal(tensor, copy)


# --------------------------------------------------------------------------- round trip


def reinsert(encoder: list[int], target: list[int], sentinels: set[int]) -> list[int]:
    """Puts each span of ``target`` back in place of its sentinel in ``encoder``.

    ``target`` is ``s0 span0 s1 span1 …``; with distinct sentinels span k follows id k,
    with one shared id spans come in order. Either way, the i-th sentinel of the
    encoder gets the i-th span of the target, and the sentinel ids must agree.
    """
    spans: list[tuple[int, list[int]]] = []
    for token in target:
        if token in sentinels:
            spans.append((token, []))
        else:
            assert spans, "target must start with a sentinel"
            spans[-1][1].append(token)
    out: list[int] = []
    spans_left = iter(spans)
    for token in encoder:
        if token in sentinels:
            sentinel, span = next(spans_left)
            assert sentinel == token and span, "each sentinel stands for one non-empty span"
            out += span
        else:
            out.append(token)
    assert next(spans_left, None) is None, "every span is used once"
    return out


@pytest.mark.parametrize("sentinels", [torch.arange(5000, 5200), torch.tensor([5000])], ids=["t5", "bart"])
@pytest.mark.parametrize("policy", [RandomPolicy(0.3, exact=False), SpanPolicy(0.3, p=0.3)], ids=["random", "span"])
def test_round_trip(sentinels: Tensor, policy: object, batch_factory: Callable[..., TokenBatch]) -> None:
    """Re-inserting the target spans at the sentinels gives back every original (real) token."""
    batch = batch_factory(64, 60, seed=3)
    input_ids, attention = batch.input_ids, (batch.input_ids != PAD).long()
    for seed in range(3):
        mask = policy.select(batch, seeded(seed))  # type: ignore[attr-defined]
        out = sentinel_corrupt(input_ids, attention, mask, sentinel_ids=sentinels, pad_token_id=PAD, eos_token_id=EOS)
        full = sentinel_corrupt(input_ids, attention, mask, sentinel_ids=sentinels, pad_token_id=PAD, target="full")
        assert torch.equal(out.input_ids, full.input_ids) and torch.equal(out.attention_mask, full.attention_mask)
        assert torch.equal(full.labels, input_ids.masked_fill(attention == 0, IGNORE_INDEX))
        for row in range(len(input_ids)):
            encoder = out.input_ids[row][out.attention_mask[row].bool()].tolist()
            assert (out.input_ids[row][~out.attention_mask[row].bool()] == PAD).all()
            labels = out.labels[row][out.labels[row] != IGNORE_INDEX].tolist()
            assert labels[-1] == EOS and (out.labels[row][len(labels) :] == IGNORE_INDEX).all()
            original = input_ids[row][attention[row].bool()].tolist()
            assert reinsert(encoder, labels[:-1], set(sentinels.tolist())) == original
