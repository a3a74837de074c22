"""Generated batches thrown at every registered policy (plugins too, through the shared suite's cases).

Hypothesis draws batch sizes, lengths 1–512, padding and special-token layouts, word and entity id patterns
(contiguous runs, repeated or huge ids, none at all), feature ids and rates. Each policy
must either give a mask that keeps the shared invariants — bool and shaped like the batch, never a special or
padding token, within its budget, the same for the same generator, the batch untouched, whole words and entity
spans kept whole by the policies that mask them — or refuse with a :class:`PolicyError` that says what is wrong.
Examples are bounded and derandomised, so the run takes seconds and is the same on every machine.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_policy_suite import CASES, assert_batches_equal, clone, make_policy

from maskpolicy.policies import FEATURE_SIZES, FEATURES, PolicyError, RateSchedule, TokenBatch
from maskpolicy.policies.ops import budget, dense_groups

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow])
# policies that mask exactly round(rate · n) maskable tokens of every row
EXACT = {"random", "span", "learned"}
# policies whose units are whole words / whole entity spans
WHOLE_WORDS = {"whole_word", "span[word]", "pmi", "pmi[bigrams]", "informative"}
WHOLE_ENTITIES = {"entity", "entity[top_up]", "entity[allow]"}


def id_runs(n_rows: int, length: int, generator: torch.Generator, kind: str) -> torch.Tensor:
    """``Long[B, L]`` ids in contiguous runs of 1–6 tokens (a word's tokens, an entity's words), a third of the runs
    ``-1`` (outside any word); ``kind`` "huge" starts the ids at 2**40, "none" gives no ids at all, as a tokenizer's
    word ids or a tagger's span ids may be."""
    if kind == "none":
        return torch.full((n_rows, length), -1, dtype=torch.long)
    starts = torch.rand(n_rows, length, generator=generator) < 0.35
    starts[:, :1] = True
    run = starts.long().cumsum(dim=1)
    outside = torch.rand(n_rows, length + 1, generator=generator).gather(1, run) < 1 / 3
    offset = 2**40 if kind == "huge" else int(torch.randint(0, 8, (), generator=generator))
    return torch.where(outside, -1, run + offset)


LAYOUTS = ("bert", "random", "none", "all")


@st.composite
def batches(draw) -> TokenBatch:
    """A batch whose shape and layout Hypothesis draws and whose tensors a drawn seed fills (few draws: fast)."""
    n_rows = draw(st.integers(0, 5))
    length = draw(st.one_of(st.integers(1, 24), st.integers(25, 512)))
    layout, ids_kind = draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(["runs", "runs", "huge", "none"]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    input_ids = torch.randint(0, 1000, (n_rows, length), generator=generator)
    if layout == "bert":  # [CLS] … [SEP] then padding: specials and padding are not maskable
        real = torch.randint(0, length + 1, (n_rows, 1), generator=generator)
        positions = torch.arange(length).expand(n_rows, length)
        maskable = (positions > 0) & (positions < real - 1)
    elif layout == "random":
        maskable = torch.rand(n_rows, length, generator=generator) < draw(st.sampled_from([0.1, 0.5, 0.9]))
    else:
        maskable = torch.full((n_rows, length), layout == "all")
    word_ids = id_runs(n_rows, length, generator, ids_kind)
    if draw(st.booleans()):  # entity spans made of whole words, as a tagger gives them
        entity_ids = torch.where(word_ids >= 0, word_ids // 3, -1)
    else:
        entity_ids = id_runs(n_rows, length, generator, draw(st.sampled_from(["runs", "huge", "none"])))
    sizes = torch.tensor([FEATURE_SIZES[name] for name in FEATURES])
    features = (torch.rand(n_rows, length, len(FEATURES), generator=generator) * sizes).long()
    features = torch.where((word_ids >= 0)[..., None], features, 0)
    present = draw(st.lists(st.booleans(), min_size=3, max_size=3))  # each of the optional fields, or None
    return TokenBatch(input_ids, maskable, word_ids if present[0] else None, entity_ids if present[1] else None,
                      features if present[2] else None, FEATURES)


RATES = st.one_of(st.sampled_from([1e-6, 0.15, 0.5, 1.0]), st.floats(0.001, 1.0))


def units(ids: torch.Tensor | None, maskable: torch.Tensor) -> torch.Tensor | None:
    return None if ids is None else dense_groups(ids, maskable)


def assert_whole(mask: torch.Tensor, groups: torch.Tensor) -> None:
    """Every group is masked entirely or not at all."""
    member = groups >= 0
    index = groups.clamp(min=0)
    masked = torch.zeros_like(groups).scatter_add_(1, index, (mask & member).long())
    sizes = torch.zeros_like(groups).scatter_add_(1, index, member.long())
    assert bool(((masked == 0) | (masked == sizes)).all()), "a unit was masked in part"


def longest_run(maskable: torch.Tensor) -> int:
    """The longest run of maskable tokens in any row (no unit is longer)."""
    if maskable.numel() == 0:
        return 0
    run = torch.zeros(maskable.shape[0], dtype=torch.long)
    best = 0
    for column in maskable.T:  # a test helper, not the policy: a loop is fine here
        run = torch.where(column, run + 1, 0)
        best = max(best, int(run.max()))
    return best


@pytest.mark.parametrize("case", CASES)
@FUZZ
@given(batch=batches(), rate=RATES, seed=st.integers(0, 2**31 - 1))
def test_every_policy_keeps_the_invariants_on_generated_batches_or_says_what_is_wrong(case, batch, rate, seed):
    policy = make_policy(case, rate)
    before = clone(batch)
    try:
        mask = policy.select(batch, torch.Generator().manual_seed(seed))
    except PolicyError as error:
        assert str(error), "a PolicyError must say what is wrong"
        assert_batches_equal(batch, before)
        return
    assert_batches_equal(batch, before)  # inputs unchanged
    assert mask.dtype == torch.bool and mask.shape == batch.input_ids.shape
    assert not bool((mask & ~batch.maskable).any()), "a special or padding token was masked"
    counts, target = mask.sum(dim=1), budget(batch.maskable, getattr(policy, "rate", rate))
    if case in EXACT:
        assert torch.equal(counts, target)
    assert bool((counts <= target + longest_run(batch.maskable)).all()), "over budget by more than a unit"
    assert torch.equal(mask, policy.select(batch, torch.Generator().manual_seed(seed)))  # determinism
    if case in WHOLE_WORDS and batch.word_ids is not None:
        assert_whole(mask, units(batch.word_ids, batch.maskable))
    if case in WHOLE_ENTITIES and batch.entity_ids is not None:
        assert_whole(mask, units(batch.entity_ids, batch.maskable))


@FUZZ
@given(kind=st.sampled_from(["constant", "linear", "cosine", "step", "other"]),
       start=st.one_of(st.none(), st.floats(-1, 2), st.just(float("nan"))), end=st.one_of(st.none(), st.floats(-1, 2)),
       at=st.floats(-0.5, 1.5), steps=st.one_of(st.none(), st.integers(-2, 50)), base=st.floats(0.01, 1.0),
       total=st.integers(1, 100), step=st.integers(-5, 200))
def test_a_rate_schedule_gives_a_rate_in_range_or_refuses_its_settings(kind, start, end, at, steps, base, total,
                                                                        step):
    try:
        schedule = RateSchedule(kind, start, end, at, steps)
    except PolicyError as error:
        assert "policy.schedule." in str(error)
        return
    assert 0.0 < schedule.rate_at(step, total, base) <= 1.0


@pytest.mark.parametrize("field", ["input_ids", "maskable", "word_ids", "entity_ids", "features"])
@FUZZ
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=4),
       dtype=st.sampled_from([torch.long, torch.int32, torch.bool, torch.float32]))
def test_a_malformed_batch_is_refused_with_a_policy_error(field, shape, dtype):
    good = TokenBatch(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool),
                      torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long),
                      torch.zeros(2, 3, len(FEATURES), dtype=torch.long), FEATURES)
    fields = {f.name: getattr(good, f.name) for f in dataclasses.fields(good)}
    fields[field] = torch.zeros(shape, dtype=dtype)
    try:
        batch = TokenBatch(**fields)
    except PolicyError as error:
        assert field.split("_")[0] in str(error)
        return
    for case in ("random", "whole_word", "entity[allow]", "learned", "span[word]"):
        with contextlib.suppress(PolicyError):  # a policy may refuse the batch, but only with a PolicyError
            make_policy(case, 0.5).select(batch, torch.Generator().manual_seed(0))


def test_a_feature_id_out_of_range_is_refused_with_a_policy_error():
    features = torch.zeros(1, 4, len(FEATURES), dtype=torch.long)
    features[0, 1, FEATURES.index("shape")] = FEATURE_SIZES["shape"]  # one past the last shape id
    batch = TokenBatch(torch.ones(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool),
                       torch.arange(4).unsqueeze(0), None, features, FEATURES)
    with pytest.raises(PolicyError, match="shape"):
        make_policy("learned", 0.5).select(batch, torch.Generator().manual_seed(0))
