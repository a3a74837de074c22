"""Per-row work a policy repeats every epoch, done once: what ``pmi`` and ``informative`` derive from a row's
tokens alone (its masking units, its words' scores) is fixed once their corpus tables are, so
:meth:`RowMemo.build` computes it for every corpus row and :meth:`RowMemo.get` reads it back for any batch row
it recognises, computing only the others.

A row is recognised by two independent 64-bit hashes of what such work reads: the token id, word id and position
of each maskable token (special tokens and padding do not count, so a row padded to another width is the same
row). Two different rows share both keys with probability ~2⁻¹²⁸.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import TokenBatch
from .words import _mix, _power, _powers, _signed

KEY_BASES = (_signed(0xD6E8FEB86659FD93), _signed(0xA0761D6478BD642F))  # one per key, odd
WORD_SHIFT = 24  # a token's hashed value is (id + 1) · 2²⁴ + word id + 2: word ids are below 2²⁴ − 2

Compute = Callable[[TokenBatch], dict[str, Tensor]]


def row_keys(batch: TokenBatch) -> Tensor:
    """``Long[B, 2]``: each row's two keys."""
    length = batch.input_ids.shape[1]
    words = batch.word_ids if batch.word_ids is not None else torch.full_like(batch.input_ids, -1)
    value = (batch.input_ids.long() + 1) * _power(2, WORD_SHIFT) + (words.long() + 2)
    keys = [torch.where(batch.maskable, _mix(value * _powers(base, length).to(value.device)), 0).sum(dim=1)
            for base in KEY_BASES]
    return torch.stack(keys, dim=1)


@dataclass(frozen=True)
class RowMemo:
    """The values ``compute`` gave each corpus row, found again by the row's keys.

    Attributes:
        first: ``Long[N]`` the rows' first keys, sorted; ``second``: their second keys, in the same order.
        values: name → ``[N, width]`` tensor, a row's values in that order, cut or padded with ``fills`` to a
            batch's width when read.
        fills: name → the value past a row's end.
    """

    first: Tensor
    second: Tensor
    values: dict[str, Tensor]
    fills: dict[str, float | int]

    @classmethod
    def build(cls, corpus: TokenBatch, compute: Compute, fills: dict[str, float | int],
              rows_per_chunk: int = 4096) -> RowMemo:
        """Runs ``compute`` over the corpus, ``rows_per_chunk`` rows at a time, and keeps what it returns."""
        chunks = [compute(corpus.rows(torch.arange(start, min(start + rows_per_chunk, len(corpus.input_ids)))))
                  for start in range(0, len(corpus.input_ids), rows_per_chunk)]
        width = corpus.input_ids.shape[1]
        values = {name: torch.cat([_to_width(chunk[name], width, fill) for chunk in chunks]) if chunks
                  else torch.empty(0, width) for name, fill in fills.items()}
        keys = row_keys(corpus)
        order = torch.argsort(keys[:, 0], stable=True)
        return cls(keys[order, 0], keys[order, 1], {name: value[order] for name, value in values.items()}, fills)

    def get(self, batch: TokenBatch, compute: Compute) -> dict[str, Tensor]:
        """``compute(batch)``, read from the memo for the rows it holds (each value as wide as ``batch``)."""
        if len(self.first) == 0:
            return compute(batch)
        width, device = batch.input_ids.shape[1], batch.input_ids.device
        keys = row_keys(batch).cpu()  # the memo stays on the CPU; only a batch's values travel
        place = torch.searchsorted(self.first, keys[:, 0].contiguous()).clamp(max=len(self.first) - 1)
        known = (self.first[place] == keys[:, 0]) & (self.second[place] == keys[:, 1])
        found = {name: _to_width(value[place], width, self.fills[name]).to(device)
                 for name, value in self.values.items()}
        if not bool(known.all()):
            unknown = (~known).nonzero(as_tuple=True)[0].to(device)
            fresh = compute(batch.rows(unknown))
            for name, value in found.items():
                value[unknown] = _to_width(fresh[name], width, self.fills[name]).to(value.dtype)
        return found


def _to_width(values: Tensor, width: int, fill: float | int) -> Tensor:
    """``values`` ``[N, w]`` cut or padded with ``fill`` to ``[N, width]``."""
    if values.shape[1] >= width:
        return values[:, :width]
    return torch.nn.functional.pad(values, (0, width - values.shape[1]), value=fill)
