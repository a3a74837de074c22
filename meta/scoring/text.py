"""Scoring masked LMs on text with the cumulative marginal-likelihood estimate, over a target set of tokens.

:func:`target_documents` gives a ``score.target`` name's documents (see :mod:`.targets`),
:func:`score_text` scores them, and :func:`score_targets` does both for several names. A
target's documents carry its tokens as character spans in
``Document.entities``; only the tokens inside them are masked and scored, and every other
token stays visible to the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from maskpolicy.meta.scoring.estimate import MLLEstimate, estimate_mll
from maskpolicy.meta.scoring.estimators import Estimator, MLLError
from maskpolicy.meta.scoring.predictors import MaskedLMPredictor
from maskpolicy.meta.scoring.targets import check_target
from maskpolicy.tasks.base import CharSpan, Document, HeldOutText, Task, TaskError
from maskpolicy.tasks.data.tagging import merge_spans, tag_corpus
from maskpolicy.tasks.text.encoding import encode_documents, pad_rows

# what to change when no scored row holds a token of the target
_NO_TOKEN_FIX = {
    "all": "the held-out documents encode to no ordinary token; check the tokenizer",
    "entities": "their entity spans fall outside the scored rows: raise score.max_sequences or score.max_length, "
                "or use score.target=all",
    "answers": "the answer spans fall outside the scored rows: raise score.max_sequences or score.max_length",
}


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


def entity_documents(task: Task) -> tuple[Document, ...]:
    """The held-out documents with their entity spans: gold spans, else the task's ``tagger``'s. Label-free."""
    documents = heldout_documents(task)
    tagger = getattr(task, "tagger", None)
    spanned = tuple(tag_corpus(documents, tagger) if tagger is not None else documents)
    if not any(document.entities for document in spanned):
        raise TaskError(f"score.target=entities: task {task.name!r}'s held-out documents have no entity spans and "
                        "the task has no tagger; give it a tagger (e.g. tagger@task.tagger=rule) or use "
                        "score.target=all")
    return spanned


def answer_documents(task: Task) -> tuple[Document, ...]:
    """The distinct QA-dev contexts (first-seen order), each with its questions' answer spans. Uses dev labels.

    Questions without ``context`` and ``answer_start`` are left out; an answer not found at
    its offset is an error.
    """
    spans: dict[str, list[CharSpan]] = {}
    for example in task.qa("dev"):
        if example.context is None or example.answer_start is None:
            continue
        start, end = example.answer_start, example.answer_start + len(example.answer)
        if example.context[start:end] != example.answer:
            raise TaskError(f"task {task.name!r}: the QA-dev answer {example.answer!r} is not at answer_start={start} "
                            "of its context; fix the task's offsets")
        spans.setdefault(example.context, []).append((start, end))
    if not spans:
        raise TaskError(f"score.target=answers: task {task.name!r}'s QA-dev questions give no context and "
                        "answer_start to find their answers in; use score.target=entities or all")
    return tuple(Document(context, tuple(merge_spans(found))) for context, found in spans.items())


def target_documents(task: Task, target: str) -> tuple[Document, ...]:
    """The documents to score for ``target``; their ``entities`` spans mark its tokens (unused for ``all``)."""
    check_target(target, None, task.name, tractable=False)
    pick = {"all": heldout_documents, "entities": entity_documents, "answers": answer_documents}[target]
    return tuple(pick(task))


def score_text(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    documents: Sequence[Document],
    max_length: int,
    estimator: Estimator,
    max_sequences: int | None = 1000,
    batch_size: int = 256,
    seed: int = 0,
    target: str = "all",
) -> MLLEstimate:
    """Cumulative masked-prediction estimate of ``log p`` of ``documents``' target tokens under a masked LM.

    Documents are cut into rows of ``max_length`` tokens; the first ``max_sequences`` rows
    are scored with ``estimator``'s masks, drawn from ``seed``. ``target="all"`` scores every
    ordinary token; any other target scores the tokens overlapping the documents' ``entities``
    spans (as :func:`target_documents` sets them) and keeps the rest visible. Special tokens
    and padding are never masked nor scored. Rows without a target token add 0 and are
    counted in ``empty_sequences``.
    """
    if tokenizer.mask_token_id is None:
        raise TaskError("cumulative masked scoring needs a tokenizer with a mask token (a masked LM)")
    rows = encode_documents([d.text for d in documents], [d.entities for d in documents], tokenizer, max_length)
    batch = pad_rows(rows[:max_sequences], tokenizer.pad_token_id)
    scored = batch["maskable"] if target == "all" else batch["maskable"] & (batch["entity_ids"] >= 0)
    if not scored.any():
        raise MLLError(f"score.target={target}: none of the {len(scored)} scored rows holds a target token; "
                       f"{_NO_TOKEN_FIX.get(target, 'check the target spans')}")
    predictor = MaskedLMPredictor(model, tokenizer.mask_token_id, tokenizer.pad_token_id)
    return estimate_mll(predictor, batch["input_ids"], scored, estimator, torch.Generator().manual_seed(seed),
                        batch_size, target=target)


def score_targets(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    max_length: int,
    estimator: Estimator,
    targets: Sequence[str] = ("all",),
    max_sequences: int | None = 1000,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, MLLEstimate]:
    """One estimate per target name (``all``, ``entities``, ``answers``) of ``task``'s text, in the order given.

    Every target's masks are drawn from the same ``seed``. All targets' documents are
    found before any is scored, so a target the task cannot give fails before any work.
    """
    if isinstance(targets, str) or not targets:
        raise MLLError(f"targets must be a non-empty list of target names such as ['all', 'entities'], "
                       f"got {targets!r}")
    documents = {target: target_documents(task, target) for target in dict.fromkeys(targets)}
    return {target: score_text(model, tokenizer, found, max_length, estimator, max_sequences, batch_size, seed,
                               target) for target, found in documents.items()}
