"""What Liu, Hsu, Ravikumar & Risteski (NeurIPS 2022) state about a task, as far as it was checked here.

The paper's text could not be retrieved in this offline environment (only its abstract:
identifiability "is governed by the task difficulty, which is determined by the choice of data
model and the amount of tokens to predict"). The statements below are recalled from the paper,
with the theorem numbers of the arXiv version as recalled; ``verified`` says whether the
wording was checked against the text (none was). Tasks the paper is not recalled to settle
have no claim; they are measured all the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from maskpolicy.tasks.tractable.masked_hmm import MaskedPredictionTask, MaskingPattern


@dataclass(frozen=True)
class Claim:
    identifiable: bool
    statement: str
    conditions: tuple[str, ...]   # keys of the model's ``conditions()`` the statement assumes
    verified: bool = False


def _patterns(*pairs: tuple[tuple[int, ...], tuple[int, ...]]) -> frozenset[MaskingPattern]:
    return frozenset(MaskingPattern(visible, predicted) for visible, predicted in pairs)


CLAIMS: dict[tuple[str, frozenset[MaskingPattern]], Claim] = {
    ("discrete", _patterns(((0,), (1,)))): Claim(
        False, "Theorem 1 (recalled): on discrete HMMs the pairwise task x1 → x2 does not identify the parameters",
        ()),
    ("discrete", _patterns(((0,), (1,)), ((1,), (0,)))): Claim(
        False, "Theorem 1 (recalled): on discrete HMMs pairwise prediction, even both ways (x1 ↔ x2), does not "
               "identify the parameters", ()),
    ("discrete", _patterns(((0,), (1, 2)))): Claim(
        True, "Theorem 2 (recalled): on discrete HMMs predicting two tokens jointly, x1 → x2⊗x3, identifies the "
              "parameters up to a permutation of the states (Kruskal uniqueness of the tensor decomposition), given "
              "a full-rank transition and an emission matrix of full column rank (K ≤ V)",
        ("K <= V", "emission full column rank", "transition full rank")),
    ("gaussian", _patterns(((0,), (1,)), ((1,), (0,)))): Claim(
        True, "Recalled (G-HMM section): with conditionally Gaussian emissions even pairwise prediction both ways, "
              "x1 ↔ x2, identifies the parameters, given linearly independent means (K ≤ d) and a full-rank "
              "transition; the posterior is a softmax of the visible token, which discrete tokens do not give",
        ("K <= d", "means linearly independent", "transition full rank")),
    ("gaussian", _patterns(((0,), (1, 2)))): Claim(
        True, "Recalled (G-HMM section): predicting two tokens jointly, x1 → x2⊗x3, identifies a G-HMM's parameters "
              "(the tensor-decomposition argument of the discrete case)",
        ("K <= d", "means linearly independent", "transition full rank")),
}


def claim_for(kind: str, task: MaskedPredictionTask) -> Claim | None:
    """The paper's statement about ``task`` on a ``kind`` HMM, or None where none is recalled."""
    return CLAIMS.get((kind, frozenset(task.patterns)))


def conditions_hold(claim: Claim, conditions: dict[str, bool]) -> bool:
    """Whether a model meets every condition ``claim`` assumes."""
    return all(conditions.get(name, False) for name in claim.conditions)
