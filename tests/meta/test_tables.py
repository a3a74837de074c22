"""Corpus tables: fitted once per corpus and cached; a policy that remembers its rows does so once, recorded apart."""

from __future__ import annotations

import torch

from maskpolicy.meta import tables
from maskpolicy.meta.tables import fit_tables
from maskpolicy.policies import InformativePolicy, MixturePolicy, PMIPolicy, RandomPolicy

SENTENCES = [[10, 11, 12, 13], [10, 11, 14], [15, 10, 11, 12], [16, 17], [10, 11, 12, 18]] * 4


def rows() -> list[dict]:
    """``[CLS] words [SEP]`` rows, one token per word."""
    return [{"input_ids": torch.tensor([1, *words, 2]), "special": torch.tensor([True, *[False] * len(words), True]),
             "word_ids": torch.tensor([-1, *range(len(words)), -1])} for words in SENTENCES]


def test_every_part_is_fitted_then_remembers_its_rows_and_the_cache_is_read_the_second_time(tmp_path):
    def mixture():
        return MixturePolicy({"pmi": PMIPolicy(min_count=2), "informative": InformativePolicy(),
                              "random": RandomPolicy()})

    first_policy, second_policy = mixture(), mixture()
    first = fit_tables(first_policy, rows(), 0, str(tmp_path))
    second = fit_tables(second_policy, rows(), 0, str(tmp_path))
    assert [(r.kind, r.source) for r in first] == [("pmi", "built"), ("informative", "built")]
    assert [(r.kind, r.source) for r in second] == [("pmi", "cache"), ("informative", "cache")]
    assert all(r.remember_seconds is not None and r.remember_seconds >= 0 for r in first + second)
    assert all(part._memo is not None for part in second_policy.components[:2])


def test_a_corpus_over_the_memo_limit_is_not_remembered(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "REMEMBER_MAX_TOKENS", 10)
    policy = PMIPolicy(min_count=2)
    [record] = fit_tables(policy, rows(), 0, None)
    assert record.remember_seconds is None and policy._memo is None and record.source == "built"
