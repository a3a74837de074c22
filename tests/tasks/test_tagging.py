"""Entity taggers: the rule tagger on real and handwritten text, gold spans first, spaCy's error."""

from __future__ import annotations

import importlib.util
import json
from itertools import pairwise
from pathlib import Path

import pytest

from maskpolicy.tasks.base import Document, TaskError
from maskpolicy.tasks.data.tagging import RuleTagger, SpacyTagger, Tagger, entity_spans, merge_spans, tag_corpus

SAMPLE = Path(__file__).resolve().parents[3] / "shared/data/squad-sample/dev-sample.json"


def _tagged(text: str, tagger: Tagger | None = None) -> list[str]:
    return [text[start:end] for start, end in (tagger or RuleTagger())(text)]


@pytest.fixture(scope="module")
def contexts() -> list[str]:
    if not SAMPLE.is_file():
        pytest.skip(f"SQuAD sample not found at {SAMPLE}")
    data = json.loads(SAMPLE.read_text())["data"]
    return [paragraph["context"] for article in data for paragraph in article["paragraphs"]]


def test_rule_tagger_on_the_first_squad_paragraph(contexts: list[str]) -> None:
    found = _tagged(contexts[0])
    for entity in ["Denver Broncos", "Carolina Panthers", "February 7, 2016", "Santa Clara", "California"]:
        assert entity in found
    for entity in ["National Football League", "Levi's Stadium", "San Francisco Bay Area", "24–10", "50", "2015"]:
        assert entity in found
    assert "The" not in found and "As" not in found


def test_rule_tagger_output_is_sorted_and_non_overlapping_on_real_text(contexts: list[str]) -> None:
    tagger = RuleTagger()
    for text in contexts:
        spans = tagger(text)
        assert spans and spans == sorted(spans)
        assert all(start < end for start, end in spans)
        assert all(end <= next_start for (_, end), (next_start, _) in pairwise(spans))
        assert all(not text[start].isspace() and not text[end - 1].isspace() for start, end in spans)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The game was played on 7 February 2016 in Santa Clara.", ["7 February 2016", "Santa Clara"]),
        (
            "However, the University of Chicago paid $5 million in May 2013.",
            ["University of Chicago", "$5 million", "May 2013"],
        ),
        ("The Denver Broncos won 24–10 on February 7, 2016.", ["Denver Broncos", "24–10", "February 7, 2016"]),
        ("In the 1990s, 1,234.5 people ate 3.14 pies at 4:51 in Paris.", ["1990s", "1,234.5", "3.14", "4:51", "Paris"]),
        ("The cat sat on the mat.", []),
        ("After that, Levi's Stadium hosted the 50th game.", ["Levi's Stadium", "50th"]),
        ("Its season ended in January.", ["January"]),
    ],
)
def test_rule_tagger_exact_spans(text: str, expected: list[str]) -> None:
    assert _tagged(text) == expected


def test_rule_tagger_kinds_can_be_switched_off() -> None:
    text = "Peyton Manning threw 2 passes on February 7."
    assert _tagged(text, RuleTagger(dates=False, numbers=False)) == ["Peyton Manning", "February"]
    assert _tagged(text, RuleTagger(names=False, dates=False)) == ["2", "7"]
    assert _tagged(text, RuleTagger(names=False, numbers=False)) == ["February 7"]


def test_merge_spans() -> None:
    assert merge_spans([(5, 9), (0, 3), (2, 4), (9, 12), (7, 7)]) == [(0, 4), (5, 9), (9, 12)]
    assert merge_spans([(0, 10), (2, 3)]) == [(0, 10)]
    assert merge_spans([]) == []


def test_gold_spans_win_over_the_tagger() -> None:
    gold = Document("Alpha met Beta.", ((0, 5),))
    plain = Document("Alpha met Beta.")
    assert entity_spans(gold, RuleTagger()) == ((0, 5),)
    assert entity_spans(plain, RuleTagger()) == ((0, 5), (10, 14))
    assert tag_corpus([gold, plain], RuleTagger()) == [gold, Document(plain.text, ((0, 5), (10, 14)))]
    with pytest.raises(TaskError, match="pass a tagger"):
        entity_spans(plain)


def test_taggers_satisfy_the_protocol() -> None:
    assert isinstance(RuleTagger(), Tagger)


@pytest.mark.skipif(importlib.util.find_spec("spacy") is not None, reason="spaCy is installed")
def test_spacy_tagger_says_how_to_install_spacy() -> None:
    with pytest.raises(TaskError, match=r"pip install maskpolicy\[spacy\].*spacy download en_core_web_sm"):
        SpacyTagger()
