"""Wikipedia lead sections as general text: exact filtering on tiny files, and the real asset."""

from __future__ import annotations

import importlib.metadata
import json
import time
from pathlib import Path

import pytest

from maskpolicy.tasks.assets import AssetMissing, installed, skip_reason
from maskpolicy.tasks.base import Document, TaskError
from maskpolicy.tasks.data.wikipedia import WikipediaSummaries, normalise_title, sentences

SQUAD = Path(__file__).resolve().parents[3] / "shared/data/squad-sample"
SQUAD_FILES = ("dev-sample.json", "dev-v2-three-articles.json")

TASK_TEXT = "The match ended late.  many HOLD glacial\n  water in SUMMER.  See also. It rained. Nothing else."
SUMMARIES = {
    # Its title is the task's (SQuAD spelling); it also shares a sentence, but counts as a title match.
    "Super Bowl 50": "Super Bowl 50 was a football game. The match ended late.",
    "Alpine lakes": "Alpine lakes lie at high altitude. Many hold glacial water in summer. They freeze in winter.",
    "Harbour cranes": "Harbour cranes lift containers off ships. See also. It rained.",  # only short sentences shared
    "Empty page": "   ",
    "River deltas": "River deltas form where rivers meet the sea.",
    "Desert winds": "Desert winds carry sand for hundreds of kilometres.",
}


def _write(tmp_path: Path, data: object, name: str = "summaries.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


@pytest.fixture
def summaries(tmp_path: Path) -> str:
    layout = {title: {"title": title, "extract": text, "description": "", "topic": "Tests"}
              for title, text in SUMMARIES.items()}
    return _write(tmp_path, layout)


def test_normalisers():
    assert normalise_title("Super_Bowl_50") == normalise_title(" super  BOWL 50 ") == "super bowl 50"
    assert sentences("One two three four. Five six!  Seven eight nine ten?\nEleven", 4) == {
        "one two three four.", "seven eight nine ten?"}
    assert sentences('He said "stop now please." Then it ended here.', 4) == {
        'he said "stop now please."', "then it ended here."}
    assert sentences("Version 2.5 is out now.", 4) == {"version 2.5 is out now."}, "no split without whitespace"


def test_drops_title_and_sentence_matches_and_keeps_file_order(summaries):
    documents, report = WikipediaSummaries(summaries).general_corpus(
        10, exclude_texts=[TASK_TEXT], exclude_titles=["Super_Bowl_50"])
    assert documents == (Document(SUMMARIES["Harbour cranes"]), Document(SUMMARIES["River deltas"]),
                         Document(SUMMARIES["Desert winds"]))
    assert report == {"articles": 6, "empty": 1, "dropped_title": 1, "dropped_sentence": 1, "kept": 3,
                      "available": 3, "words": 10 + 8 + 8, "source": summaries}


def test_size_takes_the_first_articles_left(summaries):
    documents, report = WikipediaSummaries(summaries).general_corpus(2, [TASK_TEXT], ["SUPER_BOWL__50"])
    assert [d.text for d in documents] == [SUMMARIES["Harbour cranes"], SUMMARIES["River deltas"]]
    assert (report["kept"], report["available"], report["words"]) == (2, 3, 18)


def test_without_exclusions_every_article_with_text_is_kept(summaries):
    documents, report = WikipediaSummaries(summaries).general_corpus(100)
    assert [d.text for d in documents] == [text for text in SUMMARIES.values() if text.strip()]
    assert all(d.entities == () for d in documents)
    assert (report["dropped_title"], report["dropped_sentence"], report["kept"]) == (0, 0, 5)


def test_the_sentence_match_ignores_case_and_whitespace_only(summaries):
    wiki = WikipediaSummaries(summaries)
    _, report = wiki.general_corpus(10, ["MANY hold\tglacial water in summer."])
    assert report["dropped_sentence"] == 1
    _, report = wiki.general_corpus(10, ["Many hold glacial water in summer!"])  # other punctuation: another sentence
    assert report["dropped_sentence"] == 0
    _, report = wiki.general_corpus(10, ["Many hold glacial water"])  # a part of a sentence is not a sentence
    assert report["dropped_sentence"] == 0


def test_short_sentences_count_only_above_min_sentence_words(summaries):
    _, report = WikipediaSummaries(summaries).general_corpus(10, ["See also. It rained."])
    assert report["dropped_sentence"] == 0
    documents, report = WikipediaSummaries(summaries, min_sentence_words=2).general_corpus(10, ["See also. It rained."])
    assert report["dropped_sentence"] == 1 and Document(SUMMARIES["Harbour cranes"]) not in documents


def test_a_json_list_of_title_extract_objects(tmp_path):
    path = _write(tmp_path, [{"title": "Super_Bowl_50", "extract": "A game was played."},
                             {"title": "Glaciers", "extract": "Glaciers move slowly downhill."}])
    documents, report = WikipediaSummaries(path).general_corpus(5, exclude_titles=["super bowl 50"])
    assert documents == (Document("Glaciers move slowly downhill."),)
    assert (report["articles"], report["dropped_title"], report["words"]) == (2, 1, 4)


def test_file_errors_name_the_problem_and_the_layout(tmp_path):
    with pytest.raises(TaskError, match="does not exist.*path=null"):
        WikipediaSummaries(str(tmp_path / "absent.json")).general_corpus(1)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TaskError, match="is not JSON.*title to"):
        WikipediaSummaries(str(tmp_path / "bad.json")).general_corpus(1)
    with pytest.raises(TaskError, match="holds a JSON int; expected a JSON object mapping each title"):
        WikipediaSummaries(_write(tmp_path, 3)).general_corpus(1)
    with pytest.raises(TaskError, match="entry 'A' is not an object with a string \"extract\""):
        WikipediaSummaries(_write(tmp_path, {"A": {"title": "A", "text": "x"}})).general_corpus(1)
    with pytest.raises(TaskError, match="entry 1 is not an object"):
        WikipediaSummaries(_write(tmp_path, [{"title": "A", "extract": "x"}, "B"])).general_corpus(1)
    with pytest.raises(TaskError, match="no articles with text \\(2 entries, every extract empty\\)"):
        WikipediaSummaries(_write(tmp_path, {"A": {"extract": ""}, "B": {"extract": " \n"}})).general_corpus(1)


def test_argument_errors(summaries):
    wiki = WikipediaSummaries(summaries)
    for size in (0, -1, 1.5, True, "3"):
        with pytest.raises(TaskError, match="size must be an integer >= 1"):
            wiki.general_corpus(size)
    with pytest.raises(TaskError, match="min_sentence_words must be an integer >= 1"):
        WikipediaSummaries(summaries, min_sentence_words=0)
    with pytest.raises(TaskError, match="exclude_texts must be a sequence of strings, not one string"):
        wiki.general_corpus(1, exclude_texts=TASK_TEXT)
    with pytest.raises(TaskError, match="exclude_titles must hold strings only"):
        wiki.general_corpus(1, exclude_titles=[None])


def test_nothing_left_names_the_counts_and_the_fix(tmp_path):
    path = _write(tmp_path, {"Alpine lakes": {"extract": SUMMARIES["Alpine lakes"]},
                             "Super Bowl 50": {"extract": "Nothing in common here at all."}})
    with pytest.raises(TaskError, match="of 2 with text, 1 share a title and 1 share a sentence of at least 4 words"
                                        ".*give a file with other articles"):
        WikipediaSummaries(path).general_corpus(1, [TASK_TEXT], ["Super_Bowl_50"])


def test_the_default_path_is_the_asset_and_says_how_to_install_it(monkeypatch):
    def not_installed(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    wiki = WikipediaSummaries()  # the file is read on first use, so building it never fails
    with pytest.raises(AssetMissing, match="make real"):
        wiki.general_corpus(1)


def _squad() -> tuple[list[str], list[str]]:
    if not all((SQUAD / name).is_file() for name in SQUAD_FILES):
        pytest.skip(f"SQuAD samples not found in {SQUAD}")
    titles, contexts = [], []
    for name in SQUAD_FILES:
        for article in json.loads((SQUAD / name).read_text(encoding="utf-8"))["data"]:
            titles.append(article["title"])
            contexts += [paragraph["context"] for paragraph in article["paragraphs"]]
    return titles, contexts


def test_the_real_summaries_minus_the_real_squad_articles():
    if not installed("wikipedia"):
        pytest.skip(skip_reason("wikipedia"))
    titles, contexts = _squad()
    assert titles == ["Super_Bowl_50", "Computational_complexity_theory", "Southern_California",
                      "Sky_(United_Kingdom)"]
    wiki = WikipediaSummaries()
    everything, full = wiki.general_corpus(20_000)
    assert (full["articles"], full["empty"], full["kept"], full["words"]) == (10_033, 0, 10_033, 775_848)
    assert everything[0].text.startswith("20th-century classical music is Western art music")
    complexity = next(d for d in everything if d.text.startswith("In theoretical computer science and mathematics, "
                                                                 "computational complexity theory"))

    start = time.perf_counter()
    documents, report = wiki.general_corpus(20_000, exclude_texts=contexts, exclude_titles=titles)
    seconds = time.perf_counter() - start
    # Only "Computational complexity theory" goes, by its title: Wikipedia rewrote its lead since SQuAD
    # copied it, so no sentence of 4+ words is shared with any summary.
    assert (report["dropped_title"], report["dropped_sentence"], report["available"], report["kept"]) == (
        1, 0, 10_032, 10_032)
    assert report["words"] == 775_848 - len(complexity.text.split()) == 775_799
    assert complexity not in documents
    assert documents == tuple(d for d in everything if d != complexity)
    assert seconds < 5, f"general_corpus took {seconds:.2f} s on 10,033 articles"
