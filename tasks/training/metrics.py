"""SQuAD-style answer metrics: exact match and token F1 after normalisation."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-cases, drops punctuation and English articles, squeezes whitespace."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(a) for a in answers))


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """Best token-overlap F1 of ``prediction`` against any gold answer."""
    predicted = normalize_answer(prediction).split()

    def f1(answer: str) -> float:
        gold = normalize_answer(answer).split()
        common = sum((Counter(predicted) & Counter(gold)).values())
        if not predicted or not gold:
            return float(predicted == gold)
        if common == 0:
            return 0.0
        precision, recall = common / len(predicted), common / len(gold)
        return 2 * precision * recall / (precision + recall)

    return max(f1(a) for a in answers)


def qa_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean exact match and token F1 over a split."""
    if not predictions:
        return {"em": 0.0, "f1": 0.0}
    n = len(predictions)
    return {
        "em": sum(exact_match(p, a) for p, a in zip(predictions, answers, strict=True)) / n,
        "f1": sum(token_f1(p, a) for p, a in zip(predictions, answers, strict=True)) / n,
    }
