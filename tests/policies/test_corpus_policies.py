"""Policies that read corpus tables: PMI-Masking and informativeness masking.

Each table is checked against a brute-force count on a hand-made corpus; then what the policy masks, and bad input.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter

import pytest
import torch

from maskpolicy.policies import InformativePolicy, PMIPolicy, PolicyError, TokenBatch, WholeWordPolicy
from maskpolicy.policies import informative as informative_module
from maskpolicy.policies.pmi import _non_overlapping, _segmentations
from maskpolicy.policies.words import ngram_keys, words_of

# Word-level sentences; a word is one token (its id is the index in VOCABULARY + 10).
SENTENCES = (
    "new york city is big", "new york is old", "the city of new york", "a big city", "new york city again",
    "she saw new york city", "the old city", "a new idea", "the big idea", "new york city",
)
VOCABULARY = sorted({word for sentence in SENTENCES for word in sentence.split()})


def encode(sentences: list[str] | tuple[str, ...]) -> TokenBatch:
    """``[CLS] words [SEP]`` rows, one token per word, padded with 0."""
    width = max(len(s.split()) for s in sentences) + 2
    ids = torch.zeros(len(sentences), width, dtype=torch.long)
    word_ids = torch.full_like(ids, -1)
    for row, sentence in enumerate(sentences):
        words = [VOCABULARY.index(w) + 10 for w in sentence.split()]
        ids[row, : len(words) + 2] = torch.tensor([1, *words, 2])
        word_ids[row, 1 : len(words) + 1] = torch.arange(len(words))
    return TokenBatch(ids, ids >= 10, word_ids)


def token_id(word: str) -> int:
    return VOCABULARY.index(word) + 10


def reference_pmi(sentences, n_max: int, min_count: int) -> dict[tuple[str, ...], float]:
    """Generalised PMI of every n-gram (2..n_max) seen ≥ min_count times, by plain counting."""
    counts = {n: Counter() for n in range(1, n_max + 1)}
    for sentence in sentences:
        words = sentence.split()
        for n in counts:
            counts[n].update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    log_p = {n: {g: math.log(c / sum(counts[n].values())) for g, c in counts[n].items()} for n in counts}
    scores = {}
    for n in range(2, n_max + 1):
        for gram, count in counts[n].items():
            if count < min_count:
                continue
            best = max(sum(log_p[len(part)][part] for part in split(gram, sizes)) for sizes in _segmentations(n))
            scores[gram] = log_p[n][gram] - best
    return scores


def split(gram: tuple[str, ...], sizes: tuple[int, ...]) -> list[tuple[str, ...]]:
    parts, start = [], 0
    for size in sizes:
        parts.append(gram[start : start + size])
        start += size
    return parts


def key_of(gram: tuple[str, ...]) -> int:
    keys, valid = ngram_keys(words_of(encode([" ".join(gram)]), "test"), len(gram))
    assert valid[0, 0]
    return int(keys[0, 0])


def test_segmentations_are_every_composition_into_two_or_more_parts():
    assert _segmentations(2) == [(1, 1)]
    assert sorted(_segmentations(3)) == [(1, 1, 1), (1, 2), (2, 1)]
    assert len(_segmentations(5)) == 2**4 - 1 and all(sum(s) == 5 and len(s) >= 2 for s in _segmentations(5))


def test_pmi_fit_matches_the_brute_force_generalised_pmi():
    policy = PMIPolicy(max_n=3, min_count=2, top_k=100)
    tables = policy.fit(encode(SENTENCES))
    expected = {g: s for g, s in reference_pmi(SENTENCES, 3, 2).items() if s > 0}
    assert expected, "the fixture must contain positive-PMI n-grams"
    for n in (2, 3):
        found = dict(zip(tables[f"keys_{n}"].tolist(), tables[f"scores_{n}"].tolist(), strict=True))
        want = {key_of(g): s for g, s in expected.items() if len(g) == n}
        assert found.keys() == want.keys()
        for key, score in want.items():
            assert found[key] == pytest.approx(score, abs=1e-5)
    # "new york" (6 of 28 bigrams; "new" 7 and "york" 6 of 38 words): the plain PMI, exactly
    new_york = dict(zip(tables["keys_2"].tolist(), tables["scores_2"].tolist(), strict=True))[key_of(("new", "york"))]
    assert new_york == pytest.approx(math.log(6 / 28) - math.log(7 / 38) - math.log(6 / 38), abs=1e-5)


def test_top_k_keeps_the_highest_scores_of_each_order():
    full = PMIPolicy(max_n=2, min_count=1, top_k=1000).fit(encode(SENTENCES))
    top = PMIPolicy(max_n=2, min_count=1, top_k=3).fit(encode(SENTENCES))
    assert len(top["keys_2"]) == 3
    assert sorted(top["scores_2"].tolist()) == sorted(full["scores_2"].tolist())[-3:]
    assert torch.equal(top["keys_2"], top["keys_2"].sort().values)


def test_kept_ngrams_are_masked_as_units():
    policy = PMIPolicy(rate=0.3, max_n=3, min_count=2)
    policy.fit(encode(SENTENCES))
    batch = encode(["she saw new york city", "the city of new york", "new york city is big"] * 30)
    for seed in range(20):
        mask = policy.select(batch, torch.Generator().manual_seed(seed))
        for row, sentence in enumerate(["she saw new york city", "the city of new york", "new york city is big"] * 30):
            start = sentence.split().index("new") + 1  # +1 for [CLS]
            span = mask[row, start : start + 2]  # "new york" (or "new york city") moves together
            assert span.all() or not span.any()


def test_no_two_kept_ngrams_overlap_and_the_best_is_kept():
    generator = torch.Generator().manual_seed(0)
    score = torch.rand(64, 40, generator=generator).round(decimals=1)  # ties on purpose
    length = torch.randint(0, 6, (64, 40), generator=generator)
    score = torch.where(length > 0, score, float("-inf"))
    kept = _non_overlapping(score, length, 5)
    for row in range(64):
        spans = [(i, i + int(length[row, i])) for i in range(40) if kept[row, i]]
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))
        best = max(range(40), key=lambda i: (float(score[row, i]), int(length[row, i]), -i))
        assert length[row, best] == 0 or kept[row, best]


def test_ngrams_never_cross_a_special_token():
    batch = encode(["new york", "city is"])  # joined into [CLS] new york [SEP] city is [SEP]
    ids = torch.cat([batch.input_ids[0, :4], batch.input_ids[1, 1:]])[None]
    joined = TokenBatch(ids, ids >= 10, torch.tensor([[-1, 0, 1, -1, 2, 3, -1]]))
    _, valid = ngram_keys(words_of(joined, "test"), 2)
    assert valid.tolist() == [[True, False, True, False]]  # "york [SEP] city" is no bigram


@pytest.mark.parametrize("kwargs", [{"max_n": 1}, {"min_count": 0}, {"top_k": 0}, {"rate": 0.0}])
def test_bad_pmi_parameters_are_refused(kwargs):
    with pytest.raises(PolicyError):
        PMIPolicy(**kwargs)


def test_a_corpus_too_small_to_score_any_ngram_is_refused():
    with pytest.raises(PolicyError, match="too small to score any n-gram.*lower policy.min_count"):
        PMIPolicy(min_count=3).fit(encode(["a big city", "the old idea"]))


def test_pmi_select_before_fit_names_the_fix():
    with pytest.raises(PolicyError, match="call policy.fit"):
        PMIPolicy().select(encode(SENTENCES), torch.Generator())


def test_tables_round_trip_through_load_tables():
    fitted = PMIPolicy(max_n=3, min_count=2)
    tables = fitted.fit(encode(SENTENCES))
    loaded = PMIPolicy(max_n=3, min_count=2)
    loaded.load_tables(tables)
    batch = encode(SENTENCES * 4)
    assert torch.equal(fitted.select(batch, torch.Generator().manual_seed(1)),
                       loaded.select(batch, torch.Generator().manual_seed(1)))
    with pytest.raises(PolicyError, match="another max_n"):
        PMIPolicy(max_n=5).load_tables(tables)


# ---------------------------------------------------------------- informative


def reference_scores(sentences, window: int) -> dict[str, float]:
    """Mean over a word's occurrences of the sum of its PMI with the words within ``window``, standardised."""
    rows = [s.split() for s in sentences]
    words = Counter(w for row in rows for w in row)
    pairs = Counter(tuple(sorted((row[i], row[j]))) for row in rows for i in range(len(row))
                    for j in range(len(row)) if 0 < abs(i - j) <= window)
    n_words, n_pairs = sum(words.values()), sum(pairs.values())
    sums = {w: [] for w in words}
    for row in rows:
        for i, word in enumerate(row):
            total = 0.0
            for j, other in enumerate(row):
                if 0 < abs(i - j) <= window:
                    joint = pairs[tuple(sorted((word, other)))] / n_pairs
                    total += math.log(joint) - math.log(words[word] / n_words) - math.log(words[other] / n_words)
            sums[word].append(total)
    means = {w: statistics.fmean(v) for w, v in sums.items()}
    centre, spread = statistics.fmean(means.values()), statistics.stdev(means.values())
    return {w: (m - centre) / spread for w, m in means.items()}


def word_key(word: str) -> int:
    keys, _ = ngram_keys(words_of(encode([word]), "test"), 1)
    return int(keys[0, 0])


@pytest.mark.parametrize("window", [1, 3])
def test_informative_fit_matches_the_brute_force_scores(window):
    tables = InformativePolicy(window=window).fit(encode(SENTENCES))
    found = dict(zip(tables["keys"].tolist(), tables["scores"].tolist(), strict=True))
    expected = reference_scores(SENTENCES, window)
    assert found.keys() == {word_key(w) for w in expected}
    for word, score in expected.items():
        assert found[word_key(word)] == pytest.approx(score, abs=1e-5), word


def test_each_row_masks_its_most_informative_words_most_often():
    policy = InformativePolicy(rate=0.2, window=3, temperature=0.5)
    tables = policy.fit(encode(SENTENCES))
    score = dict(zip(tables["keys"].tolist(), tables["scores"].tolist(), strict=True))
    batch = encode(SENTENCES)
    frequency = sum(policy.select(batch, torch.Generator().manual_seed(seed)).float() for seed in range(200)) / 200
    for row, sentence in enumerate(SENTENCES):
        words = sentence.split()
        ranked = sorted(range(len(words)), key=lambda i: score[word_key(words[i])])
        assert frequency[row, ranked[-1] + 1] > frequency[row, ranked[0] + 1], sentence


def test_a_low_temperature_masks_exactly_the_top_words():
    policy = InformativePolicy(rate=0.2, window=3, temperature=1e-4)
    tables = policy.fit(encode(SENTENCES))
    score = dict(zip(tables["keys"].tolist(), tables["scores"].tolist(), strict=True))
    mask = policy.select(encode(SENTENCES), torch.Generator().manual_seed(0))
    for row, sentence in enumerate(SENTENCES):  # a budget of one word in every row
        best = max(range(len(sentence.split())), key=lambda i: score[word_key(sentence.split()[i])])
        assert mask[row].nonzero().flatten().tolist() == [best + 1], sentence


def test_a_high_temperature_approaches_whole_word_masking():
    hot = InformativePolicy(rate=0.2, window=3, temperature=1e6)
    hot.fit(encode(SENTENCES))
    batch = encode(SENTENCES)
    runs = 400
    informative = sum(hot.select(batch, torch.Generator().manual_seed(s)).float() for s in range(runs)) / runs
    whole_word = sum(WholeWordPolicy(0.2).select(batch, torch.Generator().manual_seed(s)).float()
                     for s in range(runs)) / runs
    assert (informative - whole_word).abs().max() < 0.1


@pytest.mark.parametrize("kwargs", [{"window": 0}, {"temperature": 0.0}, {"temperature": -1.0}, {"rate": 1.5}])
def test_bad_informative_parameters_are_refused(kwargs):
    with pytest.raises(PolicyError):
        InformativePolicy(**kwargs)


def test_a_corpus_of_one_word_is_refused():
    with pytest.raises(PolicyError, match="too small to score informativeness"):
        InformativePolicy().fit(encode(["city", "city"]))


def test_informative_select_before_fit_names_the_fix():
    with pytest.raises(PolicyError, match="call policy.fit"):
        InformativePolicy().select(encode(SENTENCES), torch.Generator())


def test_informative_counts_the_same_in_chunks_of_rows(monkeypatch):
    whole = InformativePolicy(window=2).fit(encode(SENTENCES))
    monkeypatch.setattr(informative_module, "ROWS_PER_CHUNK", 3)
    chunked = InformativePolicy(window=2).fit(encode(SENTENCES))
    assert torch.equal(whole["keys"], chunked["keys"])
    assert torch.allclose(whole["scores"], chunked["scores"], atol=1e-6)
