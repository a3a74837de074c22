"""Words and word n-grams of a token batch as integer keys, for policies that use corpus statistics.

A word is a run of tokens sharing a word id (:func:`.ops.dense_groups`); its key is a 62-bit
hash of its token ids (two 31-bit polynomial hashes side by side), so the same word tokenised
the same way gets the same key in every batch, and two different words share one with
probability ~2⁻⁶². An n-gram's key hashes its words' keys the same way. Tables of keys are
sorted tensors searched with :func:`torch.searchsorted`; nothing here loops over tokens.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import PolicyError, TokenBatch
from .ops import dense_groups
from .whole_word import require_word_ids

MODULUS = 2**31 - 1  # a prime: products of two residues fit in int64
TOKEN_BASES = (1_000_003, 998_244_353)
WORD_BASES = (1_000_000_007 % MODULUS, 911_382_323)
NO_KEY = -1


@dataclass(frozen=True)
class Words:
    """The words of each row, in order.

    Attributes:
        groups: ``Long[B, L]`` word index of each token (``-1``: not in a maskable word).
        halves: ``Long[2, B, W]`` the two 31-bit hashes of each word; W = most words in a row.
        present: ``Bool[B, W]`` the row has a word there.
        joined: ``Bool[B, W]`` word w starts right where word w-1 ends (no special token between).
    """

    groups: Tensor
    halves: Tensor
    present: Tensor
    joined: Tensor

    @property
    def keys(self) -> Tensor:
        """``Long[B, W]`` each word's 62-bit key (``NO_KEY`` where absent)."""
        return torch.where(self.present, self.halves[0] << 31 | self.halves[1], NO_KEY)


def words_of(batch: TokenBatch, policy: str) -> Words:
    """The words of ``batch`` (needs word ids; ``policy`` names the caller in the error)."""
    groups = dense_groups(require_word_ids(batch, policy), batch.maskable)
    n_rows, length = groups.shape
    width = int(groups.max()) + 1 if groups.numel() else 0
    member = groups >= 0
    index = groups.clamp(min=0)
    position = torch.arange(length, device=groups.device).expand(n_rows, length)
    never = length + 1
    first = torch.full((n_rows, max(width, 1)), never, device=groups.device)
    first = first.scatter_reduce(1, index, position.masked_fill(~member, never), "amin")
    last = torch.full_like(first, -1).scatter_reduce(1, index, position.masked_fill(~member, -1), "amax")
    offset = (position - first.gather(1, index)).clamp(min=0)
    tokens = (batch.input_ids.long() + 1) % MODULUS
    hashes = []
    for base in TOKEN_BASES:
        terms = torch.where(member, tokens * _powers(base, length).to(groups.device)[offset] % MODULUS, 0)
        hashes.append(torch.zeros_like(first).scatter_add_(1, index, terms)[:, :width] % MODULUS)
    halves = torch.stack(hashes)
    present = (first < never)[:, :width]
    previous_last = torch.nn.functional.pad(last[:, :width], (1, 0), value=-2)[:, :width]
    joined = present & (first[:, :width] == previous_last + 1)
    return Words(groups, halves, present, joined)


def ngram_keys(words: Words, n: int) -> tuple[Tensor, Tensor]:
    """Keys of the n-grams starting at each word: ``(Long[B, W], Bool[B, W] valid)``.

    An n-gram is valid when its n words are present and joined (no special token inside).
    """
    if n < 1:
        raise PolicyError(f"an n-gram has at least one word, got n={n}")
    n_rows, width = words.present.shape
    halves = torch.nn.functional.pad(words.halves, (0, n - 1))
    present = torch.nn.functional.pad(words.present, (0, n - 1), value=False)
    joined = torch.nn.functional.pad(words.joined, (0, n - 1), value=False)
    valid = present[:, :width].clone()
    mixed = torch.zeros_like(halves[:, :, :width])
    for k in range(n):
        if k:
            valid &= present[:, k : k + width] & joined[:, k : k + width]
        powers = torch.tensor([pow(base, k, MODULUS) for base in WORD_BASES], device=halves.device)
        mixed = (mixed + halves[:, :, k : k + width] * powers[:, None, None] % MODULUS) % MODULUS
    mixed = (mixed + n) % MODULUS  # the order is part of the key
    return torch.where(valid, mixed[0] << 31 | mixed[1], NO_KEY), valid


def lookup(table_keys: Tensor, table_values: Tensor, keys: Tensor, missing: float) -> Tensor:
    """``table_values`` at ``keys`` (``table_keys`` sorted ascending); ``missing`` where a key is absent."""
    if table_keys.numel() == 0:
        return torch.full(keys.shape, missing, dtype=table_values.dtype, device=keys.device)
    place = torch.searchsorted(table_keys, keys.contiguous()).clamp(max=table_keys.numel() - 1)
    found = table_keys[place] == keys
    return torch.where(found, table_values[place], torch.as_tensor(missing, dtype=table_values.dtype))


@functools.lru_cache(maxsize=16)
def _powers(base: int, length: int) -> Tensor:
    """``Long[length]``: base^k mod MODULUS for k < length."""
    values = [1]
    for _ in range(max(length, 1) - 1):
        values.append(values[-1] * base % MODULUS)
    return torch.tensor(values)


def count_keys(keys: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Distinct valid keys, sorted, and how often each occurs."""
    return torch.unique(keys[valid], sorted=True, return_counts=True)
