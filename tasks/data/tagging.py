"""Entity taggers: text → character spans of names, places, dates and numbers.

The entity policy masks whole entity spans; these taggers find the spans when a
task has no gold ones. :class:`RuleTagger` is built in (regular expressions, no
model); :class:`SpacyTagger` uses a spaCy pipeline when it is installed;
:func:`entity_spans` prefers a document's own gold spans over any tagger.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from typing import Protocol, runtime_checkable

from maskpolicy.policies.features import FUNCTION_WORDS
from maskpolicy.tasks.base import CharSpan, Document, TaskError


@runtime_checkable
class Tagger(Protocol):
    """Maps a text to entity spans: sorted, non-overlapping ``[start, end)`` offsets."""

    def __call__(self, text: str) -> list[CharSpan]: ...


def merge_spans(spans: Iterable[CharSpan]) -> list[CharSpan]:
    """Sorts spans, drops empty ones and unites overlapping ones. Touching spans stay apart."""
    merged: list[CharSpan] = []
    for start, end in sorted(span for span in spans if span[0] < span[1]):
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


_MONTHS = (
    "January|February|March|April|May|June|July|August|September|October|November|December"
    "|Jan\\.|Feb\\.|Mar\\.|Apr\\.|Jun\\.|Jul\\.|Aug\\.|Sept?\\.|Oct\\.|Nov\\.|Dec\\."
)
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
_YEAR = r"\d{4}"
_DATE = re.compile(
    rf"\b(?:(?:{_MONTHS})\s+{_DAY}(?:,?\s+{_YEAR})?(?!\d)"  # February 7, 2016 / February 7
    rf"|{_DAY}\s+(?:of\s+)?(?:{_MONTHS})(?:,?\s+{_YEAR}\b)?"  # 7 February 2016
    rf"|(?:{_MONTHS})(?:,?\s+{_YEAR}\b)?)"  # February 2016 / February
)
_PLAIN_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:[.:]\d+)?"  # 1,234.5 / 3.14 / 4:51
_NUMBER = re.compile(
    rf"(?<![\w.,])[$£€]?(?:{_PLAIN_NUMBER})(?:[–—-](?:{_PLAIN_NUMBER}))?"  # 24–10, 2015-16
    r"(?:st|nd|rd|th|s|%)?(?!\w)"
    r"(?:\s+(?:hundred|thousand|million|billion|trillion)\b)?"
)
# A word: letters or digits, joined by inner apostrophes ("Levi's"), hyphens or dots ("U.S").
_WORD = re.compile(r"\w+(?:['’.-]\w+)*")
_CONNECTORS = frozenset({"of", "de", "del", "der", "di", "da", "du", "la", "le", "van", "von", "y"})
# Function words are stripped from the start of a capitalised run ("The Broncos" → "Broncos"),
# so a lone one ("However", "In") is never an entity.
_FUNCTION_WORDS = frozenset(FUNCTION_WORDS)


class RuleTagger:
    """A fast, model-free tagger for English text.

    Finds capitalised multi-word names ("Santa Clara", "University of Chicago",
    "Levi's Stadium", "NFL"), dates ("February 7, 2016", "7 February 2016",
    "February"), years and numbers ("50", "1,234.5", "24–10", "$5 million",
    "4:51", "50th"). Leading function words are stripped from capitalised runs,
    so a sentence-initial "The" or "However" is never tagged on its own.
    Overlapping matches are united (a month found both as a capitalised word and
    as part of a date gives one date span).

    Args:
        names: tag capitalised names.
        dates: tag dates and month names.
        numbers: tag numbers, years, scores and amounts.
    """

    def __init__(self, names: bool = True, dates: bool = True, numbers: bool = True) -> None:
        self.names, self.dates, self.numbers = names, dates, numbers

    def __call__(self, text: str) -> list[CharSpan]:
        spans: list[CharSpan] = []
        if self.names:
            spans += capitalised_spans(text)
        if self.dates:
            spans += [m.span() for m in _DATE.finditer(text)]
        if self.numbers:
            spans += [m.span() for m in _NUMBER.finditer(text)]
        return merge_spans(spans)


def capitalised_spans(text: str) -> list[CharSpan]:
    """Runs of capitalised words, joined by single spaces or by connectors ("of", "de")."""
    words = [m for m in _WORD.finditer(text) if not m.group()[0].isdigit()]
    spans: list[CharSpan] = []
    run: list[re.Match[str]] = []
    for word in [*words, None]:
        if word is not None and _continues(text, run, word):
            run.append(word)
            continue
        spans.extend(_trimmed(run))
        run = [word] if word is not None and word.group()[0].isupper() else []
    return spans


def _continues(text: str, run: Sequence[re.Match[str]], word: re.Match[str]) -> bool:
    """Whether ``word`` extends the run: a capitalised word or a connector, one space after it."""
    if not run:
        return False
    gap = text[run[-1].end() : word.start()]
    if not gap.isspace() or "\n" in gap:
        return False
    return word.group()[0].isupper() or word.group() in _CONNECTORS


def _trimmed(run: Sequence[re.Match[str]]) -> list[CharSpan]:
    """The run's span without leading function words and trailing connectors."""
    words = list(run)
    while words and (words[0].group().lower() in _FUNCTION_WORDS or not words[0].group()[0].isupper()):
        words.pop(0)
    while words and not words[-1].group()[0].isupper():
        words.pop()
    return [(words[0].start(), words[-1].end())] if words else []


class SpacyTagger:
    """Entity spans from a spaCy pipeline's named-entity recogniser.

    Needs ``pip install maskpolicy[spacy]`` and the model, e.g.
    ``python -m spacy download en_core_web_sm``.

    Args:
        model: name of an installed spaCy pipeline.
        labels: entity labels to keep (e.g. ``["PERSON", "GPE", "DATE"]``); all if None.
    """

    def __init__(self, model: str = "en_core_web_sm", labels: Collection[str] | None = None) -> None:
        try:
            import spacy
        except ImportError as err:
            raise TaskError(
                "SpacyTagger needs spaCy: pip install maskpolicy[spacy], then "
                f"python -m spacy download {model}; or use tagger=rule"
            ) from err
        try:
            self.nlp = spacy.load(model)
        except OSError as err:
            raise TaskError(f"spaCy model {model!r} is not installed: python -m spacy download {model}") from err
        self.model = model
        self.labels = None if labels is None else frozenset(labels)

    def __call__(self, text: str) -> list[CharSpan]:
        entities = self.nlp(text).ents
        return merge_spans(
            (ent.start_char, ent.end_char) for ent in entities if self.labels is None or ent.label_ in self.labels
        )


def entity_spans(document: Document, tagger: Tagger | None = None) -> tuple[CharSpan, ...]:
    """A document's gold spans when it has any, otherwise the tagger's spans.

    Raises :class:`TaskError` when the document has no gold spans and no tagger is given.
    """
    if document.entities:
        return tuple(merge_spans(document.entities))
    if tagger is None:
        raise TaskError("this document has no gold entity spans; pass a tagger (e.g. RuleTagger()) to find them")
    return tuple(merge_spans(tagger(document.text)))


def tag_corpus(documents: Iterable[Document], tagger: Tagger | None = None) -> list[Document]:
    """The documents with entity spans filled in: gold spans kept, the rest tagged."""
    return [Document(doc.text, entity_spans(doc, tagger)) for doc in documents]
