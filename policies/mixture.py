"""A per-sequence mixture of policies (e.g. 50% entity, 50% random)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .base import MaskingPolicy, PolicyError, TokenBatch


class MixturePolicy:
    """Draws one component policy per sequence, with the given weights.

    Args:
        components: the component policies, as a name → policy mapping (names make
            configs and search spaces readable) or a sequence.
        weights: one non-negative weight per component, same keys/order; uniform if
            omitted. Weights are normalised.
    """

    def __init__(
        self,
        components: Mapping[str, MaskingPolicy] | Sequence[MaskingPolicy],
        weights: Mapping[str, float] | Sequence[float] | None = None,
    ) -> None:
        names = list(components) if isinstance(components, Mapping) else list(range(len(components)))
        if not names:
            raise PolicyError("a mixture needs at least one component policy")
        self.components = [components[name] for name in names]
        if weights is None:
            weights = [1.0] * len(names)
        elif isinstance(weights, Mapping):
            if set(weights) != set(names):
                raise PolicyError(f"mixture weights {sorted(weights)} must name the components {sorted(names)}")
            weights = [weights[name] for name in names]
        if len(weights) != len(names) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise PolicyError(f"mixture needs one non-negative weight per component, not all zero; got {list(weights)}")
        self.weights = torch.tensor([float(w) for w in weights]) / sum(weights)

    def select(self, batch: TokenBatch, generator: torch.Generator) -> Tensor:
        n_rows = batch.input_ids.shape[0]
        mask = torch.zeros_like(batch.maskable)
        if n_rows == 0:  # torch.multinomial refuses to draw zero samples
            return mask
        weights = self.weights.to(batch.input_ids.device)
        choice = torch.multinomial(weights, n_rows, replacement=True, generator=generator)
        for k, policy in enumerate(self.components):
            rows = (choice == k).nonzero().squeeze(1)
            if len(rows):
                mask[rows] = policy.select(batch.rows(rows), generator)
        return mask
