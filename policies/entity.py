"""Entity (salient-span) masking: whole entity spans first (REALM, Ye et al. 2021)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .base import BudgetError, PolicyError, TokenBatch, check_rate
from .ops import budget, dense_groups, select_count, select_groups

Shortfall = Literal["error", "top_up", "allow"]


class EntityPolicy:
    """Masks whole entity spans (names, dates, numbers, places…) up to the budget.

    Entity spans come from ``TokenBatch.entity_ids``, filled by a tagger in the
    data pipeline (gold spans, the rule tagger, or spaCy).

    Args:
        rate: fraction of maskable tokens to mask, in (0, 1].
        shortfall: what to do when a sequence has fewer entity tokens than its
            budget: ``"error"`` raises :class:`BudgetError`; ``"top_up"`` fills the
            rest with random non-entity tokens; ``"allow"`` masks fewer tokens.
    """

    def __init__(self, rate: float = 0.15, shortfall: Shortfall = "error") -> None:
        self.rate = check_rate(rate)
        if shortfall not in ("error", "top_up", "allow"):
            raise PolicyError(f"entity shortfall must be 'error', 'top_up' or 'allow', got {shortfall!r}")
        self.shortfall = shortfall

    def select(self, batch: TokenBatch, generator: torch.Generator) -> Tensor:
        if batch.entity_ids is None:
            raise PolicyError(
                "the entity policy needs entity spans: build TokenBatch with entity_ids "
                "(the task's tagger fills them), or use another policy"
            )
        entities = dense_groups(batch.entity_ids, batch.maskable)
        target = budget(batch.maskable, self.rate)
        short = (entities >= 0).sum(dim=1) < target
        if self.shortfall == "error" and bool(short.any()):
            raise BudgetError(
                f"entity policy: {int(short.sum())} of {len(short)} sequences have fewer entity tokens than "
                f"the {self.rate:.0%} masking budget; set shortfall=top_up to fill the rest with random "
                "tokens, shortfall=allow to mask fewer, or lower the rate"
            )
        chosen = select_groups(entities, target, generator)
        if self.shortfall != "top_up":
            return chosen
        # only rows short of entity tokens are topped up; there every entity is already chosen
        missing = torch.where(short, target - chosen.sum(dim=1), 0).clamp(min=0)
        keys = torch.rand(chosen.shape, generator=generator, device=chosen.device)
        return chosen | select_count(keys, batch.maskable & ~chosen, missing)
