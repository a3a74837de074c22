"""Synthetic token batches shared by the policy tests.

A batch looks like a real one: ``[CLS] words [SEP] words [SEP] [PAD]…`` with rows
of different lengths, multi-token words numbered arbitrarily (large, unordered
ids, never ``0, 1, 2, …``), and entity spans of one to three whole words
covering well over half of every row, so entity masking at rate 0.4 never falls
short. Everything is generated from a seed, so every test sees the same data.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import torch

from maskpolicy.policies import TokenBatch
from maskpolicy.policies.features import FEATURE_SIZES, FEATURES

PAD, CLS, SEP, MASK = 0, 1, 2, 3
FIRST_WORD_ID = 10
VOCAB = 1000


def _segment(n_tokens: int, rng: random.Random) -> tuple[list[int], list[int], list[int]]:
    """Token, word and entity ids for ``n_tokens`` tokens of text (no specials).

    Words are 1-3 tokens; entities of 1-3 words alternate with gaps of 0 or 1
    plain words, so entities cover most tokens. Word and entity ids are a random
    permutation (scaled and shifted), to rule out any assumption about numbering.
    """
    tokens: list[int] = []
    words: list[int] = []
    entities: list[int] = []
    word_names = [50 + 3 * i for i in rng.sample(range(n_tokens), n_tokens)]
    entity_names = [7 + 5 * i for i in rng.sample(range(n_tokens), n_tokens)]
    n_words = n_entities = 0
    entity_left = gap_left = 0  # words left in the current entity / in the current gap
    while len(tokens) < n_tokens:
        if entity_left == 0 and gap_left == 0:
            entity_left = rng.randint(1, 3)
        if entity_left > 0:
            entity = entity_names[n_entities]
            entity_left -= 1
            if entity_left == 0:
                n_entities += 1
                gap_left = rng.randint(0, 1)
        else:
            entity = -1
            gap_left -= 1
        size = min(rng.randint(1, 3), n_tokens - len(tokens))
        tokens += [rng.randrange(FIRST_WORD_ID, VOCAB) for _ in range(size)]
        words += [word_names[n_words]] * size
        entities += [entity] * size
        n_words += 1
    return tokens, words, entities


def make_batch(n_rows: int, length: int, seed: int = 0) -> TokenBatch:
    """A ``[n_rows, length]`` batch: ``[CLS] a [SEP] b [SEP]`` then padding; ``length ≥ 5``.

    Real lengths vary from ``length // 2`` to ``length``; the middle ``[SEP]`` sits
    at a random place. Specials and padding are not maskable and lie outside
    words and entities.
    """
    rng = random.Random(seed)
    input_ids, word_ids, entity_ids = [], [], []
    for _ in range(n_rows):
        real = rng.randint(max(5, length // 2), length)
        first = rng.randint(1, real - 4)
        a, b = _segment(first, rng), _segment(real - 3 - first, rng)
        padding = length - real
        input_ids.append([CLS, *a[0], SEP, *b[0], SEP] + [PAD] * padding)
        word_ids.append([-1, *a[1], -1, *b[1], -1] + [-1] * padding)
        entity_ids.append([-1, *a[2], -1, *b[2], -1] + [-1] * padding)
    input_ids, word_ids = torch.tensor(input_ids), torch.tensor(word_ids)
    features = word_features(word_ids, torch.tensor(entity_ids), seed)
    return TokenBatch(input_ids, input_ids >= FIRST_WORD_ID, word_ids, torch.tensor(entity_ids), features, FEATURES)


def word_features(word_ids: torch.Tensor, entity_ids: torch.Tensor, seed: int) -> torch.Tensor:
    """``Long[B, L, F]`` stand-in word features: a seeded random id per word and channel, 0 outside words.

    ``entity`` and ``subword`` follow the batch's entity and word ids, as real ones do.
    """
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([FEATURE_SIZES[name] for name in FEATURES])
    per_word = (torch.rand(int(word_ids.max()) + 1, len(FEATURES), generator=generator) * (sizes - 1)).long() + 1
    features = torch.where((word_ids >= 0)[..., None], per_word[word_ids.clamp(min=0)], 0)
    previous_word = torch.nn.functional.pad(word_ids[:, :-1], (1, 0), value=-1)
    previous_entity = torch.nn.functional.pad(entity_ids[:, :-1], (1, 0), value=-1)
    subword = torch.where(word_ids < 0, 0, torch.where(previous_word == word_ids, 2, 1))
    entity = torch.where(entity_ids < 0, 0, torch.where(previous_entity == entity_ids, 2, 1))
    features[..., FEATURES.index("subword")] = subword
    features[..., FEATURES.index("entity")] = entity
    return features


@pytest.fixture(scope="session")
def batch_factory() -> Callable[..., TokenBatch]:
    """The synthetic batch builder, :func:`make_batch`."""
    return make_batch


@pytest.fixture(scope="session")
def big_batch() -> TokenBatch:
    """256 rows of 96-192 tokens: enough tokens for tight rate checks."""
    return make_batch(256, 192, seed=0)
