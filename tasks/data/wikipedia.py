"""Lead sections of Wikipedia articles: real general text for pre-training a base model.

The default source is the optional ``wikipedia`` asset (:mod:`maskpolicy.tasks.assets`):
the lead sections of 10,033 English Wikipedia articles (CC BY-SA), a JSON object
``title -> {"title", "extract", ...}``. Any file in that layout, or a JSON list of
``{"title", "extract"}`` objects, can be given instead.

General text must hold none of the task's facts, yet these summaries include
"Computational complexity theory" and other subjects SQuAD asks about. So
:meth:`WikipediaSummaries.general_corpus` drops every article that shares a title
with the task (case, whitespace and underscores ignored: SQuAD writes
``Super_Bowl_50``) or shares a sentence with one of the task's texts (case and
whitespace ignored; only sentences of at least ``min_sentence_words`` words count,
so short fragments such as "See also." match nothing). Articles on related subjects
with no shared sentence (for SQuAD's "Southern_California", the article
"Los Angeles") are kept: this filter removes copies, not topics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskpolicy.tasks.assets import asset_path
from maskpolicy.tasks.base import Document, TaskError

# A sentence ends at ., ! or ?, optionally followed by closing quotes or brackets, then whitespace.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)\]]))\s+")

_LAYOUT = ('a JSON object mapping each title to {"title": ..., "extract": <the text>} (the layout of the '
           'wikipedia asset), or a JSON list of {"title": ..., "extract": ...} objects')


def normalise_title(title: str) -> str:
    """``title`` with ``_`` as spaces, whitespace collapsed, case folded: ``"Super_Bowl_50"`` → ``"super bowl 50"``."""
    return " ".join(title.replace("_", " ").split()).casefold()


def sentences(text: str, min_words: int) -> set[str]:
    """The sentences of ``text`` of at least ``min_words`` words, whitespace collapsed and case folded."""
    found = set()
    for sentence in _SENTENCE_END.split(text):
        words = sentence.split()
        if len(words) >= min_words:
            found.add(" ".join(words).casefold())
    return found


@dataclass(frozen=True)
class _Article:
    title: str  # normalised
    text: str


class WikipediaSummaries:
    """Wikipedia lead sections as general text, minus whatever the task already contains.

    Args:
        path: a JSON file of summaries (see the module docstring for the layouts);
            ``None`` reads the installed ``wikipedia`` asset (an
            :class:`~maskpolicy.tasks.assets.AssetMissing` naming the install command
            when it is not installed). The file is read on first use.
        min_sentence_words: a sentence takes part in the overlap check only if it has
            at least this many whitespace-separated words.
    """

    def __init__(self, path: str | None = None, min_sentence_words: int = 4) -> None:
        if isinstance(min_sentence_words, bool) or not isinstance(min_sentence_words, int) or min_sentence_words < 1:
            raise TaskError(f"min_sentence_words must be an integer >= 1, got {min_sentence_words!r}")
        self.path = path
        self.min_sentence_words = min_sentence_words
        self._loaded: tuple[Path, int, tuple[_Article, ...]] | None = None

    def _load(self) -> tuple[Path, int, tuple[_Article, ...]]:
        """The source, its number of entries, and its articles with text, in file order."""
        if self._loaded is None:
            source = asset_path("wikipedia") if self.path is None else Path(self.path)
            if not source.is_file():
                raise TaskError(f"Wikipedia summaries file {str(source)!r} does not exist; give the path of a JSON "
                                "file of summaries, or path=null for the installed wikipedia asset (`make real`)")
            try:
                data = json.loads(source.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise TaskError(f"Wikipedia summaries file {str(source)!r} is not JSON ({error}); expected "
                                f"{_LAYOUT}") from error
            entries = _entries(data, source)
            articles = tuple(_Article(normalise_title(title), text) for title, text in entries if text.strip())
            if not articles:
                raise TaskError(f"Wikipedia summaries file {str(source)!r} has no articles with text "
                                f"({len(entries)} entries, every extract empty); expected {_LAYOUT}")
            self._loaded = (source, len(entries), articles)
        return self._loaded

    def general_corpus(
        self, size: int, exclude_texts: Sequence[str] = (), exclude_titles: Sequence[str] = ()
    ) -> tuple[tuple[Document, ...], dict[str, Any]]:
        """The first ``size`` articles, in file order, that share neither a title nor a sentence with the task.

        Args:
            size: how many articles to return (all that are left when fewer are).
            exclude_texts: the task's texts (its corpus, questions, contexts); an article
                sharing one of their sentences is dropped.
            exclude_titles: the task's subjects (e.g. SQuAD article titles); an article
                with one of these titles is dropped.

        Returns:
            The documents (the articles' lead sections; no entities) and a report:
            ``articles`` (entries in the file), ``empty`` (entries with no text),
            ``dropped_title``, ``dropped_sentence`` (an article matching both is counted
            under its title), ``available`` (articles left), ``kept`` (returned),
            ``words`` (whitespace-separated words returned) and ``source`` (the file).
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise TaskError(f"size must be an integer >= 1 (a number of articles), got {size!r}")
        source, entries, articles = self._load()
        titles = {normalise_title(title) for title in _strings(exclude_titles, "exclude_titles")}
        task_sentences: set[str] = set()
        for text in _strings(exclude_texts, "exclude_texts"):
            task_sentences |= sentences(text, self.min_sentence_words)
        dropped_title = dropped_sentence = 0
        left: list[str] = []
        for article in articles:
            if article.title in titles:
                dropped_title += 1
            elif task_sentences and not task_sentences.isdisjoint(sentences(article.text, self.min_sentence_words)):
                dropped_sentence += 1
            else:
                left.append(article.text)
        if not left:
            raise TaskError(
                f"no Wikipedia article of {str(source)!r} is left as general text: of {len(articles)} with text, "
                f"{dropped_title} share a title and {dropped_sentence} share a sentence of at least "
                f"{self.min_sentence_words} words with the task; give a file with other articles, or fewer texts and "
                "titles to exclude"
            )
        documents = tuple(Document(text) for text in left[:size])
        report = {"articles": entries, "empty": entries - len(articles), "dropped_title": dropped_title,
                  "dropped_sentence": dropped_sentence, "kept": len(documents), "available": len(left),
                  "words": sum(len(document.text.split()) for document in documents), "source": str(source)}
        return documents, report


def _strings(values: Iterable[str], name: str) -> list[str]:
    if isinstance(values, str):
        raise TaskError(f"{name} must be a sequence of strings, not one string")
    values = list(values)
    bad = [value for value in values if not isinstance(value, str)]
    if bad:
        raise TaskError(f"{name} must hold strings only; found {type(bad[0]).__name__} {bad[0]!r}")
    return values


def _entries(data: object, source: Path) -> list[tuple[str, str]]:
    """``(title, extract)`` pairs in file order, or a :class:`TaskError` naming the expected layout."""
    if isinstance(data, dict):
        pairs: Iterable[tuple[object, object]] = data.items()
    elif isinstance(data, list):
        pairs = ((None, value) for value in data)
    else:
        raise TaskError(f"Wikipedia summaries file {str(source)!r} holds a JSON {type(data).__name__}; "
                        f"expected {_LAYOUT}")
    entries = []
    for index, (key, value) in enumerate(pairs):
        where = f"entry {key!r}" if key is not None else f"entry {index}"
        title = value.get("title", key) if isinstance(value, dict) else None
        extract = value.get("extract") if isinstance(value, dict) else None
        if not isinstance(title, str) or not isinstance(extract, str):
            raise TaskError(f"Wikipedia summaries file {str(source)!r}: {where} is not an object with a string "
                            f"\"extract\" and \"title\" (got {str(value)[:80]!r}); expected {_LAYOUT}")
        entries.append((title, extract))
    return entries
