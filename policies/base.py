"""The policy protocol and the batch a policy sees.

A masking policy answers one question: which positions of a ``[batch, length]``
token batch to mask. How the chosen positions are then corrupted (80/10/10 for an
encoder, sentinel spans for a seq2seq model) lives in :mod:`.corruption`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


class PolicyError(ValueError):
    """A policy was configured or called with input it cannot handle."""


class BudgetError(PolicyError):
    """A policy cannot reach its masking budget with the units it is allowed to mask."""


@dataclass(frozen=True)
class TokenBatch:
    """Token ids plus everything a policy may know about them.

    Attributes:
        input_ids: ``Long[B, L]`` token ids.
        maskable: ``Bool[B, L]``; False at special and padding tokens, which no
            policy may ever select.
        word_ids: ``Long[B, L]`` or None; word index of each token, ``-1`` outside
            words. Tokens of one word are contiguous.
        entity_ids: ``Long[B, L]`` or None; entity-span index of each token, ``-1``
            outside entity spans. Tokens of one span are contiguous.
        features: ``Long[B, L, F]`` or None; word-level categorical features (see
            :mod:`.features`), channel ``f`` named ``feature_names[f]``.
        feature_names: the names of the ``F`` feature channels.
        states: ``Float[B, L, D]`` or None; contextual states of each token from a frozen encoder, computed
            once per document at encoding time (zeros at special and padding tokens). A learned policy with a
            ``context`` reads them.
    """

    input_ids: Tensor
    maskable: Tensor
    word_ids: Tensor | None = None
    entity_ids: Tensor | None = None
    features: Tensor | None = None
    feature_names: tuple[str, ...] = ()
    states: Tensor | None = None

    def __post_init__(self) -> None:
        if self.input_ids.dim() != 2:
            raise PolicyError(f"input_ids must be [batch, length], got shape {tuple(self.input_ids.shape)}")
        if self.maskable.dtype != torch.bool or self.maskable.shape != self.input_ids.shape:
            raise PolicyError(
                f"maskable must be a bool tensor shaped like input_ids {tuple(self.input_ids.shape)}, "
                f"got {self.maskable.dtype} {tuple(self.maskable.shape)}"
            )
        for field in ("word_ids", "entity_ids"):
            ids = getattr(self, field)
            if ids is not None and ids.shape != self.input_ids.shape:
                raise PolicyError(f"{field} must be shaped like input_ids, got {tuple(ids.shape)}")
        if self.features is not None and (
            self.features.shape[:2] != self.input_ids.shape or self.features.shape[2:] != (len(self.feature_names),)
        ):
            raise PolicyError(
                f"features must be [batch, length, {len(self.feature_names)}] (one channel per feature name), "
                f"got {tuple(self.features.shape)}"
            )
        if self.states is not None and (self.states.dim() != 3 or self.states.shape[:2] != self.input_ids.shape
                                        or not self.states.is_floating_point()):
            raise PolicyError(f"states must be a float tensor [batch, length, dim] shaped like input_ids "
                              f"{tuple(self.input_ids.shape)} in its first two dimensions, got {self.states.dtype} "
                              f"{tuple(self.states.shape)}")

    def rows(self, index: Tensor) -> TokenBatch:
        """The sub-batch of the given row indices."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return TokenBatch(self.input_ids[index], self.maskable[index], pick(self.word_ids), pick(self.entity_ids),
                          pick(self.features), self.feature_names, pick(self.states))


@runtime_checkable
class MaskingPolicy(Protocol):
    """Chooses the positions to mask. Implementations must be pure: no mutation of
    ``batch``, all randomness drawn from ``generator``, never a non-maskable position."""

    def select(self, batch: TokenBatch, generator: torch.Generator) -> Tensor:
        """Returns ``Bool[B, L]``, True where a token is to be masked."""
        ...


@runtime_checkable
class FitsCorpus(Protocol):
    """A policy that reads statistics of the pre-training corpus (n-gram tables, word scores).

    The pipeline calls :meth:`fit` once on the encoded corpus, or :meth:`load_tables` with the
    tables a previous :meth:`fit` returned for the same corpus and ``table_parameters``."""

    table_parameters: dict

    def fit(self, corpus: TokenBatch) -> dict[str, Tensor]:
        """Builds the tables from ``corpus``, keeps them, and returns them (name → tensor)."""
        ...

    def load_tables(self, tables: dict[str, Tensor]) -> None:
        """Uses tables an earlier :meth:`fit` returned."""
        ...


@runtime_checkable
class RemembersRows(Protocol):
    """A :class:`FitsCorpus` policy whose per-row work is fixed once its tables are (``pmi``'s units,
    ``informative``'s word scores): the pipeline calls :meth:`remember_rows` with the corpus after fitting, and
    ``select`` reads that work back for every row it recognises. Masks are the same with or without it."""

    def remember_rows(self, corpus: TokenBatch) -> None:
        """Does the per-row work for every row of ``corpus`` (with the current tables) and keeps it."""
        ...


def check_rate(rate: float) -> float:
    """Validates a masking rate, the fraction of maskable tokens to mask."""
    if not 0.0 < float(rate) <= 1.0:
        raise PolicyError(f"masking rate must be in (0, 1], got {rate}; e.g. rate=0.15 masks 15% of tokens")
    return float(rate)
