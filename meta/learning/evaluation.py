"""How well a policy's masks hit the answers of held-out questions, next to the heuristics.

Precision and recall of the masked tokens against the answer tokens of another split's
questions; the learned policy (sampled and top-k) is compared with ``entity`` and
``random`` masking at the same rate, so every contender spends the same budget.
"""

from __future__ import annotations

import torch

from maskpolicy.meta.learning.supervised import AnswerRows
from maskpolicy.meta.results.schema import Evaluation, MaskQuality
from maskpolicy.policies import EntityPolicy, LearnedPolicy, MaskingPolicy, RandomPolicy
from maskpolicy.tasks.text.encoding import token_batch


def mask_quality(policy: MaskingPolicy, data: AnswerRows, pad_token_id: int, seed: int = 0) -> MaskQuality:
    """Precision and recall of the masked tokens against the answer tokens, over all rows."""
    padded, labels = data.batch(range(len(data.rows)), pad_token_id)
    batch = token_batch(padded)
    mask = policy.select(batch, torch.Generator().manual_seed(seed))
    hits = int((mask & labels).sum())
    masked, answers = int(mask.sum()), int((labels & batch.maskable).sum())
    return MaskQuality(precision=hits / max(masked, 1), recall=hits / max(answers, 1), masked_tokens=masked,
                       answer_tokens=answers)


def compare_with_heuristics(policy: LearnedPolicy, data: AnswerRows, pad_token_id: int, seed: int = 0) -> Evaluation:
    """Mask quality of the learned policy (sampled and top-k) next to ``entity`` and ``random`` at its rate."""
    greedy = LearnedPolicy(policy.rate, sampling="topk", scorer=policy.scorer, context=policy.context)
    # entity masking tops up with random tokens where a row has too few entities, to spend the same budget
    entity, random = EntityPolicy(policy.rate, shortfall="top_up"), RandomPolicy(policy.rate)
    return Evaluation(
        split=data.split,
        learned=mask_quality(policy, data, pad_token_id, seed),
        learned_topk=mask_quality(greedy, data, pad_token_id, seed),
        entity=mask_quality(entity, data, pad_token_id, seed),
        random=mask_quality(random, data, pad_token_id, seed),
    )
