"""A masked LM as a masked predictor for :func:`maskpolicy.meta.scoring.estimate.estimate_mll`."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel


class MaskedLMPredictor:
    """``log p(x_j | x_{not M})`` from a Hugging Face masked LM, for every masked ``j`` in one pass.

    Masked positions are replaced by ``mask_token_id``; every other position, scored or
    not (the non-target tokens of a targeted score, special tokens), keeps its token and
    is visible. Padding (``pad_token_id``) is excluded from attention and trimmed off when
    a whole chunk ends in it (rows of similar length arrive together). Runs without
    autograd, on the model's device.
    """

    def __init__(self, model: PreTrainedModel, mask_token_id: int, pad_token_id: int | None = None) -> None:
        self.model, self.mask_token_id, self.pad_token_id = model, mask_token_id, pad_token_id

    @torch.inference_mode()
    def __call__(self, inputs: Tensor, masks: Tensor) -> Tensor:
        """``inputs`` ``Long[N, L]``, ``masks`` ``Bool[N, L]`` → ``Float[N, L]`` log-probabilities of the inputs."""
        device = next(self.model.parameters()).device
        attention = torch.ones_like(inputs) if self.pad_token_id is None else (inputs != self.pad_token_id).long()
        width = int(attention.any(0).nonzero().max()) + 1
        targets = inputs[:, :width].to(device)
        ids = targets.masked_fill(masks[:, :width].to(device), self.mask_token_id)
        was_training = self.model.training
        self.model.eval()
        try:
            logits = self.model(input_ids=ids, attention_mask=attention[:, :width].to(device)).logits.float()
        finally:
            self.model.train(was_training)
        chosen = logits.gather(-1, targets[..., None]).squeeze(-1)
        log_probs = torch.zeros(inputs.shape, dtype=torch.float32)
        log_probs[:, :width] = (chosen - logits.logsumexp(-1)).cpu()
        return log_probs
