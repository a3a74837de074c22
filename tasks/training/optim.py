"""The one optimiser set-up of every Lightning module: AdamW with linear warm-up and decay.

AdamW is PyTorch's fused kernel where this torch has one for the parameters' device: the same update to float
rounding (≤ 7.5e-9 per weight after a step), 1.03–1.10× per pre-training step on a 2-core CPU
(``benchmarks/step_kernels.py``); elsewhere the default (``foreach``) implementation.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import get_linear_schedule_with_warmup


def adamw_with_warmup(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    learning_rate: float,
    weight_decay: float,
    warmup_fraction: float,
    total_steps: int,
    decay_norms_and_biases: bool = False,
) -> dict:
    """Lightning's ``configure_optimizers`` answer: AdamW, warm-up over ``warmup_fraction`` of the steps, then linear
    decay to zero, stepped every batch.

    By BERT's rule weight decay skips biases and normalisation weights (any parameter
    with fewer than two dimensions or ``norm`` in its name); ``decay_norms_and_biases``
    decays them too.
    """
    decay, no_decay = [], []
    for name, parameter in named_parameters:
        exempt = not decay_norms_and_biases and (parameter.ndim < 2 or "norm" in name.lower())
        (no_decay if exempt else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = adamw([group for group in groups if group["params"]], learning_rate)
    schedule = get_linear_schedule_with_warmup(optimizer, int(warmup_fraction * total_steps), total_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def adamw(groups: list[dict], learning_rate: float) -> torch.optim.AdamW:
    """Fused AdamW, or the default one where the parameters' device or dtype has no fused kernel."""
    try:
        return torch.optim.AdamW(groups, lr=learning_rate, fused=True)
    except (RuntimeError, ValueError):  # torch refuses fused=True for devices and dtypes it has no kernel for
        return torch.optim.AdamW(groups, lr=learning_rate)
