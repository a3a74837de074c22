"""An example third-party maskpolicy plugin: the ``every_nth`` policy.

It lives in its own distribution and reaches maskpolicy only through the public
API (``maskpolicy.policies``) and the entry-point group ``maskpolicy.policies``
declared in ``pyproject.toml``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from maskpolicy.policies import TokenBatch, check_rate

__all__ = ["EveryNthPolicy"]


class EveryNthPolicy:
    """Masks every n-th maskable token, n = 1 / rate, starting at a random phase.

    Strides may be fractional: at ``rate=0.4`` the gaps alternate between 2 and 3
    tokens. Each row draws its own phase ``φ ~ U[0, 1)`` and masks the maskable
    token of rank ``r`` (0, 1, 2, … among maskable tokens) when
    ``floor((r + 1) · rate + φ) > floor(r · rate + φ)``. A row with ``n`` maskable
    tokens then gets ``floor(n · rate + φ)`` masks: ``floor`` or ``ceil`` of
    ``n · rate``, exactly ``n · rate`` on average, and all of them at ``rate=1``.

    Args:
        rate: fraction of maskable tokens to mask, in (0, 1].
    """

    def __init__(self, rate: float = 0.15) -> None:
        self.rate = check_rate(rate)

    def select(self, batch: TokenBatch, generator: torch.Generator) -> Tensor:
        """Returns ``Bool[B, L]``, True at the chosen maskable positions."""
        maskable = batch.maskable
        rank = (maskable.long().cumsum(dim=1) - 1).to(torch.float64)
        phase = torch.rand((maskable.shape[0], 1), generator=generator, dtype=torch.float64, device=maskable.device)
        before = torch.floor(rank * self.rate + phase)
        after = torch.floor((rank + 1) * self.rate + phase)
        return maskable & (after > before)
