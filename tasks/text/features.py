"""Word-level features for a learned masking policy, computed from text at encode time.

The schema (names, sizes, meaning of each id) is :mod:`maskpolicy.policies.features`;
this module fills it in. A *word* is what the tokenizer calls one: the tokens that
share a word id, its text the union of their character offsets (surrounding
whitespace stripped). Id 0 means "none" in every channel: special tokens, padding
and tokens without a word.

Choices the schema leaves open:

- ``shape``: 1 lower, 2 Capitalised (first letter upper, the rest lower; a single
  capital letter counts here), 3 UPPER (two or more letters, all upper), 4 digits,
  5 letters and digits mixed, 6 punctuation (no letter, digit or space), 7 other
  (mixed case such as "iPhone", letters with symbols such as "don't").
- ``position``: a sentence ends after a word whose last character is ``.``, ``!`` or
  ``?`` (so "Dr." ends one too). Positions count the document's words, not a
  window's, so chunked documents get the same ids as whole ones. The id is
  ``1 + bucket`` capped at ``size - 1``: the schema lists nine buckets but its
  size 9 leaves eight ids besides 0, so 13–20 and 21+ share id 8.
- ``entity``: 0 outside a span, 1 on tokens of a span's first word, 2 on later words.
- ``frequency``: words the corpus never shows share bucket 1 with words seen once.
  Corpus words are counted by :func:`word_counts`, lower-cased, with the
  segmentation of BERT-style pre-tokenizers (runs of letters and digits; every
  other non-space character alone); a tokenizer that segments differently (e.g.
  byte-level BPE keeping "..." whole) gets bucket 1 for the words it splits apart.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from maskpolicy.policies.features import FEATURE_SIZES, FEATURES, FUNCTION_WORDS, PUNCTUATION_MARKS, check_features

WORD_PATTERN = re.compile(r"[^\W_]+|\S")
SENTENCE_ENDS = frozenset(".!?")
POSITION_BUCKET_STARTS = np.array([0, 1, 2, 3, 4, 6, 9, 13, 21])
LOWER, CAPITALISED, UPPER, DIGITS, ALPHANUMERIC, PUNCTUATION, OTHER = range(1, 8)
FIRST_TOKEN, CONTINUATION_TOKEN = 1, 2
SPAN_FIRST_WORD, SPAN_LATER_WORD = 1, 2


def word_counts(texts: Iterable[str]) -> Counter[str]:
    """Counts of lower-cased words: runs of letters and digits, and every other non-space character alone."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(WORD_PATTERN.findall(text.lower()))
    return counts


@dataclass(frozen=True)
class FeatureSpec:
    """Which features to compute, in channel order, and the corpus word counts behind ``frequency``.

    ``counts=None`` means: count the words of the texts being encoded. ``context``: where the contextual states
    of a frozen encoder come from (a :class:`~maskpolicy.tasks.text.context.StateSource`), for a learned policy
    that reads them; rows then also hold ``states`` ``Float16[T, D]``.
    """

    names: tuple[str, ...] = FEATURES
    counts: Mapping[str, int] | None = field(default=None, hash=False)
    context: object | None = field(default=None, hash=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", check_features(self.names))


def word_shape(word: str) -> int:
    """The ``shape`` id of a word (see the module docstring)."""
    if word.isalpha():
        if word.islower():
            return LOWER
        if word.isupper():
            return UPPER if len(word) > 1 else CAPITALISED
        return CAPITALISED if word[0].isupper() and (len(word) == 1 or word[1:].islower()) else OTHER
    if word.isdigit():
        return DIGITS
    if word.isalnum():
        return ALPHANUMERIC
    if word and not any(c.isalnum() or c.isspace() for c in word):
        return PUNCTUATION
    return OTHER


def word_hash(word: str) -> int:
    """The ``word`` id: ``1 + crc32(lower-cased utf-8) mod (size - 1)``, stable across runs and machines."""
    return 1 + zlib.crc32(word.lower().encode("utf-8")) % (FEATURE_SIZES["word"] - 1)


def frequency_bucket(count: int) -> int:
    """The ``frequency`` id: ``1 + floor(log2(count))`` capped at ``size - 1``; unseen words get 1."""
    return min(FEATURE_SIZES["frequency"] - 1, max(1, int(count).bit_length()))


def suffix_hash(word: str) -> int:
    """The ``suffix`` id: ``1 + crc32(last three lower-cased characters) mod (size - 1)``."""
    return 1 + zlib.crc32(word[-3:].lower().encode("utf-8")) % (FEATURE_SIZES["suffix"] - 1)


def rarity_bucket(count: int, total: int) -> int:
    """The ``rarity`` id of a word seen ``count`` times among ``total`` corpus words; unseen words get 1."""
    if count <= 0 or total <= 0:
        return 1
    return 1 + min(FEATURE_SIZES["rarity"] - 2, max(0, math.floor(20 + math.log2(count / total))))


FUNCTION_IDS = {word: 2 + i for i, word in enumerate((*FUNCTION_WORDS, *PUNCTUATION_MARKS))}


def function_id(word: str) -> int:
    """The ``function`` id: 1 for a content word, otherwise the closed-class word's or punctuation mark's own id."""
    return FUNCTION_IDS.get(word.lower(), 1)


def repeats_bucket(words: list[str]) -> np.ndarray:
    """The ``repeats`` ids of a document's words: occurrences of each lower-cased word in it, capped at 4."""
    _, inverse, occurrences = np.unique([w.lower() for w in words], return_inverse=True, return_counts=True)
    return np.minimum(occurrences[inverse], FEATURE_SIZES["repeats"] - 1).astype(np.int64)


def position_bucket(index_in_sentence: np.ndarray) -> np.ndarray:
    """The ``position`` ids of ``Long[W]`` word indices within their sentences."""
    bucket = np.searchsorted(POSITION_BUCKET_STARTS, index_in_sentence, side="right")
    return np.minimum(bucket, FEATURE_SIZES["position"] - 1)


@lru_cache(maxsize=1 << 16)
def _word_properties(word: str) -> tuple[int, int, bool]:
    return word_hash(word), word_shape(word), bool(word) and word[-1] in SENTENCE_ENDS


def _word_spans(offsets: np.ndarray, word_of_token: np.ndarray, n_words: int) -> tuple[np.ndarray, np.ndarray]:
    """Character ``[start, end)`` of each word, ``Long[W]`` each, from its tokens' offsets ``[T, 2]``."""
    starts = np.full(n_words, np.iinfo(np.int64).max)
    ends = np.zeros(n_words, dtype=np.int64)
    np.minimum.at(starts, word_of_token, offsets[:, 0])
    np.maximum.at(ends, word_of_token, offsets[:, 1])
    return starts, ends


def _index_in_sentence(ends_sentence: np.ndarray) -> np.ndarray:
    """``Long[W]`` index of each word within its sentence, given ``Bool[W]`` sentence-final words."""
    index = np.arange(len(ends_sentence))
    starts_sentence = np.concatenate([[True], ends_sentence[:-1]])
    return index - np.maximum.accumulate(np.where(starts_sentence, index, 0))


def _span_word_ids(entity_ids: np.ndarray, word_of_token: np.ndarray) -> np.ndarray:
    """``entity`` ids of content tokens: which word of its span each token's word is."""
    inside = entity_ids >= 0
    spans, first_token = np.unique(entity_ids[inside], return_index=True)
    first_word = np.zeros(spans.max() + 1 if len(spans) else 0, dtype=np.int64)
    first_word[spans] = word_of_token[inside][first_token]
    later = word_of_token[inside] != first_word[entity_ids[inside]]
    values = np.zeros(len(entity_ids), dtype=np.int64)
    values[inside] = np.where(later, SPAN_LATER_WORD, SPAN_FIRST_WORD)
    return values


def _word_channels(names: tuple[str, ...], words: list[str], counts: Mapping[str, int] | None,
                   total: int) -> dict[str, np.ndarray]:
    """The word-level channels among ``names``, ``Long[W]`` each, for a document's words in order."""
    hashes, shapes, ends_sentence = (np.array(column, dtype=np.int64) for column in
                                     zip(*map(_word_properties, words), strict=True))
    channels = {"word": hashes, "shape": shapes}
    if "position" in names:
        channels["position"] = position_bucket(_index_in_sentence(ends_sentence.astype(bool)))
    if "frequency" in names:
        channels["frequency"] = np.array([frequency_bucket(counts.get(w.lower(), 0)) for w in words], dtype=np.int64)
    if "rarity" in names:
        channels["rarity"] = np.array([rarity_bucket(counts.get(w.lower(), 0), total) for w in words], dtype=np.int64)
    if "repeats" in names:
        channels["repeats"] = repeats_bucket(words)
    if "suffix" in names:
        channels["suffix"] = np.array([suffix_hash(w) for w in words], dtype=np.int64)
    if "function" in names:
        channels["function"] = np.array([function_id(w) for w in words], dtype=np.int64)
    return channels



def document_features(
    text: str,
    offsets: np.ndarray,
    word_ids: np.ndarray,
    entity_ids: np.ndarray,
    special: np.ndarray,
    spec: FeatureSpec,
    counts: Mapping[str, int] | None = None,
    total: int | None = None,
) -> np.ndarray:
    """The ``Long[T, F]`` features of one document's tokens, channels in ``spec.names`` order.

    Args: ``text`` the document; ``offsets`` ``Long[T, 2]`` character offsets into it;
    ``word_ids`` ``Long[T]`` the tokenizer's document-level word index (``-1`` for
    specials); ``entity_ids`` ``Long[T]`` entity-span index (``-1`` outside);
    ``special`` ``Bool[T]``; ``counts`` overrides ``spec.counts`` (when both are
    None, the words of ``text`` are counted); ``total`` is the number of words behind
    ``counts`` (summed from them when None). The tokens may be several windows of
    the document laid end to end, specials between them.
    """
    word_ids, entity_ids = np.asarray(word_ids), np.asarray(entity_ids)
    features = np.zeros((len(word_ids), len(spec.names)), dtype=np.int64)
    content = (word_ids >= 0) & ~np.asarray(special, dtype=bool)
    if not content.any():
        return features
    counts = spec.counts if counts is None else counts
    if counts is None and ("frequency" in spec.names or "rarity" in spec.names):
        counts = word_counts([text])
    content_words = word_ids[content]
    unique_words, word_of_token = np.unique(content_words, return_inverse=True)
    starts, ends = _word_spans(np.asarray(offsets)[content], word_of_token, len(unique_words))
    words = [text[start:end].strip() for start, end in zip(starts.tolist(), ends.tolist(), strict=True)]
    if total is None and counts is not None:
        total = sum(counts.values())
    per_word = _word_channels(spec.names, words, counts, total or 0)
    for channel, name in enumerate(spec.names):
        if name == "entity":
            values = _span_word_ids(entity_ids[content], word_of_token)
        elif name == "subword":
            starts_word = np.concatenate([[True], content_words[1:] != content_words[:-1]])
            values = np.where(starts_word, FIRST_TOKEN, CONTINUATION_TOKEN)
        else:
            values = per_word[name][word_of_token]
        features[content, channel] = values
    return features
