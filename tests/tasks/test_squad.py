"""The SQuAD-format loader, on the real sample article and on tiny handwritten files."""

from __future__ import annotations

import importlib.util
import json
from itertools import pairwise
from pathlib import Path

import pytest

from maskpolicy.tasks.base import SPLITS, GeneralText, Task, TaskError
from maskpolicy.tasks.data.squad import SquadTask, squad_layout
from maskpolicy.tasks.data.tagging import RuleTagger

SAMPLE = Path(__file__).resolve().parents[3] / "shared/data/squad-sample/dev-sample.json"


@pytest.fixture(scope="module")
def sample() -> SquadTask:
    if not SAMPLE.is_file():
        pytest.skip(f"SQuAD sample not found at {SAMPLE}")
    return SquadTask(path=str(SAMPLE))


def _article(title: str, contexts: list[str]) -> dict:
    paragraphs = []
    for k, context in enumerate(contexts):
        word = context.split()[-1].rstrip(".")
        qa = {"id": f"{title}-{k}", "question": f"What ends paragraph {k}?", "answers": []}
        qa["answers"] = [{"text": word, "answer_start": context.rindex(word)} for _ in range(2)]
        paragraphs.append({"context": context, "qas": [qa]})
    return {"title": title, "paragraphs": paragraphs}


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    data = [_article(f"T{a}", [f"Article {a} paragraph {k} mentions Town{a}{k}." for k in range(2)]) for a in range(4)]
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


def _all(task: SquadTask) -> list:
    return [example for split in SPLITS for example in task.qa(split)]


def test_sample_counts(sample: SquadTask) -> None:
    assert isinstance(sample, Task) and sample.name == "squad"
    assert len(sample.corpus()) == 54
    assert len(_all(sample)) == 810
    assert sample.subject == "paragraph"  # one article: paragraphs keep the splits disjoint
    assert {example.subject.split("#")[0] for example in _all(sample)} == {"Super_Bowl_50"}
    assert sample.skipped_answers == sample.skipped_questions == sample.unanswerable == 0


def test_sample_answers_sit_at_their_offsets(sample: SquadTask) -> None:
    contexts = {document.text for document in sample.corpus()}
    for example in _all(sample):
        start = example.answer_start
        assert example.context in contexts
        assert example.context[start : start + len(example.answer)] == example.answer
        assert example.answer not in example.aliases
        assert len(set(example.aliases)) == len(example.aliases)


def test_sample_splits_are_disjoint_by_paragraph(sample: SquadTask) -> None:
    subjects = {split: {example.subject for example in sample.qa(split)} for split in SPLITS}
    assert [len(subjects[split]) for split in SPLITS] == [27, 14, 13]
    assert not subjects["train"] & subjects["dev"] and not subjects["train"] & subjects["test"]
    assert not subjects["dev"] & subjects["test"]
    contexts = {split: {example.context for example in sample.qa(split)} for split in SPLITS}
    assert not contexts["train"] & contexts["test"]


def test_sample_is_deterministic_for_a_seed() -> None:
    if not SAMPLE.is_file():
        pytest.skip(f"SQuAD sample not found at {SAMPLE}")
    assert SquadTask(path=str(SAMPLE), seed=1).qa("dev") == SquadTask(path=str(SAMPLE), seed=1).qa("dev")
    assert SquadTask(path=str(SAMPLE), seed=1).qa("dev") != SquadTask(path=str(SAMPLE), seed=2).qa("dev")


def test_corpus_has_no_entities_unless_answer_spans_are_asked_for(sample: SquadTask) -> None:
    assert all(document.entities == () for document in sample.corpus())
    oracle = SquadTask(path=str(SAMPLE), answer_entities=True)
    for document in oracle.corpus():
        spans = document.entities
        assert spans and list(spans) == sorted(spans)
        assert all(end <= next_start for (_, end), (next_start, _) in pairwise(spans))
    first = oracle.corpus()[0]
    assert any(first.text[start:end] == "Denver Broncos" for start, end in first.entities)


def test_answer_spans_of_one_split(sample: SquadTask) -> None:
    train_contexts = {example.context for example in sample.qa("train")}
    for document, spans in zip(sample.corpus(), sample.answer_spans("train"), strict=True):
        assert bool(spans) == (document.text in train_contexts)


def test_untagged_documents_counts_the_paragraphs_without_an_entity_span(tmp_path: Path) -> None:
    # the rule tagger finds names and numbers; all-lower-case paragraphs without digits give it nothing
    contexts = ["Marie Curie came from Warsaw.", "rain fell on the quiet fields.", "Alan Turing was born in 1912.",
                "bread is baked from flour."]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps({"data": [_article("T", contexts)]}))
    assert SquadTask(path=str(path), tagger=RuleTagger()).untagged_documents == 2
    assert SquadTask(path=str(path), tagger=RuleTagger(names=False)).untagged_documents == 3
    assert SquadTask(path=str(path)).untagged_documents == 4  # no tagger, no gold spans
    assert SquadTask(path=str(path), answer_entities=True).untagged_documents == 0


def test_tiny_file_splits_by_article(tiny: Path) -> None:
    task = SquadTask(path=str(tiny))
    assert task.subject == "article"
    assert [len(task.qa(split)) for split in SPLITS] == [4, 2, 2]
    subjects = {split: {example.subject for example in task.qa(split)} for split in SPLITS}
    assert all(len(subjects[split]) == n for split, n in zip(SPLITS, (2, 1, 1), strict=True))
    example = task.qa("train")[0]
    assert example.answer.startswith("Town") and example.aliases == ()


def test_max_articles_and_forced_paragraph_subjects(tiny: Path) -> None:
    task = SquadTask(path=str(tiny), max_articles=2, subject="paragraph")
    assert len(task.corpus()) == 4
    assert sum(len(task.qa(split)) for split in SPLITS) == 4
    assert all("#" in example.subject for split in SPLITS for example in task.qa(split))


def test_bad_offsets_are_skipped_and_counted_or_raise(tmp_path: Path) -> None:
    article = _article("T", ["One Alpha.", "Two Beta.", "Three Gamma.", "Four Delta."])
    article["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 0  # "One", not "Alpha"
    article["paragraphs"][1]["qas"][0]["answers"] = [{"text": "Beta", "answer_start": 99}]
    article["paragraphs"][2]["qas"].append({"question": "?", "answers": [], "is_impossible": True})
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"data": [article]}))
    task = SquadTask(path=str(path))
    assert (task.skipped_answers, task.skipped_questions, task.unanswerable) == (2, 1, 1)
    assert sum(len(task.qa(split)) for split in SPLITS) == 3
    with pytest.raises(TaskError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\]\.answers\[0\]"):
        SquadTask(path=str(path), bad_offsets="error")


def test_rows_regroup_into_the_squad_layout(tiny: Path, tmp_path: Path) -> None:
    payload = json.loads(tiny.read_text())
    rows = [
        {
            "id": qa["id"],
            "title": article["title"],
            "context": paragraph["context"],
            "question": qa["question"],
            "answers": {
                "text": [a["text"] for a in qa["answers"]],
                "answer_start": [a["answer_start"] for a in qa["answers"]],
            },
        }
        for article in payload["data"]
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]
    regrouped = tmp_path / "regrouped.json"
    regrouped.write_text(json.dumps(squad_layout(rows)))
    original, rebuilt = SquadTask(path=str(tiny)), SquadTask(path=str(regrouped))
    assert original.corpus() == rebuilt.corpus()
    assert all(original.qa(split) == rebuilt.qa(split) for split in SPLITS)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1, 2], "'data' list"),
        ({"data": {}}, "'data' list"),
        ({"data": [{"title": "T"}]}, r"data\[0\] has no 'paragraphs'"),
        ({"data": [{"paragraphs": [{"qas": []}]}]}, r"paragraphs\[0\] has no 'context'"),
        ({"data": [{"paragraphs": [{"context": "x", "qas": [{"question": "q"}]}]}]}, "no 'answers'"),
        ({"data": []}, "no paragraphs"),
        ({"data": [{"paragraphs": [{"context": "x", "qas": []}]}]}, "no answerable questions"),
    ],
)
def test_malformed_or_empty_files_raise(tmp_path: Path, payload: object, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(TaskError, match=message):
        SquadTask(path=str(path))


def test_missing_or_unparsable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.json"
    with pytest.raises(TaskError, match="not found: .*nowhere.json"):
        SquadTask(path=str(missing))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(TaskError, match="broken.json is not a JSON file"):
        SquadTask(path=str(broken))


def test_too_few_paragraphs_for_the_splits(tmp_path: Path) -> None:
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"data": [_article("T", ["One Alpha.", "Two Beta."])]}))
    with pytest.raises(TaskError, match="too few"):
        SquadTask(path=str(path))


@pytest.mark.parametrize(
    "knobs",
    [{}, {"path": "a.json", "hf_dataset": "squad"}, {"path": "a.json", "subject": "sentence"}],
)
def test_bad_knobs(knobs: dict) -> None:
    with pytest.raises(TaskError):
        SquadTask(**knobs)


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets is installed")
def test_hub_loading_without_datasets_says_what_to_install() -> None:
    with pytest.raises(TaskError, match="pip install datasets"):
        SquadTask(hf_dataset="squad")


# -- general text (for the base model) ------------------------------------------------------


def _write(path: Path, titles: list[str]) -> Path:
    data = [_article(t, [f"{t} paragraph {k} names Place{t}{k}." for k in range(3)]) for t in titles]
    path.write_text(json.dumps({"data": data}))
    return path


def test_general_text_comes_from_other_files(tiny: Path, tmp_path: Path) -> None:
    first, second = _write(tmp_path / "g1.json", ["G1", "G2"]), _write(tmp_path / "g2.json", ["G3"])
    task = SquadTask(path=str(tiny), general_path=[str(first), str(second)], tagger=RuleTagger())
    assert isinstance(task, GeneralText)
    general = task.general_corpus(100)
    assert [d.text.split()[0] for d in general] == ["G1"] * 3 + ["G2"] * 3 + ["G3"] * 3
    assert {d.text for d in general}.isdisjoint(d.text for d in task.corpus())
    assert all(d.entities for d in general)  # tagged like the corpus
    assert [d.text for d in task.general_corpus(4)] == [d.text for d in general[:4]]
    assert SquadTask(path=str(tiny), general_path=str(second), tagger=RuleTagger()).general_corpus(10) == general[6:]


def test_without_general_text_the_error_names_both_fixes(tiny: Path) -> None:
    with pytest.raises(TaskError, match=r"set task.general_path .* or set base.enabled=false"):
        SquadTask(path=str(tiny)).general_corpus(10)


def test_general_text_sharing_a_paragraph_with_the_task_is_refused(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="shares 8 paragraph"):
        SquadTask(path=str(tiny), general_path=str(tiny)).general_corpus(10)


@pytest.mark.parametrize("content", [None, "{not json", json.dumps({"data": 3})])
def test_a_bad_general_file_is_named(tiny: Path, tmp_path: Path, content: str | None) -> None:
    general = tmp_path / "general.json"
    if content is not None:
        general.write_text(content)
    with pytest.raises(TaskError, match="task.general_path: .*general.json"):
        SquadTask(path=str(tiny), general_path=str(general)).general_corpus(10)


@pytest.mark.parametrize(("general_path", "size"), [([], 10), ([3], 10), ("g.json", 0)])
def test_bad_general_knobs(tiny: Path, general_path, size: int) -> None:
    with pytest.raises(TaskError, match="general"):
        SquadTask(path=str(tiny), general_path=general_path).general_corpus(size)


def test_question_subjects_split_questions_within_the_articles(sample: SquadTask) -> None:
    task = SquadTask(path=str(SAMPLE), subject="question")
    questions = {split: task.qa(split) for split in SPLITS}
    assert [len(questions[split]) for split in SPLITS] == [405, 203, 202]  # 810 questions at 0.5/0.25/0.25
    subjects = {split: {q.subject for q in questions[split]} for split in SPLITS}
    assert sum(map(len, subjects.values())) == 810, "every question is its own subject"
    contexts = {split: {q.context for q in questions[split]} for split in SPLITS}
    corpus = {document.text for document in task.corpus()}
    assert all(contexts[split] <= corpus for split in SPLITS) and len(contexts["test"]) > 40, \
        "every split asks about paragraphs of the corpus, most paragraphs in every split"
    assert task.titles() == ("Super_Bowl_50",)
    # answer spans of one split cover only that split's answers (a policy supervised on train sees no dev answer)
    def covered(split=None) -> set[tuple[int, int]]:
        return {(i, c) for i, spans in enumerate(task.answer_spans(split)) for start, end in spans
                for c in range(start, end)}

    assert covered("train") | covered("dev") | covered("test") == covered()
    assert covered("train") < covered() and covered("dev") - covered("train")
    for q in questions["dev"][:50]:
        document = next(i for i, d in enumerate(task.corpus()) if d.text == q.context)
        assert {(document, c) for c in range(q.answer_start, q.answer_start + len(q.answer))} <= covered("dev")
    assert len(task.heldout()) == len({q.context for q in questions["dev"]})


def test_several_files_are_one_task_in_file_order(tiny: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"data": [_article("U0", ["Another article names Town99."])]}))
    task = SquadTask(path=[str(tiny), str(other)], subject="question")
    assert task.titles() == ("T0", "T1", "T2", "T3", "U0") and task.corpus()[-1].text.endswith("Town99.")
    assert task.source == f"{tiny}, {other}"
    with pytest.raises(TaskError, match="path must be a file path or a non-empty list"):
        SquadTask(path=[])
