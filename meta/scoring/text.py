"""Scoring masked LMs on text with the cumulative marginal-likelihood estimate."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from maskpolicy.meta.scoring.estimate import MLLEstimate, estimate_mll
from maskpolicy.meta.scoring.estimators import Estimator
from maskpolicy.meta.scoring.predictors import MaskedLMPredictor
from maskpolicy.tasks.base import Document, HeldOutText, Task, TaskError
from maskpolicy.tasks.text.encoding import encode_documents, pad_rows


def heldout_documents(task: Task) -> Sequence[Document]:
    """The task's held-out text; a clear error for tasks that have none."""
    if not isinstance(task, HeldOutText):
        raise TaskError(
            f"task {task.name!r} has no held-out text to score; give it a heldout() method or set score.enabled=false"
        )
    documents = task.heldout()
    if not documents:
        raise TaskError(f"task {task.name!r} returned no held-out documents to score")
    return documents


def score_text(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    documents: Sequence[Document],
    max_length: int,
    estimator: Estimator,
    max_sequences: int | None = 1000,
    batch_size: int = 256,
    seed: int = 0,
) -> MLLEstimate:
    """Cumulative masked-prediction estimate of ``log p`` of held-out text under a masked LM.

    Documents are cut into rows of ``max_length`` tokens; the first ``max_sequences``
    rows are scored with ``estimator``'s masks, drawn from ``seed``. Special tokens and
    padding are never masked nor scored, so D is a row's number of ordinary tokens.
    """
    if tokenizer.mask_token_id is None:
        raise TaskError("cumulative masked scoring needs a tokenizer with a mask token (a masked LM)")
    rows = encode_documents([d.text for d in documents], [() for _ in documents], tokenizer, max_length)
    batch = pad_rows(rows[:max_sequences], tokenizer.pad_token_id)
    predictor = MaskedLMPredictor(model, tokenizer.mask_token_id, tokenizer.pad_token_id)
    return estimate_mll(predictor, batch["input_ids"], batch["maskable"], estimator,
                        torch.Generator().manual_seed(seed), batch_size)
