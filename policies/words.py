"""Words and word n-grams of a token batch as integer keys, for policies that use corpus statistics.

A word is a run of tokens sharing a word id (:func:`.ops.dense_groups`); its key is a 64-bit
polynomial hash of its token ids (wrapping int64 arithmetic, then a multiply-xorshift mix), so
the same word tokenised the same way gets the same key in every batch, and two different words
share one with probability ~2⁻⁶⁴. An n-gram's key hashes its words' keys the same way, built
order by order (the key of n words extends the key of its first n − 1). Tables of keys are
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


def _signed(value: int) -> int:
    """A 64-bit pattern as the int64 torch stores it."""
    value &= 2**64 - 1
    return value - 2**64 if value >= 2**63 else value


TOKEN_BASE = _signed(0x9E3779B97F4A7C15)  # odd constants: multiplication by them permutes 64-bit values
WORD_BASE = _signed(0xC2B2AE3D27D4EB4F)
MIX = _signed(0xFF51AFD7ED558CCD)
ORDER_STEP = _signed(0x165667B19E3779F9)
NO_KEY = -1


@dataclass(frozen=True)
class Words:
    """The words of each row, in order.

    Attributes:
        groups: ``Long[B, L]`` word index of each token (``-1``: not in a maskable word).
        keys: ``Long[B, W]`` each word's key (``NO_KEY`` where absent); W = most words in a row.
        present: ``Bool[B, W]`` the row has a word there.
        joined: ``Bool[B, W]`` word w starts right where word w-1 ends (no special token between).
    """

    groups: Tensor
    keys: Tensor
    present: Tensor
    joined: Tensor


def words_of(batch: TokenBatch, policy: str) -> Words:
    """The words of ``batch`` (needs word ids; ``policy`` names the caller in the error)."""
    groups = dense_groups(require_word_ids(batch, policy), batch.maskable)
    n_rows, length = groups.shape
    width = int(groups.max()) + 1 if groups.numel() else 0
    member = groups >= 0
    previous_group = torch.nn.functional.pad(groups[:, :-1], (1, 0), value=-1)
    starts = member & (groups != previous_group)
    position = torch.arange(length, device=groups.device).expand(n_rows, length)
    offset = position - torch.where(starts, position, 0).cummax(dim=1).values
    terms = torch.where(member, (batch.input_ids.long() + 1) * _powers(TOKEN_BASE, length).to(groups.device)[offset], 0)
    column = torch.where(member, groups, width)  # tokens outside words land in a spare last column
    raw = torch.zeros(n_rows, width + 1, dtype=torch.long, device=groups.device).scatter_add_(1, column, terms)
    follows_a_word = torch.nn.functional.pad(member[:, :-1], (1, 0), value=False)
    joined = torch.zeros(n_rows, width + 1, dtype=torch.bool, device=groups.device)
    joined = joined.scatter_(1, torch.where(starts, groups, width), starts & follows_a_word)[:, :width]
    present = torch.arange(width, device=groups.device) < (groups.max(dim=1).values + 1).unsqueeze(1)
    return Words(groups, torch.where(present, _mix(raw[:, :width]), NO_KEY), present, joined)


def ngram_orders(words: Words, max_n: int, min_n: int = 1) -> dict[int, tuple[Tensor, Tensor]]:
    """Keys of the n-grams starting at each word, for n = ``min_n``..``max_n``: ``n → (Long[B, W], Bool[B, W] valid)``.

    An n-gram is valid when its n words are present and joined (no special token inside).
    """
    if min_n < 1 or max_n < min_n:
        raise PolicyError(f"an n-gram has at least one word, got orders {min_n}..{max_n}")
    accumulated, valid = words.keys.clone(), words.present.clone()
    orders = {}
    for n in range(1, max_n + 1):
        if n > 1:
            k = n - 1
            accumulated = accumulated + shifted(words.keys, k, 0) * _power(WORD_BASE, k)
            valid = valid & shifted(words.present & words.joined, k, False)
        if n >= min_n:
            orders[n] = (torch.where(valid, _mix(accumulated + n * ORDER_STEP), NO_KEY), valid)
    return orders


def ngram_keys(words: Words, n: int) -> tuple[Tensor, Tensor]:
    """Keys of the n-grams starting at each word: ``(Long[B, W], Bool[B, W] valid)`` (see :func:`ngram_orders`)."""
    if n < 1:
        raise PolicyError(f"an n-gram has at least one word, got n={n}")
    return ngram_orders(words, n, n)[n]


def lookup(table_keys: Tensor, table_values: Tensor, keys: Tensor, missing: float) -> Tensor:
    """``table_values`` at ``keys`` (``table_keys`` sorted ascending); ``missing`` where a key is absent."""
    if table_keys.numel() == 0:
        return torch.full(keys.shape, missing, dtype=table_values.dtype, device=keys.device)
    place = torch.searchsorted(table_keys, keys.contiguous()).clamp(max=table_keys.numel() - 1)
    found = table_keys[place] == keys
    return torch.where(found, table_values[place], torch.as_tensor(missing, dtype=table_values.dtype))


class KeyTable:
    """Sorted keys with one value each, looked up in bulk. A bitmap over the keys' low 16 bits answers
    "certainly absent" for most queries with one gather, so only the rest are binary-searched."""

    FILTER_BITS = 16

    def __init__(self, keys: Tensor, values: Tensor) -> None:
        self.keys, self.values = keys, values
        self.filter = torch.zeros(2**self.FILTER_BITS, dtype=torch.bool, device=keys.device)
        self.filter[keys & (2**self.FILTER_BITS - 1)] = True

    def to(self, device: torch.device) -> KeyTable:
        return self if self.keys.device == device else KeyTable(self.keys.to(device), self.values.to(device))

    def get(self, keys: Tensor, missing: float) -> Tensor:
        """``values`` at ``keys``; ``missing`` where a key is not in the table."""
        result = torch.full(keys.shape, missing, dtype=self.values.dtype, device=keys.device)
        candidates = self.filter[keys & (2**self.FILTER_BITS - 1)].nonzero(as_tuple=True)
        if len(candidates[0]):
            result[candidates] = lookup(self.keys, self.values, keys[candidates], missing)
        return result


def count_keys(keys: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Distinct valid keys, sorted, and how often each occurs."""
    return torch.unique(keys[valid], sorted=True, return_counts=True)


def _mix(keys: Tensor) -> Tensor:
    """A multiply-xorshift finaliser: nearby raw sums become unrelated keys (int64 multiplication wraps)."""
    keys = keys * MIX
    return keys ^ (keys >> 29)


def shifted(values: Tensor, d: int, fill: float | bool) -> Tensor:
    """``values[:, i + d]`` at column ``i`` (``fill`` past either end); ``d`` may be negative."""
    width = values.shape[1]
    moved = torch.full_like(values, fill)
    if 0 <= d < width:
        moved[:, : width - d] = values[:, d:]
    elif 0 < -d < width:
        moved[:, -d:] = values[:, : width + d]
    return moved


def _power(base: int, k: int) -> int:
    return _signed(pow(base, k, 2**64))


@functools.lru_cache(maxsize=16)
def _powers(base: int, length: int) -> Tensor:
    """``Long[length]``: base^k (mod 2⁶⁴, as int64) for k < length."""
    return torch.tensor([_power(base, k) for k in range(max(length, 1))])
