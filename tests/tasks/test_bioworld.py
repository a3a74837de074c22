"""The generated knowledge world: determinism, splits, gold spans, single-word answers."""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections import Counter
from itertools import pairwise

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from maskpolicy.tasks.base import SPLITS, GeneralText, Task, TaskError
from maskpolicy.tasks.data.bioworld import ATTRIBUTES, QUESTIONS, TEMPLATES, BioWorld
from maskpolicy.tasks.data.splits import split_subjects


@pytest.fixture(scope="module")
def world() -> BioWorld:
    return BioWorld()


@pytest.fixture(scope="module")
def small() -> BioWorld:
    return BioWorld(seed=7, n_people=40, n_values=12, n_first_names=5)


def test_default_world_is_fast_and_sized_as_configured() -> None:
    start = time.perf_counter()
    world = BioWorld()
    assert time.perf_counter() - start < 1.0
    assert isinstance(world, Task) and world.name == "bioworld"
    assert len(world.people) == 400
    assert len(world.corpus()) == 400 * 3
    assert [len(world.qa(split)) for split in SPLITS] == [200 * 6, 100 * 6, 100 * 6]
    assert all(len(values) == 50 for values in world.values.values())


def test_same_seed_gives_the_same_world_whatever_the_global_rng() -> None:
    random.seed(1)
    first = BioWorld(seed=3, n_people=30)
    random.seed(2)
    second = BioWorld(seed=3, n_people=30)
    assert first.corpus() == second.corpus()
    assert all(first.qa(split) == second.qa(split) for split in SPLITS)


def test_other_seed_gives_another_world() -> None:
    first, second = BioWorld(seed=0, n_people=30), BioWorld(seed=1, n_people=30)
    assert first.corpus() != second.corpus()
    assert first.values != second.values


def test_document_knobs_do_not_change_the_people() -> None:
    base = BioWorld(seed=5, n_people=30)
    assert BioWorld(seed=5, n_people=30, biographies_per_person=1, sentence_examples=True).people == base.people


def test_splits_are_disjoint_groups_of_people_sized_as_configured(world: BioWorld) -> None:
    subjects = {split: {example.subject for example in world.qa(split)} for split in SPLITS}
    assert [len(subjects[split]) for split in SPLITS] == [200, 100, 100]
    assert subjects["train"].isdisjoint(subjects["dev"])
    assert subjects["train"].isdisjoint(subjects["test"])
    assert subjects["dev"].isdisjoint(subjects["test"])
    assert Counter(p.split for p in world.people) == {"train": 200, "dev": 100, "test": 100}


def test_uneven_fractions_are_honoured() -> None:
    world = BioWorld(n_people=20, split_fractions=(0.6, 0.2, 0.2))
    assert Counter(p.split for p in world.people) == {"train": 12, "dev": 4, "test": 4}


def test_names_are_unique_pseudo_words(world: BioWorld) -> None:
    names = [p.name for p in world.people]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", name) for name in names)


def test_values_are_single_words_and_do_not_collide_across_attributes(world: BioWorld) -> None:
    assert world.values["birth_city"] == world.values["employer_city"]
    assert all(re.fullmatch(r"(19|20)\d\d", year) for year in world.values["birth_year"])
    kinds = ["birth_city", "birth_year", "university", "major", "employer"]
    words = [value.lower() for kind in kinds for value in world.values[kind]]
    names = {part.lower() for p in world.people for part in (p.first_name, p.last_name)}
    assert all(re.fullmatch(r"\w+", word) for word in words)
    assert len(set(words)) == len(words)
    assert names.isdisjoint(words)


def test_each_value_is_one_token_of_a_word_level_tokenizer(small: BioWorld) -> None:
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator([d.text for d in small.corpus()], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    for split in SPLITS:
        for example in small.qa(split):
            assert tokenizer.encode(example.answer).tokens == [example.answer.lower()]


def test_gold_spans_mark_the_name_and_every_value(small: BioWorld) -> None:
    for person in small.people:
        biographies = small.biographies(person)
        assert len(biographies) == 3
        for document in biographies:
            spans = document.entities
            assert list(spans) == sorted(spans)
            assert all(end <= next_start for (_, end), (next_start, _) in pairwise(spans))
            marked = [document.text[start:end] for start, end in spans]
            assert marked.count(person.name) == len(small.attributes)
            assert Counter(m for m in marked if m != person.name) == Counter(person.facts.values())
            assert person.name in document.text.split(". ")[0]


def test_corpus_holds_every_biography(small: BioWorld) -> None:
    biographies = [d for p in small.people for d in small.biographies(p)]
    assert Counter(small.corpus()) == Counter(biographies)


def test_biographies_are_shuffled_paraphrases(world: BioWorld) -> None:
    person = world.people[0]
    texts = [d.text for d in world.biographies(person)]
    assert len(set(texts)) == len(texts)
    first_sentences = {d.text.split(". ")[0] for p in world.people[:20] for d in world.biographies(p)}
    assert len(first_sentences) > 20
    assert all(len(templates) >= 3 for templates in TEMPLATES.values())


def test_questions_have_single_word_answers_stated_in_the_biographies(small: BioWorld) -> None:
    by_name = {p.name: p for p in small.people}
    for split in SPLITS:
        for example, attribute in zip(small.qa(split), small.attribute_of(split), strict=True):
            person = by_name[example.subject]
            assert person.split == split and example.answer == person.facts[attribute]
            assert re.fullmatch(r"\w+", example.answer)
            assert person.name in example.question
            start = example.answer_start
            assert example.context[start : start + len(example.answer)] == example.answer
            assert (start, start + len(example.answer)) in small.biographies(person)[0].entities
            assert all(example.answer in d.text for d in small.biographies(person))


def test_one_question_per_person_and_attribute_from_several_templates(world: BioWorld) -> None:
    pairs = [(e.subject, a) for s in SPLITS for e, a in zip(world.qa(s), world.attribute_of(s), strict=True)]
    assert len(set(pairs)) == len(pairs) == 400 * 6
    used = {e.question.replace(e.subject, "{name}") for s in SPLITS for e in world.qa(s)}
    for attribute in ATTRIBUTES:
        assert len(used & set(QUESTIONS[attribute])) >= 2


def test_sentence_examples_add_one_document_per_fact() -> None:
    world = BioWorld(seed=2, n_people=20, biographies_per_person=2, sentence_examples=True)
    assert len(world.corpus()) == 20 * 2 + 20 * 6
    singles = [d for d in world.corpus() if len(d.entities) == 2]
    assert len(singles) == 20 * 6
    assert all(d.text.count(".") == 1 for d in singles)


def test_attribute_subset() -> None:
    world = BioWorld(n_people=12, attributes=["major", "birth_year"])
    assert set(world.values) == {"major", "birth_year"}
    assert all(len(d.entities) == 4 for d in world.corpus())
    assert set(world.attribute_of("train")) == {"major", "birth_year"}


def test_majority_baseline() -> None:
    world = BioWorld(n_people=60, n_values=20)
    majority = world.majority_answers()
    test = list(zip(world.qa("test"), world.attribute_of("test"), strict=True))
    expected = sum(majority[a] == e.answer for e, a in test) / len(test)
    assert world.majority_answer_accuracy("test") == expected
    assert 0.0 <= expected < 0.5
    assert BioWorld(n_people=10, n_values=1).majority_answer_accuracy("dev") == 1.0


def test_split_subjects_is_seeded_and_disjoint() -> None:
    subjects = [f"s{i}" for i in range(10)]
    split = split_subjects(subjects, (0.5, 0.3, 0.2), seed=4)
    assert split == split_subjects(list(reversed(subjects)), (0.5, 0.3, 0.2), seed=4)
    assert Counter(split.values()) == {"train": 5, "dev": 3, "test": 2}


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"n_people": 2}, "n_people"),
        ({"n_people": 4, "split_fractions": (0.8, 0.1, 0.1)}, "too few"),
        ({"attributes": ["shoe_size"]}, "known attributes: birth_city, birth_year"),
        ({"attributes": []}, "non-empty"),
        ({"attributes": ["major", "major"]}, "without repeats"),
        ({"n_values": 100_000}, "n_values"),
        ({"n_values": 0}, "n_values"),
        ({"biographies_per_person": 0}, "biographies_per_person"),
        ({"split_fractions": (0.5, 0.5)}, "three positive shares"),
        ({"split_fractions": (0.5, 0.5, 0.5)}, "summing to 1"),
    ],
)
def test_bad_knobs_raise_clear_errors(knobs: dict, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        BioWorld(**knobs)


def test_unknown_split(small: BioWorld) -> None:
    with pytest.raises(TaskError, match="splits are train, dev, test"):
        small.qa("validation")  # type: ignore[arg-type]


def test_builds_from_a_hydra_config_with_list_knobs() -> None:
    config = OmegaConf.create(
        {
            "_target_": "maskpolicy.tasks.data.bioworld.BioWorld",
            "n_people": 30,
            "attributes": ["major", "birth_city"],
            "split_fractions": [0.6, 0.2, 0.2],
        }
    )
    world = instantiate(config)
    assert world.attributes == ("major", "birth_city")
    assert [len(world.qa(split)) for split in SPLITS] == [18 * 2, 6 * 2, 6 * 2]


# -- general text (for the base model) ------------------------------------------------------

# Digests of corpus, QA and held-out text taken before general text existed: the world must not move.
WORLD_DIGESTS = [
    ({}, "105dfb9f480fa68e0ebe67980e37a8b9d4c00073a76b307592a54748324a7515"),
    ({"seed": 3, "n_people": 100, "sentence_examples": True},
     "77dd76f1353ebbcbf1834b33f50ed175a4014abdefdecbf510fa144de71dc19f"),
    ({"seed": 7, "n_people": 40, "n_values": 12, "n_first_names": 5, "attributes": ["major", "birth_year"]},
     "439376ea7015304ad75aa2bda3da21112c686a57331db2df91920c4fdd89c917"),
]


def _world_digest(world: BioWorld) -> str:
    digest = hashlib.sha256()
    for document in world.corpus():
        digest.update(json.dumps([document.text, document.entities]).encode())
    for split in SPLITS:
        for q in world.qa(split):
            digest.update(json.dumps([q.question, q.answer, q.subject, q.context, q.answer_start, q.aliases]).encode())
    for document in world.heldout():
        digest.update(json.dumps([document.text, document.entities]).encode())
    return digest.hexdigest()


@pytest.mark.parametrize(("knobs", "expected"), WORLD_DIGESTS)
def test_the_world_is_byte_identical_to_before_general_text_and_asking_for_it_changes_nothing(knobs, expected):
    world = BioWorld(**knobs)
    assert _world_digest(world) == expected
    world.general_corpus(30)
    assert _world_digest(world) == expected


def test_general_text_is_other_people_written_alike(small: BioWorld) -> None:
    general = small.general_corpus(25)
    assert isinstance(small, GeneralText)
    assert len(general) == 25 * small.biographies_per_person
    marked = [document.text[start:end] for document in general for start, end in document.entities]
    names = {m for m in marked if " " in m}  # names are two words, values one
    assert len(names) == 25
    ours = {p.name for p in small.people}
    last_names = {p.last_name for p in small.people}
    values = {value for values in small.values.values() for value in values}
    assert names.isdisjoint(ours)
    assert all(name.split()[0] in small.first_names for name in names)
    assert {name.split()[1] for name in names}.isdisjoint(last_names | values | set(small.first_names))
    assert {m for m in marked if m not in names} <= values  # every fact's value comes from the task's lists
    assert all(len(document.entities) == 2 * len(small.attributes) for document in general)


def test_general_text_holds_no_fact_of_the_task(small: BioWorld) -> None:
    general = small.general_corpus(60)
    text = " ".join(document.text for document in general)
    assert not any(person.name in text for person in small.people)
    used = {document.text[start:end] for document in general for start, end in document.entities}
    assert all(value in used for values in small.values.values() for value in values)  # the whole vocabulary


def test_general_text_is_seeded_and_follows_the_document_knobs() -> None:
    world = BioWorld(seed=2, n_people=20, biographies_per_person=2, sentence_examples=True)
    general = world.general_corpus(10)
    assert general == BioWorld(seed=2, n_people=20, biographies_per_person=2, sentence_examples=True
                               ).general_corpus(10)
    assert general != BioWorld(seed=3, n_people=20, biographies_per_person=2, sentence_examples=True
                               ).general_corpus(10)
    assert len(general) == 10 * 2 + 10 * 6


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_general_text_size_must_be_a_positive_integer(small: BioWorld, size) -> None:
    with pytest.raises(TaskError, match="general corpus size"):
        small.general_corpus(size)
