"""Direct supervision of a learned policy: predict the spans the downstream task asks about.

The labels are the answer spans of the QA pairs (each question's ``context`` and
``answer_start``): bioworld's gold answers in a person's biography, SQuAD's answer
offsets. The scorer is trained with a listwise loss (each row's softmax onto its answer
tokens) or a per-token binary cross-entropy over maskable tokens (``auto``: whichever measured better for the
policy's inputs). The same answer rows of
another split judge every learned policy (:mod:`.evaluation`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from maskpolicy.policies import LearnedPolicy
from maskpolicy.tasks.base import SPLITS, CharSpan, QAExample, Split, Task, TaskError
from maskpolicy.tasks.data.tagging import merge_spans
from maskpolicy.tasks.text.context import StateSource
from maskpolicy.tasks.text.encoding import encode_documents, pad_rows, token_batch
from maskpolicy.tasks.text.features import FeatureSpec, word_counts

ALL = "all"  # every split's questions: a task used only to train or only to judge a policy


@dataclass(frozen=True)
class AnswerRows:
    """The contexts of one split encoded with features and, per row, ``Bool[T]``: is the token inside an answer."""

    split: Split | str
    rows: list[dict]
    answers: list[Tensor]

    def batch(self, index: Sequence[int], pad_token_id: int) -> tuple[dict, Tensor]:
        """The padded batch of the given rows and its ``Bool[B, L]`` answer labels."""
        labels = torch.nn.utils.rnn.pad_sequence([self.answers[i] for i in index], batch_first=True)
        return pad_rows([self.rows[i] for i in index], pad_token_id), labels


def questions(task: Task, split: Split | str) -> list[QAExample]:
    """The questions of ``split``, or of every split for ``"all"``."""
    if split == ALL:
        return [example for name in SPLITS for example in task.qa(name)]
    return list(task.qa(split))


def answer_spans(task: Task, split: Split | str) -> dict[str, list[CharSpan]]:
    """Per context text, the merged character spans of the answers of ``split``'s questions (``"all"``: every split)."""
    spans: dict[str, list[CharSpan]] = defaultdict(list)
    for example in questions(task, split):
        if example.context is not None and example.answer_start is not None:
            spans[example.context].append((example.answer_start, example.answer_start + len(example.answer)))
    if not spans:
        raise TaskError(
            f"task {task.name!r} gives no answer offsets (QAExample.context and answer_start) for split "
            f"{split!r}; direct supervision needs them"
        )
    return {context: merge_spans(found) for context, found in spans.items()}


def encode_answers(
    task: Task, split: Split | str, tokenizer: PreTrainedTokenizerBase, max_length: int, spec: FeatureSpec
) -> AnswerRows:
    """The contexts of ``split`` encoded with features; entity features come from the corpus's entity spans."""
    by_context = answer_spans(task, split)
    contexts = list(by_context)
    entities = {document.text: document.entities for document in task.corpus()}
    entity_spans = [entities.get(context, ()) for context in contexts]
    rows = encode_documents(contexts, entity_spans, tokenizer, max_length, features=spec)
    # the same tokenisation with the answers as spans marks the answer tokens, window by window
    answer_windows = encode_documents(contexts, [by_context[c] for c in contexts], tokenizer, max_length)
    return AnswerRows(split, rows, [window["entity_ids"] >= 0 for window in answer_windows])


def feature_spec(task: Task, names: Sequence[str], context: StateSource | None = None) -> FeatureSpec:
    """Features named ``names``, word frequencies counted on the task's pre-training corpus; with ``context``,
    rows also carry its contextual states."""
    return FeatureSpec(tuple(names), word_counts(document.text for document in task.corpus()), context=context)


LOSSES = ("auto", "bce", "listwise")


def resolve_loss(loss: str, policy: LearnedPolicy) -> str:
    """``learning.supervised.loss`` checked; ``auto`` is what measured best on held-out SQuAD articles
    (docs/learned.md): ``listwise`` for a scorer of word features alone, ``bce`` for one that also reads contextual
    states."""
    if loss not in LOSSES:
        raise ValueError(f"learning.supervised.loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if loss == "auto":
        return "bce" if policy.context is not None else "listwise"
    return loss


def supervised_loss(logits: Tensor, labels: Tensor, maskable: Tensor, loss: str) -> Tensor:
    """``bce``: every maskable token classified answer or not. ``listwise``: each row's softmax over its
    maskable tokens puts its mass on the row's answer tokens — the ranking that per-row top-k and Gumbel
    top-k sampling read, with every row weighted alike however many answers it has."""
    if loss == "bce":
        return torch.nn.functional.binary_cross_entropy_with_logits(logits[maskable], labels[maskable].float())
    answers = labels & maskable
    rows = answers.any(1)
    log_probs = torch.log_softmax(logits[rows].masked_fill(~maskable[rows], float("-inf")), dim=1)
    per_row = -(log_probs.masked_fill(~answers[rows], 0.0).sum(1) / answers[rows].sum(1))
    return per_row.mean() if rows.any() else logits.sum() * 0.0


def train_supervised(
    policy: LearnedPolicy,
    data: AnswerRows,
    pad_token_id: int,
    epochs: int = 10,
    learning_rate: float = 3e-3,
    batch_size: int = 32,
    weight_decay: float = 0.0,
    loss: str = "auto",
    seed: int = 0,
) -> list[float]:
    """Fits the policy's scorer (each member of an ensemble) to the answer labels by ``loss`` (see
    :func:`resolve_loss`); returns the mean loss of every epoch (per member)."""
    loss = resolve_loss(loss, policy)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(policy.scorer.parameters(), lr=learning_rate, weight_decay=weight_decay)
    policy.scorer.train()
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(data.rows), generator=generator).tolist()
        epoch = []
        for start in range(0, len(order), batch_size):
            padded, labels = data.batch(order[start:start + batch_size], pad_token_id)
            batch = token_batch(padded)
            # an ensemble's members each learn from their own loss: independent scorers, the same batches
            value = sum(supervised_loss(logits, labels, batch.maskable, loss) for logits in policy.member_logits(batch))
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            epoch.append(value.item() / policy.members)
        losses.append(sum(epoch) / len(epoch))
    policy.scorer.eval()
    return losses
