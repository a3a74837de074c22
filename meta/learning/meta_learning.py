"""Meta-learning a masking policy from downstream feedback (Ye et al., EMNLP 2021).

One outer step:

1. draw K batches of contexts (texts the QA-train questions are about) and the
   questions about them;
2. in every context, a random candidate set of tokens (``candidate_rate``) is masked;
   the policy's soft scores weight the candidates' masked-LM losses (a softmax over a
   row's candidates, times their number, so weights average 1);
3. K differentiable SGD steps of the language model on those weighted losses, then the
   outer loss (``outer``): ``qa``, the cloze-QA loss on the questions (closed-book: noise for a
   tiny model on real text), or ``answers``, the targeted masked-LM loss of the questions' answer
   tokens in those same contexts (every answer token masked, the rest of the context given: how well
   the updated model fills in what the questions ask about); its gradient w.r.t. the policy (through
   the inner steps, :func:`.inner.hypergradient`) updates the policy with Adam;
4. the language model itself takes one ordinary AdamW masked-LM step on a corpus batch
   masked by the current policy, so the policy keeps learning as the model learns;
   ``refresh_every`` re-initialises the model every N outer steps.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from maskpolicy.meta.learning.inner import Engine, InnerBatch, MetaStep, hypergradient
from maskpolicy.meta.learning.supervised import questions as split_questions
from maskpolicy.policies import IGNORE_INDEX, LearnedPolicy, TokenBatch
from maskpolicy.policies.ops import select_count
from maskpolicy.tasks.base import QAExample, Task, TaskError
from maskpolicy.tasks.data.tagging import merge_spans
from maskpolicy.tasks.text.encoding import encode_documents, pad_rows, token_batch
from maskpolicy.tasks.text.features import FeatureSpec
from maskpolicy.tasks.training.models import ModelSpec
from maskpolicy.tasks.training.pretraining import EncoderCorruption
from maskpolicy.tasks.training.qa import encode_qa

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetaLearningOptions:
    """``learning.meta_learning``: its values and their meaning live in ``conf/learning/default.yaml``."""

    steps: int
    engine: Engine
    inner_steps: int
    inner_lr: float
    first_order: bool
    policy_lr: float
    batch_size: int
    candidate_rate: float
    lm_learning_rate: float
    refresh_every: int
    outer: str = "qa"

    def __post_init__(self) -> None:
        if self.outer not in OUTER_OBJECTIVES:
            raise ValueError(f"learning.meta_learning.outer must be one of {', '.join(OUTER_OBJECTIVES)}, got "
                             f"{self.outer!r}")


OUTER_OBJECTIVES = ("qa", "answers")


@dataclass(frozen=True)
class MetaData:
    """Contexts encoded with features, the cloze-QA rows of the questions about each, and ``Bool[T]`` per
    context: its tokens inside an answer of those questions (the ``answers`` objective's targets)."""

    contexts: list[dict]
    questions: list[list[dict]]
    corpus: list[dict]
    answers: list[Tensor] | None = None


def meta_data(task: Task, split: str, tokenizer: PreTrainedTokenizerBase, spec: ModelSpec,
              features: FeatureSpec) -> MetaData:
    """Groups ``split``'s questions by context; contexts longer than one row keep their first window."""
    by_context: dict[str, list[QAExample]] = defaultdict(list)
    for example in split_questions(task, split):
        if example.context is not None:
            by_context[example.context].append(example)
    if not by_context:
        raise TaskError(f"task {task.name!r} gives no question contexts for split {split!r}; meta-learning needs "
                        "QAExample.context to pair texts with the questions about them")
    entities = {document.text: document.entities for document in task.corpus()}
    texts = list(by_context)
    contexts = encode_documents(texts, [entities.get(t, ()) for t in texts], tokenizer, spec.max_length, "truncate",
                                features=features)
    questions = [encode_qa(by_context[t], tokenizer, "masked_lm", spec.max_length) for t in texts]
    corpus_texts = [d.text for d in task.corpus()]
    corpus = encode_documents(corpus_texts, [d.entities for d in task.corpus()], tokenizer, spec.max_length,
                              spec.overflow, features=features)
    # the same tokenisation with the answers as spans marks each context's answer tokens
    spans = [merge_spans((q.answer_start, q.answer_start + len(q.answer)) for q in by_context[t]
                         if q.answer_start is not None) for t in texts]
    marked = encode_documents(texts, spans, tokenizer, spec.max_length, "truncate")
    answers = [row["entity_ids"] >= 0 for row in marked]
    skipped = sum(not bool(a.any()) for a in answers)
    if skipped:
        log.info("meta-learning: %d of %d contexts have no answer token in their first window (the answers "
                 "objective skips them)", skipped, len(answers))
    return MetaData(contexts, questions, corpus, answers)


def candidate_weights(policy: LearnedPolicy, batch: TokenBatch, candidates: Tensor) -> Tensor:
    """``Float[B, L]``: softmax of the policy's logits over each row's candidates, times their count."""
    logits = policy.logits(batch).masked_fill(~candidates, float("-inf"))
    count = candidates.sum(1, keepdim=True).clamp(min=1)
    weights = torch.softmax(logits, dim=1).nan_to_num(0.0) * count
    return torch.where(candidates, weights, 0.0)


def inner_batch(policy: LearnedPolicy, rows: Sequence[dict], tokenizer: PreTrainedTokenizerBase, rate: float,
                generator: torch.Generator) -> InnerBatch:
    """A masked-LM batch of ``rows``: uniform candidates at ``rate`` all replaced by [MASK], weighted by the policy."""
    padded = pad_rows(rows, tokenizer.pad_token_id)
    batch = token_batch(padded)
    keys = torch.rand(batch.input_ids.shape, generator=generator)
    candidates = select_count(keys, batch.maskable, (batch.maskable.sum(1) * rate).round().long().clamp(min=1))
    candidates &= batch.maskable
    return InnerBatch(
        input_ids=batch.input_ids.masked_fill(candidates, tokenizer.mask_token_id),
        attention_mask=padded["attention_mask"],
        labels=batch.input_ids.masked_fill(~candidates, IGNORE_INDEX),
        weights=candidate_weights(policy, batch, candidates),
    )


def train_meta_learning(policy: LearnedPolicy, data: MetaData, spec: ModelSpec, tokenizer: PreTrainedTokenizerBase,
                        options: MetaLearningOptions, seed: int = 0) -> dict[str, list[float]]:
    """Meta-learns ``policy`` in place; returns the outer and inner losses of every step."""
    generator = torch.Generator().manual_seed(seed)
    model = _fresh_model(spec, tokenizer, seed)
    lm_optimizer = torch.optim.AdamW(model.parameters(), lr=options.lm_learning_rate)
    policy_optimizer = torch.optim.Adam(policy.scorer.parameters(), lr=options.policy_lr)
    corruption = EncoderCorruption(tokenizer)
    policy.scorer.train()
    history: dict[str, list[float]] = {"outer_loss": [], "inner_loss": []}
    for step in range(options.steps):
        if options.refresh_every and step and step % options.refresh_every == 0:
            model = _fresh_model(spec, tokenizer, seed + step)
            lm_optimizer = torch.optim.AdamW(model.parameters(), lr=options.lm_learning_rate)
        meta_step = _outer_step(policy, model, data, tokenizer, options, generator)
        for parameter, grad in zip(policy.scorer.parameters(), meta_step.policy_grads, strict=True):
            parameter.grad = grad
        policy_optimizer.step()
        policy_optimizer.zero_grad()
        _language_model_step(model, lm_optimizer, policy, data, tokenizer, corruption, options.batch_size, generator)
        history["outer_loss"].append(meta_step.outer_loss)
        history["inner_loss"].append(sum(meta_step.inner_losses) / len(meta_step.inner_losses))
        if step % 25 == 0:
            log.info("meta-learning step %d: outer (%s) loss %.4f", step, options.outer, meta_step.outer_loss)
    policy.scorer.eval()
    return history


def _outer_step(policy: LearnedPolicy, model: PreTrainedModel, data: MetaData, tokenizer: PreTrainedTokenizerBase,
                options: MetaLearningOptions, generator: torch.Generator) -> MetaStep:
    pool = torch.arange(len(data.contexts))
    if options.outer == "answers":  # contexts whose first window holds an answer token: the outer loss needs one
        pool = pool[torch.tensor([bool(a.any()) for a in data.answers], dtype=torch.bool)]
        if not len(pool):
            raise TaskError("no context has an answer token in its first window; the answers objective has nothing "
                            "to score (use learning.meta_learning.outer=qa, or a longer model.max_length)")
    picks = pool[torch.randperm(len(pool), generator=generator)][: options.batch_size * options.inner_steps]
    groups = picks.chunk(options.inner_steps)
    batches = [inner_batch(policy, [data.contexts[i] for i in group.tolist()], tokenizer, options.candidate_rate,
                           generator) for group in groups]
    outer = outer_batch(data, picks.tolist(), tokenizer, options.outer)
    return hypergradient(model, list(policy.scorer.parameters()), batches, outer, engine=options.engine,
                         inner_lr=options.inner_lr, first_order=options.first_order)


def outer_batch(data: MetaData, picks: Sequence[int], tokenizer: PreTrainedTokenizerBase, objective: str) -> dict:
    """The outer loss's batch for the picked contexts: ``qa``, their questions as cloze rows; ``answers``, the
    contexts themselves with every answer token replaced by [MASK] and labelled (-100 elsewhere)."""
    if objective == "qa":
        questions = [row for i in picks for row in data.questions[i]]
        return pad_rows([{"input_ids": q["input_ids"], "labels": q["labels"]} for q in questions],
                        tokenizer.pad_token_id)
    if data.answers is None:
        raise TaskError("the answers objective needs each context's answer tokens (MetaData.answers)")
    rows = []
    for i in picks:
        ids, answer = data.contexts[i]["input_ids"], data.answers[i] & ~data.contexts[i]["special"]
        rows.append({"input_ids": ids.masked_fill(answer, tokenizer.mask_token_id),
                     "labels": ids.masked_fill(~answer, IGNORE_INDEX)})
    return pad_rows(rows, tokenizer.pad_token_id)


def _language_model_step(model: PreTrainedModel, optimizer: torch.optim.Optimizer, policy: LearnedPolicy,
                         data: MetaData, tokenizer: PreTrainedTokenizerBase, corruption: EncoderCorruption,
                         batch_size: int, generator: torch.Generator) -> None:
    """One plain masked-LM step on corpus rows masked by the current policy (as pre-training would)."""
    picks = torch.randperm(len(data.corpus), generator=generator)[:batch_size].tolist()
    padded = pad_rows([data.corpus[i] for i in picks], tokenizer.pad_token_id)
    mask = policy.select(token_batch(padded), generator)
    loss = model(**corruption(padded, mask, generator)).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def _fresh_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.build_model(tokenizer)
    model.train()
    return model
