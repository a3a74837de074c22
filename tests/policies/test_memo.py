"""Row memos: a policy's per-row work done once for the corpus gives exactly the masks it gives without one."""

from __future__ import annotations

import pytest
import torch

from maskpolicy.policies import InformativePolicy, PMIPolicy, RemembersRows, TokenBatch
from maskpolicy.policies.memo import RowMemo, row_keys


def padded(batch: TokenBatch, width: int) -> TokenBatch:
    """The same rows cut or padded (token 0, word -1, not maskable) to ``width``."""
    extra = width - batch.input_ids.shape[1]
    if extra <= 0:
        assert not batch.maskable[:, width:].any()
        return TokenBatch(batch.input_ids[:, :width], batch.maskable[:, :width], batch.word_ids[:, :width])
    pad = torch.nn.functional.pad
    return TokenBatch(pad(batch.input_ids, (0, extra)), pad(batch.maskable, (0, extra)),
                      pad(batch.word_ids, (0, extra), value=-1))


@pytest.fixture(scope="module")
def corpus(batch_factory) -> TokenBatch:
    """120 different rows, 80 of them twice (so that n-grams repeat and PMI has something to score)."""
    rows = batch_factory(120, 48, seed=3)
    twice = torch.cat([torch.arange(120), torch.arange(80)])
    return TokenBatch(rows.input_ids[twice], rows.maskable[twice], rows.word_ids[twice])


def test_a_row_has_the_same_keys_at_any_padding_and_other_keys_when_anything_it_reads_changes(corpus):
    keys = row_keys(corpus)
    assert torch.equal(row_keys(padded(corpus, 64)), keys)
    assert len({tuple(k) for k in keys.tolist()}) == 120  # 120 different rows, 120 different keys
    assert torch.equal(keys[120:], keys[:80])
    first = int(corpus.maskable[0].nonzero()[0])
    changed = [corpus.input_ids.clone(), corpus.word_ids.clone(), corpus.maskable.clone()]
    changed[0][0, first] += 1
    changed[1][0, first] += 1000
    changed[2][0, first] = False
    for ids, words, maskable in ([changed[0], corpus.word_ids, corpus.maskable],
                                 [corpus.input_ids, changed[1], corpus.maskable],
                                 [corpus.input_ids, corpus.word_ids, changed[2]]):
        other = row_keys(TokenBatch(ids, maskable, words))
        assert (other[0] != keys[0]).all() and torch.equal(other[1:], keys[1:])
    shifted = TokenBatch(torch.roll(corpus.input_ids, 1, 1), torch.roll(corpus.maskable, 1, 1),
                         torch.roll(corpus.word_ids, 1, 1))
    assert (row_keys(shifted) != keys).all()  # positions count


def fitted(policy, corpus: TokenBatch, remember: bool):
    policy.fit(corpus)
    if remember:
        policy.remember_rows(corpus)
    return policy


@pytest.mark.parametrize("make", [lambda: PMIPolicy(0.2, max_n=3, min_count=2), lambda: InformativePolicy(0.2)],
                         ids=["pmi", "informative"])
def test_masks_are_the_same_with_the_memo_for_known_unknown_and_repadded_rows(make, corpus, batch_factory):
    plain, remembered = fitted(make(), corpus, False), fitted(make(), corpus, True)
    assert isinstance(remembered, RemembersRows)
    unseen = batch_factory(40, 48, seed=99)
    order = torch.randperm(200, generator=torch.Generator().manual_seed(0))[:40]
    mixed = TokenBatch(torch.cat([corpus.input_ids[order[:20]], unseen.input_ids[:20]]),
                       torch.cat([corpus.maskable[order[:20]], unseen.maskable[:20]]),
                       torch.cat([corpus.word_ids[order[:20]], unseen.word_ids[:20]]))
    for batch in (corpus.rows(order), padded(corpus.rows(order), 60), mixed, padded(mixed, 64)):
        for seed in range(3):
            expected = plain.select(batch, torch.Generator().manual_seed(seed))
            got = remembered.select(batch, torch.Generator().manual_seed(seed))
            assert torch.equal(got, expected) and expected.any()


def test_new_tables_forget_the_memo(corpus):
    policy = fitted(PMIPolicy(0.2, max_n=3, min_count=2), corpus, True)
    assert policy._memo is not None
    policy.load_tables(policy.tables)
    assert policy._memo is None


def test_the_memo_reads_back_what_compute_gave_each_row_and_computes_only_unknown_rows(corpus, batch_factory):
    calls = []

    def compute(batch: TokenBatch) -> dict[str, torch.Tensor]:
        calls.append(len(batch.input_ids))
        return {"first": batch.input_ids[:, :5] * 2}

    memo = RowMemo.build(corpus, compute, {"first": -7}, rows_per_chunk=64)
    assert calls == [64, 64, 64, 8]
    calls.clear()
    short = (~corpus.maskable[:, 40:].any(dim=1)).nonzero(as_tuple=True)[0][:2]
    batch = padded(corpus.rows(short), 40)  # rows that end before 40 tokens, cut there: the same rows
    expected = torch.nn.functional.pad(corpus.input_ids[short, :5] * 2, (0, 35), value=-7)
    assert len(short) == 2 and torch.equal(memo.get(batch, compute)["first"], expected) and calls == []
    unseen = batch_factory(1, 48, seed=7)
    two = TokenBatch(torch.cat([corpus.input_ids[:1], unseen.input_ids]), torch.cat([corpus.maskable[:1],
                     unseen.maskable]), torch.cat([corpus.word_ids[:1], unseen.word_ids]))
    got = memo.get(two, compute)["first"]
    assert calls == [1] and got.shape == (2, 48)
    assert got[0, :5].tolist() == (corpus.input_ids[0, :5] * 2).tolist() and (got[0, 5:] == -7).all()
    assert got[1, :5].tolist() == (unseen.input_ids[0, :5] * 2).tolist() and (got[1, 5:] == -7).all()
