"""SQuAD v1.1 as a task: paragraphs to pre-train on, their questions asked closed-book.

Reads the official JSON layout (``data[].title``, ``data[].paragraphs[].context``,
``paragraphs[].qas[].question`` and ``answers[].text`` / ``answer_start``) from a
local file, or a Hugging Face dataset with SQuAD's columns. Every paragraph
becomes a pre-training document; QA splits are disjoint by subject (whole articles
when there are enough of them, otherwise paragraphs; or single questions, so that
extractive QA and closed-book QA on the same articles share every context).

Answers whose ``answer_start`` does not point at their text are skipped and
counted (``skipped_answers``; a question left with no answer is dropped and
counted in ``skipped_questions``), or raise with ``bad_offsets="error"``.
Unanswerable questions (SQuAD 2.0) are dropped and counted in ``unanswerable``.

General text, for pre-training a base model, comes from other SQuAD-format files
(``general_path``): their paragraphs, which must not be the task's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from maskpolicy.tasks.base import SPLITS, CharSpan, Document, QAExample, Split, TaskError
from maskpolicy.tasks.data.splits import check_fractions, split_sizes, split_subjects
from maskpolicy.tasks.data.tagging import Tagger, merge_spans, tag_corpus

Subject = Literal["auto", "article", "paragraph", "question"]
SUBJECTS = ("auto", "article", "paragraph", "question")


@dataclass(frozen=True)
class _Paragraph:
    subject_of: Mapping[str, str]  # "article" / "paragraph" → subject name
    context: str
    questions: tuple[QAExample, ...]  # subject filled in once the granularity is known
    question_spans: tuple[tuple[CharSpan, ...], ...]  # per question, the spans of its valid answers
    title: str = ""


class SquadTask:
    """A SQuAD-format reading-comprehension set turned into a closed-book task.

    Args:
        path: a local JSON file in the SQuAD v1.1 layout, or a list of them (their articles in order).
        hf_dataset: instead of ``path``, a Hugging Face dataset name (e.g. ``"squad"``);
            needs the ``datasets`` package.
        hf_split: the split of ``hf_dataset`` to load.
        split_fractions: shares of subjects whose questions form QA-train, QA-dev, QA-test.
        seed: seed of the subject → split assignment.
        max_articles: keep only the first N articles.
        subject: what must not straddle splits: ``"article"``, ``"paragraph"``, ``"question"``
            (questions split within the articles: every split's contexts are in the corpus, as
            extractive QA wants), or ``"auto"`` (articles when there are enough for every split,
            else paragraphs).
        answer_entities: give each document its answer spans as gold entities (an
            oracle: it marks the answers of every split); otherwise entities are
            empty and a tagger finds them.
        bad_offsets: ``"skip"`` (and count) or ``"error"`` on answers whose offset
            does not match their text.
        tagger: finds entity spans in documents without gold ones (the default
            config uses the built-in :class:`~.tagging.RuleTagger`); ``None`` leaves them empty.
        general_path: one SQuAD-format file, or a list of them, whose paragraphs are the
            general text a base model is pre-trained on (:meth:`general_corpus`); read
            only when asked for. ``None``: the task has no general text.
    """

    name = "squad"

    def __init__(
        self,
        path: str | Sequence[str] | None = None,
        hf_dataset: str | None = None,
        hf_split: str = "validation",
        split_fractions: Sequence[float] = (0.5, 0.25, 0.25),
        seed: int = 0,
        max_articles: int | None = None,
        subject: Subject = "auto",
        answer_entities: bool = False,
        bad_offsets: Literal["skip", "error"] = "skip",
        tagger: Tagger | None = None,
        general_path: str | Sequence[str] | None = None,
    ) -> None:
        if (path is None) == (hf_dataset is None):
            raise TaskError("SquadTask needs exactly one source: path=<SQuAD JSON file> or hf_dataset=<name>")
        if subject not in SUBJECTS:
            raise TaskError(f"squad subject must be one of {', '.join(SUBJECTS)}, got {subject!r}")
        if bad_offsets not in ("skip", "error"):
            raise TaskError(f"squad bad_offsets must be 'skip' or 'error', got {bad_offsets!r}")
        if max_articles is not None and max_articles < 1:
            raise TaskError(f"squad max_articles must be ≥ 1 or None, got {max_articles}")
        self.split_fractions = check_fractions(split_fractions)
        self.seed, self.answer_entities, self.bad_offsets, self.tagger = seed, answer_entities, bad_offsets, tagger
        self._corpus: tuple[Document, ...] | None = None
        paths = _paths(path, "path") if path is not None else ()
        self.source = ", ".join(paths) if paths else f"{hf_dataset} ({hf_split})"
        self.general_paths = _paths(general_path, "general_path") if general_path is not None else ()
        articles = ([article for one in paths for article in articles_of(read_json(one), one)] if paths
                    else articles_of(load_hub_dataset(hf_dataset, hf_split), self.source))
        self.skipped_answers = self.skipped_questions = self.unanswerable = 0
        self._paragraphs = self._parse(articles[:max_articles])
        if not any(p.questions for p in self._paragraphs):
            raise TaskError(f"{self.source}: no answerable questions in the SQuAD data")
        self.subject = self._subject_unit(subject)
        self._paragraphs = [_with_subjects(p, self.subject) for p in self._paragraphs]
        subjects = ([q.subject for p in self._paragraphs for q in p.questions] if self.subject == "question"
                    else [p.subject_of[self.subject] for p in self._paragraphs])
        self.subject_split = split_subjects(subjects, self.split_fractions, seed)

    # -- the Task protocol -------------------------------------------------------

    def corpus(self) -> tuple[Document, ...]:
        """One document per paragraph, in file order (all splits: the QA is closed-book)."""
        if self._corpus is None:
            spans = self.answer_spans() if self.answer_entities else [()] * len(self._paragraphs)
            documents = [Document(p.context, s) for p, s in zip(self._paragraphs, spans, strict=True)]
            self._corpus = tuple(tag_corpus(documents, self.tagger) if self.tagger else documents)
        return self._corpus

    @property
    def untagged_documents(self) -> int:
        """How many corpus documents have no entity span, gold or tagged (their ``entity`` feature is 0 throughout)."""
        return sum(not document.entities for document in self.corpus())

    def qa(self, split: Split) -> tuple[QAExample, ...]:
        """The questions about the subjects of ``split``, in file order."""
        if split not in SPLITS:
            raise TaskError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
        return tuple(q for p in self._paragraphs for q in p.questions if self.subject_split[q.subject] == split)

    def titles(self) -> tuple[str, ...]:
        """The articles' titles, in file order (general text sharing one is dropped: :mod:`.wikipedia`)."""
        return tuple(dict.fromkeys(p.title for p in self._paragraphs))

    # -- the GeneralText protocol -------------------------------------------------

    def general_corpus(self, size: int) -> tuple[Document, ...]:
        """The first ``size`` distinct paragraphs of the ``general_path`` files, in order, tagged like the corpus.

        Raises when no general file is configured, or when one shares a paragraph with the task's data
        (general text must hold none of the task's facts).
        """
        if not self.general_paths:
            raise TaskError(
                "squad has no general text to pre-train a base model on: set task.general_path to another "
                "SQuAD-format file (or a list of files) whose articles are not the task's, or set "
                "base.enabled=false to pre-train from scratch"
            )
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise TaskError(f"the general corpus size must be a positive number of paragraphs, got {size!r}")
        contexts = list(dict.fromkeys(c for path in self.general_paths for c in _contexts(path)))
        ours = {p.context for p in self._paragraphs}
        shared = sum(context in ours for context in contexts)
        if shared:
            raise TaskError(
                f"task.general_path shares {shared} paragraph(s) with the task's data ({self.source}); general text "
                "must hold none of the task's facts: give files of other articles (e.g. SQuAD train for a dev task)"
            )
        documents = [Document(context) for context in contexts[:size]]
        return tuple(tag_corpus(documents, self.tagger) if self.tagger else documents)

    def heldout(self) -> tuple[Document, ...]:
        """The paragraphs QA-dev asks about, for label-free scoring.

        Closed-book QA pre-trains on every paragraph, so this text is *in* the corpus:
        on SQuAD the score measures how well the model fits its corpus, not generalisation.
        """
        return tuple(d for d, p in zip(self.corpus(), self._paragraphs, strict=True) if "dev" in self._splits_of(p))

    # -- helpers ----------------------------------------------------------------

    def answer_spans(self, split: Split | None = None) -> tuple[tuple[CharSpan, ...], ...]:
        """Per corpus document, its merged answer spans; only those of ``split``'s questions when given.

        These are what a policy supervised by answer spans learns from; pass
        ``split="train"`` so dev and test answers stay unseen.
        """
        return tuple(tuple(merge_spans([span for q, spans in zip(p.questions, p.question_spans, strict=True)
                                        if split is None or self.subject_split[q.subject] == split
                                        for span in spans]))
                     for p in self._paragraphs)

    def _splits_of(self, paragraph: _Paragraph) -> set[Split]:
        return {self.subject_split[q.subject] for q in paragraph.questions}

    def _subject_unit(self, subject: Subject) -> Literal["article", "paragraph"]:
        if subject != "auto":
            return subject
        n_articles = len({p.subject_of["article"] for p in self._paragraphs})
        try:
            split_sizes(n_articles, self.split_fractions)
        except TaskError:
            return "paragraph"
        return "article"

    def _parse(self, articles: Sequence[Mapping[str, Any]]) -> list[_Paragraph]:
        paragraphs = []
        for a, article in enumerate(articles):
            title = str(article.get("title", f"article-{a}"))
            for k, paragraph in enumerate(_list(article, "paragraphs", f"data[{a}]", self.source)):
                paragraphs.append(self._paragraph(paragraph, title, k, where=f"data[{a}].paragraphs[{k}]"))
        if not paragraphs:
            raise TaskError(f"{self.source}: the SQuAD data has no paragraphs")
        return paragraphs

    def _paragraph(self, paragraph: Mapping[str, Any], title: str, index: int, where: str) -> _Paragraph:
        context = _string(paragraph, "context", where, self.source)
        questions, spans = [], []
        for q, qa in enumerate(_list(paragraph, "qas", where, self.source)):
            answers = self._answers(qa, context, f"{where}.qas[{q}]")
            if answers:
                questions.append(_example(qa["question"], context, answers))
                spans.append(tuple(merge_spans([(start, start + len(text)) for text, start in answers])))
        subject_of = {"article": title, "paragraph": f"{title}#{index}"}
        return _Paragraph(subject_of, context, tuple(questions), tuple(spans), title)

    def _answers(self, qa: Mapping[str, Any], context: str, where: str) -> list[tuple[str, int]]:
        """The question's answers whose offsets check out; empty when it is unanswerable or none do."""
        _string(qa, "question", where, self.source)
        answers = _list(qa, "answers", where, self.source)
        if qa.get("is_impossible") or not answers:
            self.unanswerable += 1
            return []
        checked = [self._offset_ok(answer, context, f"{where}.answers[{i}]") for i, answer in enumerate(answers)]
        good = [pair for pair in checked if pair is not None]
        self.skipped_questions += not good
        return good

    def _offset_ok(self, answer: Any, context: str, where: str) -> tuple[str, int] | None:
        text = _string(answer, "text", where, self.source)
        start = answer.get("answer_start")
        if isinstance(start, int) and context[start : start + len(text)] == text:
            return text, start
        if self.bad_offsets == "error":
            raise TaskError(f"{self.source}: {where}: answer {text!r} is not at answer_start={start!r} of its context")
        self.skipped_answers += 1
        return None


def _example(question: str, context: str, answers: Sequence[tuple[str, int]]) -> QAExample:
    """The first answer is the answer; the other distinct answer texts are its aliases."""
    text, start = answers[0]
    aliases = tuple(dict.fromkeys(t for t, _ in answers[1:] if t != text))
    return QAExample(question, text, subject="", context=context, answer_start=start, aliases=aliases)


def _paths(given: str | Sequence[str], name: str) -> tuple[str, ...]:
    paths = (given,) if isinstance(given, str | Path) else tuple(given)
    if not paths or not all(isinstance(path, str | Path) for path in paths):
        raise TaskError(f"squad {name} must be a file path or a non-empty list of them, got {given!r}")
    return tuple(str(path) for path in paths)


def _contexts(path: str) -> list[str]:
    """Every paragraph's context of one SQuAD-format file, in file order."""
    try:
        articles = articles_of(read_json(path), path)
    except TaskError as error:
        raise TaskError(f"task.general_path: {error}") from error
    contexts = []
    for a, article in enumerate(articles):
        for k, paragraph in enumerate(_list(article, "paragraphs", f"data[{a}]", path)):
            contexts.append(_string(paragraph, "context", f"data[{a}].paragraphs[{k}]", path))
    return contexts


def _with_subjects(paragraph: _Paragraph, unit: str) -> _Paragraph:
    """The paragraph's questions with their subject: the article's or paragraph's name, or each its own."""
    if unit == "question":
        name = paragraph.subject_of["paragraph"]
        named = (replace(q, subject=f"{name}#q{i}") for i, q in enumerate(paragraph.questions))
    else:
        named = (replace(q, subject=paragraph.subject_of[unit]) for q in paragraph.questions)
    return replace(paragraph, questions=tuple(named))


def read_json(path: str | Path) -> Any:
    """The parsed JSON file; a :class:`TaskError` naming the path when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"SQuAD file not found: {path} (give path= a SQuAD v1.1 JSON file, or use hf_dataset=)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TaskError(f"{path} is not a JSON file: {err}") from err


def load_hub_dataset(name: str, split: str) -> dict[str, Any]:
    """A Hugging Face dataset with SQuAD's columns, regrouped into the SQuAD JSON layout."""
    try:
        import datasets
    except ImportError as err:
        raise TaskError(
            f"hf_dataset={name!r} needs the Hugging Face datasets package: pip install datasets "
            "(or download the SQuAD JSON and pass path=)"
        ) from err
    return squad_layout(datasets.load_dataset(name, split=split))


def squad_layout(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Regroups flat rows (``title``, ``context``, ``question``, ``id``, ``answers`` with
    ``text`` and ``answer_start`` lists) into ``{"data": [articles]}``, keeping first-seen order."""
    articles: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        answers = row["answers"]
        qa = {
            "id": row.get("id"),
            "question": row["question"],
            "answers": [
                {"text": t, "answer_start": s} for t, s in zip(answers["text"], answers["answer_start"], strict=True)
            ],
        }
        articles.setdefault(row.get("title", ""), {}).setdefault(row["context"], []).append(qa)
    return {
        "data": [
            {"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in paragraphs.items()]}
            for title, paragraphs in articles.items()
        ]
    }


def articles_of(payload: Any, source: str) -> list[Mapping[str, Any]]:
    """The ``data`` list of a SQuAD payload, checked to be a list of objects."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("data"), list):
        raise TaskError(f"{source}: not the SQuAD v1.1 layout; expected a JSON object with a 'data' list of articles")
    data = payload["data"]
    for a, article in enumerate(data):
        if not isinstance(article, Mapping):
            raise TaskError(f"{source}: data[{a}] is not an article object")
    return data


def _list(obj: Any, key: str, where: str, source: str) -> list[Any]:
    value = obj.get(key) if isinstance(obj, Mapping) else None
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise TaskError(f"{source}: {where} has no {key!r} list of objects (SQuAD v1.1 layout)")
    return value


def _string(obj: Any, key: str, where: str, source: str) -> str:
    value = obj.get(key) if isinstance(obj, Mapping) else None
    if not isinstance(value, str):
        raise TaskError(f"{source}: {where} has no {key!r} string (SQuAD v1.1 layout)")
    return value
