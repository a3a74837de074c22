from __future__ import annotations

from collections import Counter

import pytest
import torch

from maskpolicy.policies import PolicyError
from maskpolicy.policies.features import FEATURE_SIZES, FEATURES, FUNCTION_WORDS, PORTABLE_FEATURES, PUNCTUATION_MARKS
from maskpolicy.tasks.base import TaskError
from maskpolicy.tasks.text.encoding import encode_documents, pad_rows, token_batch
from maskpolicy.tasks.text.features import (
    FeatureSpec,
    frequency_bucket,
    function_id,
    rarity_bucket,
    repeats_bucket,
    suffix_hash,
    word_counts,
    word_hash,
    word_shape,
)
from maskpolicy.tasks.text.tokenization import train_wordpiece

DOCUMENT = "Ada Quill was born in Paris in 1987, near B2. PARIS and paris were quiet."
SPANS = ((0, 9), (22, 27))  # "Ada Quill", "Paris"
COUNTS = Counter({"paris": 3, "in": 8, "was": 1, "ada": 40_000})
WORDS = ["Ada", "Quill", "was", "born", "in", "Paris", "in", "1987", ",", "near", "B2", ".",
         "PARIS", "and", "paris", "were", "quiet", "."]
SHAPES = [2, 2, 1, 1, 1, 2, 1, 4, 6, 1, 5, 6, 3, 1, 1, 1, 1, 6]
POSITIONS = [1, 2, 3, 4, 5, 5, 6, 6, 6, 7, 7, 7, 1, 2, 3, 4, 5, 5]
ENTITIES = [1, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
FREQUENCIES = [15, 1, 1, 1, 4, 2, 4, 1, 1, 1, 1, 1, 2, 1, 2, 1, 1, 1]


@pytest.fixture(scope="module")
def spelling_tokenizer():
    """A WordPiece tokenizer with characters only: every word of two or more characters splits into tokens."""
    return train_wordpiece([DOCUMENT], vocab_size=1)


def encode_one(tokenizer, spec: FeatureSpec, max_length: int = 128) -> dict:
    return encode_documents([DOCUMENT], [SPANS], tokenizer, max_length, features=spec)[0]


def test_word_counts_lower_case_and_split_off_punctuation():
    counts = word_counts(["Paris, paris!", "B2's x_y"])
    assert counts == Counter({"paris": 2, ",": 1, "!": 1, "b2": 1, "'": 1, "s": 1, "x": 1, "_": 1, "y": 1})


def test_word_hash_is_pinned_and_ignores_case():
    assert word_hash("paris") == word_hash("Paris") == word_hash("PARIS") == 3909
    assert word_hash(".") == 3999


@pytest.mark.parametrize(("word", "shape"), [("paris", 1), ("Paris", 2), ("A", 2), ("PARIS", 3), ("1987", 4),
                                             ("B2", 5), (",", 6), ("...", 6), ("iPhone", 7), ("don't", 7)])
def test_word_shape_classes(word, shape):
    assert word_shape(word) == shape


def test_frequency_buckets_are_log2_capped_with_unseen_words_in_the_first():
    assert [frequency_bucket(c) for c in (0, 1, 2, 3, 4, 7, 8, 2**14, 2**20)] == [1, 1, 2, 2, 3, 3, 4, 15, 15]


def test_rarity_is_a_share_of_the_corpus_so_corpus_size_does_not_move_it():
    assert rarity_bucket(0, 100) == rarity_bucket(1, 2**20) == 1  # unseen, and one in a million: the rarest
    assert rarity_bucket(1, 2**10) == 11 and rarity_bucket(2**10, 2**10) == 15  # 20 - 10 = 10 → id 11; capped at 15
    assert rarity_bucket(3, 3_000) == rarity_bucket(30, 30_000) == rarity_bucket(300, 300_000)
    assert frequency_bucket(3) != frequency_bucket(300)  # raw counts move with the corpus size


def test_repeats_count_a_words_occurrences_in_its_document_ignoring_case():
    assert repeats_bucket(["The", "cat", "the", "THE", "the", "dog", "cat"]).tolist() == [4, 2, 4, 4, 4, 1, 2]


def test_function_ids_name_closed_class_words_and_punctuation_and_lump_content_words():
    assert function_id("The") == function_id("the") == 2 + FUNCTION_WORDS.index("the") == 4
    assert function_id(",") == 2 + len(FUNCTION_WORDS) and function_id("Paris") == function_id("1987") == 1
    assert max(function_id(w) for w in (*FUNCTION_WORDS, *PUNCTUATION_MARKS)) == FEATURE_SIZES["function"] - 1


def test_the_suffix_is_a_pinned_hash_of_the_last_three_characters():
    assert suffix_hash("running") == suffix_hash("JUMPING") != suffix_hash("nation")
    assert suffix_hash("of") == suffix_hash("OF") and 1 <= suffix_hash("of") < 512


def test_document_features_match_the_hand_computed_table(spelling_tokenizer):
    row = encode_one(spelling_tokenizer, FeatureSpec(counts=COUNTS))
    features, words, special = row["features"], row["word_ids"], row["special"]
    assert row["feature_names"] == FEATURES
    assert features.shape == (len(row["input_ids"]), len(FEATURES)) and features.dtype == torch.long
    assert (features[special] == 0).all() and special[0] and special[-1]
    content = words[~special]
    expected = {"word": [word_hash(w) for w in WORDS], "shape": SHAPES, "position": POSITIONS, "entity": ENTITIES,
                "frequency": FREQUENCIES}
    for name, per_word in expected.items():
        assert features[~special, FEATURES.index(name)].tolist() == torch.tensor(per_word)[content].tolist(), name


def test_repeats_rarity_and_suffix_channels_match_the_hand_computed_table(spelling_tokenizer):
    row = encode_one(spelling_tokenizer, FeatureSpec(("repeats", "rarity", "suffix"), counts=COUNTS))
    content = row["word_ids"][~row["special"]]
    total = sum(COUNTS.values())  # 40,012 words: "paris" (3) → floor(20 + log2(3/40012)) = 6, "in" (8) → 7
    assert [rarity_bucket(COUNTS[w], total) for w in ("was", "paris", "in", "ada")] == [5, 7, 8, 15]
    repeats = [1, 1, 1, 1, 2, 3, 2, 1, 1, 1, 1, 2, 3, 1, 3, 1, 1, 2]  # "paris" thrice, "in" and "." twice
    rarity = [15, 1, 5, 1, 8, 7, 8, 1, 1, 1, 1, 1, 7, 1, 7, 1, 1, 1]
    suffixes = [suffix_hash(word) for word in WORDS]
    for channel, per_word in enumerate((repeats, rarity, suffixes)):
        assert row["features"][~row["special"], channel].tolist() == torch.tensor(per_word)[content].tolist()


def test_subword_marks_the_first_token_of_each_word(spelling_tokenizer):
    row = encode_one(spelling_tokenizer, FeatureSpec(("subword",)))
    tokens = spelling_tokenizer.convert_ids_to_tokens(row["input_ids"])
    paris = [i for i, w in enumerate(row["word_ids"].tolist()) if w == 5]
    assert [tokens[i] for i in paris] == ["P", "##a", "##r", "##i", "##s"]
    assert row["features"][paris, 0].tolist() == [1, 2, 2, 2, 2]
    comma = row["word_ids"].tolist().index(8)
    assert tokens[comma] == "," and row["features"][comma, 0] == 1
    assert row["features"][:, 0].tolist() == [0] + [1 if t[:2] != "##" else 2 for t in tokens[1:-1]] + [0]


def test_frequency_counts_default_to_the_encoded_texts(spelling_tokenizer):
    row = encode_one(spelling_tokenizer, FeatureSpec(("frequency",)))
    words = row["word_ids"][~row["special"]]
    assert row["features"][~row["special"], 0].tolist() == torch.tensor(
        [1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 2, 2, 1, 2, 1, 1, 2])[words].tolist(), "in, paris (any case) and . twice"


def test_a_subset_of_names_gives_those_channels_in_that_order(spelling_tokenizer):
    full = encode_one(spelling_tokenizer, FeatureSpec(counts=COUNTS))
    names = tuple(reversed(PORTABLE_FEATURES))
    subset = encode_one(spelling_tokenizer, FeatureSpec(names, counts=COUNTS))
    assert subset["feature_names"] == names and subset["features"].shape[1] == len(names)
    assert torch.equal(subset["features"], full["features"][:, [FEATURES.index(n) for n in names]])


def test_unknown_feature_names_are_refused_with_the_valid_list():
    with pytest.raises(PolicyError, match="word, shape, position, entity, frequency, subword.*unknown: casing"):
        FeatureSpec(("shape", "casing"))
    with pytest.raises(PolicyError):
        FeatureSpec(())


def test_padded_batch_carries_features_to_the_policy_view(tiny_task, tiny_tokenizer):
    corpus = tiny_task.corpus()
    texts = [d.text for d in corpus]
    rows = encode_documents(texts, [d.entities for d in corpus], tiny_tokenizer, 64,
                            features=FeatureSpec(counts=word_counts(texts)))
    rows[1] = {key: value[:5] if key != "feature_names" else value for key, value in rows[1].items()}
    batch = pad_rows(rows, tiny_tokenizer.pad_token_id)
    view = token_batch(batch)
    assert batch["feature_names"] == view.feature_names == FEATURES
    assert view.features.shape == (*view.input_ids.shape, len(FEATURES)) and view.features.dtype == torch.long
    assert (view.features[1, 5:] == 0).all(), "padding"
    assert (view.features[~view.maskable] == 0).all(), "specials and padding"
    always_set = [FEATURES.index(name) for name in FEATURES if name != "entity"]
    assert (view.features[view.maskable][:, always_set] > 0).all(), "every word has a word, shape, position, ..."
    assert torch.equal(view.features[0, : len(rows[0]["features"])], rows[0]["features"])


def test_rows_without_features_stay_as_before(tiny_task, tiny_tokenizer):
    corpus = tiny_task.corpus()
    rows = encode_documents([d.text for d in corpus], [d.entities for d in corpus], tiny_tokenizer, 64)
    assert "features" not in rows[0] and "feature_names" not in rows[0]
    view = token_batch(pad_rows(rows, tiny_tokenizer.pad_token_id))
    assert view.features is None and view.feature_names == ()


def test_rows_with_different_feature_names_cannot_share_a_batch(spelling_tokenizer):
    rows = [encode_one(spelling_tokenizer, FeatureSpec(names)) for names in (FEATURES, PORTABLE_FEATURES)]
    with pytest.raises(TaskError, match="different feature names"):
        pad_rows(rows, spelling_tokenizer.pad_token_id)


def test_chunked_documents_keep_document_level_features(tiny_task, tiny_tokenizer):
    corpus = tiny_task.corpus()
    text = " ".join(d.text for d in corpus)
    starts = [sum(len(d.text) + 1 for d in corpus[:k]) for k in range(len(corpus))]
    spans = [tuple((s + a, s + b) for a, b in d.entities) for s, d in zip(starts, corpus, strict=True)]
    spec = FeatureSpec(counts=word_counts([text]))
    whole = encode_documents([text], [sum(spans, ())], tiny_tokenizer, 512, features=spec)
    windows = encode_documents([text], [sum(spans, ())], tiny_tokenizer, 16, overflow="chunk", features=spec)
    assert len(whole) == 1 and len(windows) > 3
    assert all(row["features"].shape == (len(row["input_ids"]), len(FEATURES)) for row in windows)
    content = torch.cat([row["features"][~row["special"]] for row in windows])
    assert torch.equal(content, whole[0]["features"][~whole[0]["special"]])
    position = FEATURES.index("position")
    first_positions = [int(row["features"][~row["special"]][0, position]) for row in windows]
    assert max(first_positions) > 1, "a window starting mid-sentence keeps the word's place in its sentence"
    assert sorted(set(content[:, position].tolist())) == list(range(1, 8)), "13-word sentences"
