"""The one optimiser set-up of every Lightning module: AdamW with linear warm-up and decay."""

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
    optimizer = torch.optim.AdamW([group for group in groups if group["params"]], lr=learning_rate)
    schedule = get_linear_schedule_with_warmup(optimizer, int(warmup_fraction * total_steps), total_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
