"""Entity taggers: text → character spans of names, places, dates and numbers.

The entity policy masks whole entity spans; these taggers find the spans when a
task has no gold ones. :class:`RuleTagger` is built in (regular expressions, no
model); :class:`SpacyTagger` uses a spaCy pipeline (``en_core_web_sm`` from ``make real`` by default);
:func:`entity_spans` prefers a document's own gold spans over any tagger.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Collection, Iterable, Sequence
from typing import Protocol, runtime_checkable

from maskpolicy.policies.features import FUNCTION_WORDS
from maskpolicy.tasks.assets import ASSETS, AssetMissing, asset_path, skip_reason
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


SPACY_INSTALL = "pip install 'maskpolicy[spacy]'"
DEFAULT_PIPELINE = "en_core_web_sm"  # the asset spacy_en_core_web_sm holds it


class SpacyTagger:
    """Entity spans from a spaCy pipeline's named-entity recogniser.

    By default the pipeline is spaCy's ``en_core_web_sm``, read from where its package put it
    (the asset ``spacy_en_core_web_sm``: ``make real`` installs it and spaCy); nothing is
    downloaded. Only the ``components`` run, with the ones they listen to (a shared
    ``tok2vec``): the recogniser alone takes less than half the whole pipeline's time and finds the
    same spans, but for an entity that crosses a sentence end the parser would have set (one
    paragraph of the 163 in the shared SQuAD sample: "X. Thus"); ``components=None`` runs everything.

    Args:
        model: an installed spaCy pipeline's name or a pipeline folder; None (or ``"en_core_web_sm"`` when no
            package of that name is installed): ``en_core_web_sm`` from its asset.
        labels: entity labels to keep (e.g. ``["PERSON", "GPE", "DATE"]``); all if None.
        components: the pipeline components to run (and those they listen to); None: every one of the model's.
    """

    def __init__(self, model: str | None = None, labels: Collection[str] | None = None,
                 components: Sequence[str] | None = ("ner",)) -> None:
        try:
            import spacy
        except ImportError as err:
            raise TaskError(
                f"the spaCy tagger needs spaCy, which is not installed: `make real` installs it with its English "
                f"model, or {SPACY_INSTALL} and `{ASSETS['spacy_en_core_web_sm'].install}`; or use tagger=rule"
            ) from err
        self.model, self.labels = model, None if labels is None else frozenset(labels)
        self.components = None if components is None else tuple(components)
        location = self._location(spacy)
        try:
            self.nlp = spacy.load(location)
        except OSError as err:  # spaCy's E050: no package or folder by that name
            raise TaskError(
                f"spaCy pipeline {location!r} is neither an installed package nor a pipeline folder ({err}): install "
                "it, give the path of a pipeline folder, or leave tagger.model unset (null) for en_core_web_sm, "
                f"which `make real` installs (`{ASSETS['spacy_en_core_web_sm'].install}`)"
            ) from err
        if self.components is not None:
            needed = self._needed(self.components)
            for name in set(needed) & set(self.nlp.disabled):  # e.g. en_core_web_sm's senter, off by default
                self.nlp.enable_pipe(name)
            self.nlp.select_pipes(enable=needed)

    def _location(self, spacy) -> str:
        """The user's pipeline name or folder, or the default asset's folder (:class:`AssetMissing` naming the fix).

        ``en_core_web_sm`` (the name earlier configs gave) is the asset too unless a package of that name is installed.
        """
        if self.model is not None and (self.model != DEFAULT_PIPELINE or spacy.util.is_package(self.model)):
            return self.model
        try:
            return str(asset_path("spacy_en_core_web_sm"))
        except AssetMissing as error:
            raise AssetMissing(f"{error}; or name another installed spaCy pipeline with tagger.model=NAME") from None

    def _needed(self, components: Sequence[str]) -> list[str]:
        """The components asked for and the ones whose output they listen to."""
        names = self.nlp.component_names
        unknown = [name for name in components if name not in names]
        if unknown:
            raise TaskError(f"spaCy pipeline {self.model or DEFAULT_PIPELINE} has no component {unknown}; its "
                            f"components are {names} (tagger.components=null runs the enabled ones)")
        listened = [name for name, pipe in self.nlp.components
                    if set(getattr(pipe, "listening_components", ())) & set(components)]
        return [name for name in names if name in components or name in listened]

    def __call__(self, text: str) -> list[CharSpan]:
        entities = self.nlp(text).ents
        return merge_spans(
            (ent.start_char, ent.end_char) for ent in entities if self.labels is None or ent.label_ in self.labels
        )


def spacy_unavailable() -> str:
    """Why the default :class:`SpacyTagger` cannot be built here (the fix included), or ``""`` when it can.

    Nothing is loaded: spaCy is looked for, not imported, and its model through package metadata.
    """
    if importlib.util.find_spec("spacy") is None:
        return (f"spaCy is not installed: `make real` installs it with its English model "
                f"(or {SPACY_INSTALL} and `{ASSETS['spacy_en_core_web_sm'].install}`)")
    return skip_reason("spacy_en_core_web_sm")


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
