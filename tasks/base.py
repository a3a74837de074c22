"""What a task provides: a pre-training corpus and a downstream QA dataset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from torch import Tensor

Split = Literal["train", "dev", "test"]
SPLITS: tuple[Split, ...] = ("train", "dev", "test")
CharSpan = tuple[int, int]


class TaskError(ValueError):
    """A task was configured with, or found, data it cannot use."""


@dataclass(frozen=True)
class Document:
    """One pre-training text.

    ``entities`` are gold entity spans as ``[start, end)`` character offsets into
    ``text``, sorted and non-overlapping; empty when the task has no gold spans
    (a tagger then finds them).
    """

    text: str
    entities: tuple[CharSpan, ...] = ()


@dataclass(frozen=True)
class QAExample:
    """One closed-book question.

    ``subject`` names what the question is about (a person, an article) so splits
    can keep subjects disjoint. ``context`` and ``answer_start`` locate the answer
    in a pre-training text when the task knows it (SQuAD's character offsets);
    they are what direct supervision of a policy learns from.
    """

    question: str
    answer: str
    subject: str
    context: str | None = None
    answer_start: int | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)


@runtime_checkable
class Task(Protocol):
    """A pre-training corpus and a closed-book QA task over the same facts."""

    name: str

    def corpus(self) -> Sequence[Document]:
        """The intermediate pre-training corpus."""
        ...

    def qa(self, split: Split) -> Sequence[QAExample]:
        """Questions of one split; subjects of different splits are disjoint."""
        ...


@runtime_checkable
class HeldOutText(Protocol):
    """A task that can give text the pre-training corpus does not contain, for label-free scoring."""

    def heldout(self) -> Sequence[Document]:
        """Documents to score a pre-trained model on."""
        ...


@runtime_checkable
class GeneralText(Protocol):
    """A task that can give general text in its language holding none of its QA facts.

    A base model is pre-trained on it once (random masking) so that intermediate
    pre-training on the task's corpus starts from a model that already knows the language.
    """

    def general_corpus(self, size: int) -> Sequence[Document]:
        """About ``size`` units of general text (what a unit is, people or paragraphs, is the task's to say)."""
        ...


@runtime_checkable
class TitledText(Protocol):
    """A task whose documents come from titled articles (SQuAD): general text sharing a title is dropped."""

    def titles(self) -> Sequence[str]:
        """The articles' titles."""
        ...


@runtime_checkable
class TractableTask(Protocol):
    """A model whose likelihood and masked conditionals are exact, with data drawn from it.

    The marginal-likelihood estimator is proven on these before it is trusted on a
    masked LM. ``data()`` is ``[B, D]`` (real vectors or token ids).
    """

    name: str

    def data(self) -> Tensor:
        """The sequences to score, ``[B, D]``."""
        ...

    def log_likelihood(self, data: Tensor, observed: Tensor | None = None) -> Tensor:
        """Exact ``log p(x)`` per row, ``Float64[B]``; with ``observed`` (``Bool[B, D]``), the marginal
        ``log p(x_observed)`` of each row's observed positions (0 for a row with none)."""
        ...

    def masked_log_probs(self, inputs: Tensor, masks: Tensor) -> Tensor:
        """Exact ``log p(x_j | x_{not M})`` at every masked ``j``, ``Float64[N, D]``; a ``MaskedPredictor``."""
        ...

    def arrays(self) -> dict[str, np.ndarray]:
        """The data and the true parameters, for ``data.npz``."""
        ...
