"""What Liu, Hsu, Ravikumar & Risteski state about a task, with where each statement comes from.

Definition 1 of the paper (NeurIPS 2022 numbering): a task identifies an HMM when the map from
parameters to the task's optimal predictor is injective up to a permutation of the hidden
states. The paper's text could not be read here (see ``SEARCHED``); the NeurIPS numbering and
the gist of each discrete-HMM statement come from a third-party equation-level audit of the
NeurIPS paper, as issue 25 quotes it; the G-HMM statements were recalled in an earlier session
and no source read here numbers them. So every statement is ``verified=False``: its wording is
ours, not the paper's.

A statement is *stated* for the tasks it names. Two consequences are ours, and hold for any
predictor class that contains the truth: a task whose patterns include an identifying task's
identifies too (its optimum is optimal for every pattern), and a task whose patterns are part of a
non-identifying task's does not identify either (the other optimum of the larger task is optimal
for each of its patterns). The paper's model class (as issue 25 reads it) ties the predictor's start to the stationary
distribution of its transition, as the data's is; a free start is a larger class, which keeps every
non-identifying alternative but may add others, so only "does not identify" carries over to it.

A "does not identify" statement says that some HMM has another optimum; a measured model is a
different HMM. For the pairwise statements the gap is closed by a construction of ours, checked
exactly in the tests: on any discrete HMM with K ≥ 3 states and positive parameters, the emission
``S·O`` and transition ``S T S⁻¹``, with ``S = diag(π)^(−1/2) Q diag(π)^(1/2)`` and Q a small rotation
about √π, are stochastic, differ from the truth by more than a permutation, and keep every
pairwise joint ``Oᵀ diag(π) Tᵏ O`` and the stationary start, so every sum of pairwise tasks has a
continuum of optima on every such model. Claim 1's consequence is judged only on models whose
``T²`` has another stochastic square root (a condition checked per model).
"""

from __future__ import annotations

from dataclasses import dataclass

from maskpolicy.tasks.base import TaskError
from maskpolicy.tasks.tractable.masked_hmm import MaskedPredictionTask, MaskingPattern

STATIONARY, FREE = "stationary", "free"
STARTS = (STATIONARY, FREE)

NEURIPS = "NeurIPS 2022"
AUDIT = "numbering and gist from a third-party audit of the NeurIPS paper (quoted in issue 25); wording ours"
RECALLED = "arXiv 2202.09305, as recalled in an earlier session"
RECALL = "recalled, not read; no source read here numbers it"
UNNUMBERED = "unnumbered, recalled"   # how a statement without a number is named in tables
UNNUMBERED_SOURCE = f"an {UNNUMBERED} statement"   # … and as the source of a consequence

SEARCHED = (
    "2026-12-02, the search tool's stored corpora: its pages corpus holds the NeurIPS 2022 text "
    "(object.cloud.sdsc.edu …/ml-papers-txt/NeurIPS/2022/masked_prediction_a_parameter_identifiability_view__4e39fe53"
    ".txt), the arXiv 2202.09305 HTML (ar5iv.arxiv.org/html/2202.09305) and the OpenReview forum (id Hbvlb4D1aFC), "
    "but answers only with each page's opening (title, authors, abstract, first lines of the introduction) however "
    "the query names a theorem, so no statement's wording could be read; its code, docs and issues corpora hold no "
    "copy, LaTeX source or code of the paper. Earlier: this machine's files (the venv's site-packages, "
    "/usr/lib/python3*, /usr/share/doc, /usr/local/lib, /work) and the environment's package lists, without a copy"
)


@dataclass(frozen=True)
class Source:
    """Where a statement comes from: the paper's version, its number there, how it reached us."""

    version: str
    number: str | None
    via: str
    verified: bool = False

    @property
    def label(self) -> str:
        return f"{self.version}, {self.number or 'unnumbered'} ({self.via})"


@dataclass(frozen=True)
class Claim:
    """One statement about one task (a set of masking patterns over ``length`` adjacent tokens)."""

    kind: str
    patterns: frozenset[MaskingPattern]
    identifiable: bool
    statement: str
    conditions: tuple[str, ...]   # keys of the model's ``conditions()`` the statement assumes
    source: Source
    length: int = 3
    basis: str = "stated"         # "stated", or "follows from <number>" for our consequences

    def __post_init__(self) -> None:
        beyond = sorted({p.label for p in self.patterns if p.length > self.length})
        if beyond:
            raise TaskError(f"claim {self.source.number or self.statement[:40]!r} speaks of {self.length} tokens but "
                            f"its pattern(s) {beyond} use positions past x{self.length}")

    @property
    def verified(self) -> bool:
        return self.source.verified

    def applies_to(self, start: str) -> bool:
        """Whether the statement speaks of predictors with this start (see the module docstring)."""
        return start == STATIONARY or not self.identifiable


def _patterns(*pairs: tuple[tuple[int, ...], tuple[int, ...]]) -> frozenset[MaskingPattern]:
    return frozenset(MaskingPattern(visible, predicted) for visible, predicted in pairs)


def both_ways(a: int, b: int) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    return ((a,), (b,)), ((b,), (a,))


DISCRETE_RANK = ("K <= V", "emission full column rank", "transition full rank")
GAUSSIAN_RANK = ("K <= d", "means linearly independent", "transition full rank")
CLAIM_1 = Source(NEURIPS, "Claim 1", AUDIT)
CLAIM_1_STATEMENT = "distinct stochastic transition matrices can have the same matrix power (e.g. the same square)"

CLAIMS: tuple[Claim, ...] = (
    Claim("discrete", _patterns(((0,), (1,))), False,
          "Theorem 2: on discrete HMMs the pairwise task x1 → x2 does not identify the parameters",
          (), Source(NEURIPS, "Theorem 2", AUDIT), length=2),
    Claim("discrete", _patterns(*both_ways(0, 1), *both_ways(1, 2), *both_ways(0, 2)), False,
          "Theorem 4: on discrete HMMs even all pairwise tasks on three adjacent tokens together, "
          "x1 ↔ x2 + x2 ↔ x3 + x1 ↔ x3, can fail to identify the parameters",
          (), Source(NEURIPS, "Theorem 4", AUDIT)),
    Claim("discrete", _patterns(((0,), (1, 2))), True,
          "Theorem 5: on discrete HMMs predicting a two-token tensor, x1 → x2⊗x3, identifies the parameters up to a "
          "permutation of the states (tensor-decomposition uniqueness), given a full-rank transition and an "
          "emission matrix of full column rank (K ≤ V)",
          DISCRETE_RANK, Source(NEURIPS, "Theorem 5", AUDIT)),
    Claim("gaussian", _patterns(*both_ways(0, 1)), True,
          "G-HMM (recalled): with conditionally Gaussian emissions even pairwise prediction both ways, x1 ↔ x2, "
          "identifies the parameters, given linearly independent means (K ≤ d) and a full-rank transition; the "
          "posterior is a softmax of the visible token, which discrete tokens do not give",
          GAUSSIAN_RANK, Source(RECALLED, None, RECALL), length=2),
    Claim("gaussian", _patterns(((0,), (1, 2))), True,
          "G-HMM (recalled): predicting two tokens jointly, x1 → x2⊗x3, identifies a G-HMM's parameters",
          GAUSSIAN_RANK, Source(RECALLED, None, RECALL)),
    Claim("gaussian", _patterns(((0,), (2,))), False,
          f"ours, from Claim 1 ({CLAIM_1_STATEMENT}): x1 → x3 sees the chain only through T², so on a G-HMM "
          "whose T² has another stochastic square root that root predicts as well (with the same means and the "
          "same stationary start); where T² has no other root no statement applies",
          (*GAUSSIAN_RANK, "T² has another stochastic square root"), CLAIM_1, basis="follows from Claim 1"),
)


def claim_for(kind: str, task: MaskedPredictionTask, start: str = STATIONARY) -> Claim | None:
    """The statement about ``task`` on a ``kind`` HMM for predictors with ``start``, or None where none applies.

    A statement about exactly these patterns first; else a consequence (module docstring): an
    identifying statement about a subset of them, or a non-identifying one about a superset.
    """
    patterns = frozenset(task.patterns)
    claims = [claim for claim in CLAIMS if claim.kind == kind and claim.applies_to(start)]
    for claim in claims:
        if claim.patterns == patterns:
            return claim
    for claim in claims:
        implied = claim.patterns < patterns if claim.identifiable else patterns < claim.patterns
        if implied and claim.basis == "stated":
            return Claim(kind, patterns, claim.identifiable, claim.statement, claim.conditions, claim.source,
                         max(claim.length, task.length),
                         basis=f"follows from {claim.source.number or UNNUMBERED_SOURCE}")
    return None


def conditions_hold(claim: Claim, conditions: dict[str, bool]) -> bool:
    """Whether a model meets every condition ``claim`` assumes."""
    return all(conditions.get(name, False) for name in claim.conditions)

