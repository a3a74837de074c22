"""A masked LM as a masked predictor for :func:`maskpolicy.meta.scoring.estimate.estimate_mll`."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel

from maskpolicy.tasks.training.heads import masked_logits


class MaskedLMPredictor:
    """``log p(x_j | x_{not M})`` from a Hugging Face masked LM, for every masked ``j`` in one pass.

    Masked positions are replaced by ``mask_token_id``; every other position, scored or
    not (the non-target tokens of a targeted score, special tokens), keeps its token and
    is visible. Padding (``pad_token_id``) is excluded from attention and trimmed off when
    a whole chunk ends in it (rows of similar length arrive together). The head runs at
    the masked positions only (:func:`~maskpolicy.tasks.training.heads.masked_logits`), so
    unmasked positions read 0. Runs without autograd, on the model's device.
    """

    def __init__(self, model: PreTrainedModel, mask_token_id: int, pad_token_id: int | None = None) -> None:
        self.model, self.mask_token_id, self.pad_token_id = model, mask_token_id, pad_token_id

    @torch.inference_mode()
    def __call__(self, inputs: Tensor, masks: Tensor) -> Tensor:
        """``inputs`` ``Long[N, L]``, ``masks`` ``Bool[N, L]`` → ``Float[N, L]``: masked inputs' log-probabilities."""
        device = next(self.model.parameters()).device
        attention = torch.ones_like(inputs) if self.pad_token_id is None else (inputs != self.pad_token_id).long()
        width = int(attention.any(0).nonzero().max()) + 1
        targets, scored = inputs[:, :width].to(device), masks[:, :width].to(device)
        ids = targets.masked_fill(scored, self.mask_token_id)
        was_training = self.model.training
        self.model.eval()
        try:
            logits = masked_logits(self.model, ids, attention[:, :width].to(device), scored).float()
        finally:
            self.model.train(was_training)
        chosen = logits.gather(-1, targets[scored][:, None]).squeeze(-1)
        log_probs = torch.zeros(inputs.shape, dtype=torch.float32)
        log_probs[:, :width][scored.cpu()] = (chosen - logits.logsumexp(-1)).cpu()
        return log_probs
