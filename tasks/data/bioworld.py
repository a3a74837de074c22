"""The embedded default task: a seeded, synthetic world of people and their facts.

Every person has a unique pseudo-word name and one value per attribute (birth
city, birth year, university, major, employer, employer city), drawn
independently and uniformly from per-attribute value lists, so no fact can be
guessed from another. The pre-training corpus holds several shuffled,
paraphrased biographies per person, with gold entity spans on every name and
value. Closed-book questions ask for one fact of one person; QA-train, QA-dev and
QA-test are three disjoint groups of people.

Values are single words (pseudo-words, and 4-digit years), so a word-level
tokenizer trained on the corpus makes each answer one token and a one-mask cloze
does not leak answer length. The generator draws from ``random.Random`` streams
seeded by ``seed`` alone: the same seed gives the same world byte for byte.

``general_corpus(size)`` writes biographies of other people (fresh names, values from
the same lists) for pre-training a base model that knows the language but none of the
task's facts; it draws from streams of its own, so asking for it changes nothing else.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral

from maskpolicy.tasks.base import SPLITS, Document, QAExample, Split, TaskError
from maskpolicy.tasks.data.splits import check_fractions, check_split, split_sizes, split_subjects

# Paraphrases of each fact; every sentence names the person in full.
TEMPLATES: Mapping[str, tuple[str, ...]] = {
    "birth_city": (
        "{name} was born in {value}.",
        "{name} is a native of {value}.",
        "The birthplace of {name} is {value}.",
        "{name} came into the world in {value}.",
    ),
    "birth_year": (
        "{name} was born in the year {value}.",
        "The birth year of {name} is {value}.",
        "{name} has been alive since {value}.",
        "{value} is the year {name} was born.",
    ),
    "university": (
        "{name} studied at {value}.",
        "{name} graduated from {value}.",
        "{name} is a graduate of {value}.",
        "{name} received an education at {value}.",
    ),
    "major": (
        "{name} majored in {value}.",
        "{name} earned a degree in {value}.",
        "The field {name} studied was {value}.",
        "{name} chose {value} as a major.",
    ),
    "employer": (
        "{name} works for {value}.",
        "{value} employs {name}.",
        "{name} is employed by {value}.",
        "{name} has a job at {value}.",
        "{name} earns a living at {value}.",
    ),
    "employer_city": (
        "{name} works in the city of {value}.",
        "{name} has an office in {value}.",
        "The workplace of {name} is located in {value}.",
        "{name} commutes to work in {value}.",
    ),
}

QUESTIONS: Mapping[str, tuple[str, ...]] = {
    "birth_city": ("Where was {name} born?", "In which city was {name} born?", "What is the birthplace of {name}?"),
    "birth_year": ("In what year was {name} born?", "When was {name} born?"),
    "university": ("Which university did {name} attend?", "Where did {name} study?"),
    "major": ("What did {name} major in?", "Which subject did {name} study?"),
    "employer": ("Which company does {name} work for?", "Who employs {name}?"),
    "employer_city": ("In which city does {name} work?", "Which city does {name} work in?"),
}

ATTRIBUTES: tuple[str, ...] = tuple(TEMPLATES)

# Value lists by kind; both city attributes draw from the one city list.
_KIND = {
    "birth_city": "city",
    "employer_city": "city",
    "university": "university",
    "major": "major",
    "employer": "company",
    "birth_year": "year",
}
_WORD_KINDS = ("city", "university", "major", "company")
_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_ONSETS += ("br", "dr", "gr", "kr", "tr", "st", "sh", "ch", "th", "pl")
_VOWELS = ("a", "e", "i", "o", "u")
# Each kind of word gets its own endings, so the generated words read as what they name.
_ENDINGS = {
    "first": ("", "n", "l", "s", "ra"),
    "last": ("son", "berg", "ski", "ley", "man", "rez", "nov", "well"),
    "city": ("ton", "burg", "ford", "port", "dale", "ville", "wick", "mouth"),
    "university": ("mont", "field", "wood", "more", "ridge", "stead"),
    "company": ("corp", "tek", "x", "soft", "tron", "gen"),
    "major": ("logy", "nomy", "stry", "graphy", "tics", "sophy"),
}
# Syllable strings can spell rude words; those candidates are redrawn.
_AVOID = re.compile("shit|fuk|fuc|cunt|nig|fag|rape|dik|dick|cock|tit|porn|sex|puss|kum|cum")
MAX_VALUES = 1000
MAX_PEOPLE = 50_000
_MAX_REJECTIONS = 10_000


@dataclass(frozen=True)
class Person:
    """One person of the world: a unique name, one value per attribute, a QA split (``None``: general text)."""

    id: str
    first_name: str
    last_name: str
    facts: Mapping[str, str] = field(hash=False)
    split: Split | None = None

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}"


class BioWorld:
    """A generated knowledge world: biographies to pre-train on, questions about them.

    Args:
        seed: the world's own seed (not the training run's): same seed, same world.
        n_people: number of people.
        biographies_per_person: paraphrased, sentence-shuffled biographies per person.
        attributes: which facts each person has, a subset of :data:`ATTRIBUTES`.
        n_values: size of each attribute's value list (birth and employer city share one).
        n_first_names: size of the first-name pool; last names are unique per person.
        split_fractions: shares of people whose questions form QA-train, QA-dev, QA-test.
        sentence_examples: also add every fact as a one-sentence document, so that
            single-sentence probes are in distribution.
    """

    name = "bioworld"

    def __init__(
        self,
        seed: int = 0,
        n_people: int = 400,
        biographies_per_person: int = 3,
        attributes: Sequence[str] = ATTRIBUTES,
        n_values: int = 50,
        n_first_names: int = 60,
        split_fractions: Sequence[float] = (0.5, 0.25, 0.25),
        sentence_examples: bool = False,
    ) -> None:
        self.seed = int(seed)
        self.attributes = _check_attributes(attributes)
        self.split_fractions = check_fractions(split_fractions)
        _check_range("n_people", n_people, 3, MAX_PEOPLE)
        _check_range("biographies_per_person", biographies_per_person, 1, 1000)
        _check_range("n_values", n_values, 1, MAX_VALUES)
        _check_range("n_first_names", n_first_names, 1, MAX_VALUES)
        self.n_people, self.biographies_per_person = n_people, biographies_per_person
        self.n_values, self.n_first_names = n_values, n_first_names
        self.sentence_examples = bool(sentence_examples)
        split_sizes(n_people, self.split_fractions, what="people")  # fails early when a split would be empty

        words = _WordMaker(self._rng("words"), reserved=_template_words())
        self.values = self._value_lists(words)
        self.first_names = words.many("first", n_first_names)
        self.people = self._people(words)
        self._biographies = {p.id: [self._biography(p, k) for k in range(biographies_per_person)] for p in self.people}
        self._documents = self._corpus()
        self._questions = self._qa()

    # -- the Task protocol -------------------------------------------------------

    def corpus(self) -> tuple[Document, ...]:
        """All biographies (and one-sentence facts when enabled), in a seeded shuffled order."""
        return self._documents

    def qa(self, split: Split) -> tuple[QAExample, ...]:
        """One question per (person, attribute) for the people of ``split``.

        ``context`` is the person's first biography and ``answer_start`` the value's
        offset in it, for policies supervised by answer spans.
        """
        return tuple(example for _, example in self._questions[check_split(split)])

    # -- the GeneralText protocol -------------------------------------------------

    def general_corpus(self, size: int) -> tuple[Document, ...]:
        """Biographies of ``size`` other people, for pre-training a base model: none of the task's facts.

        The people's last names are new words (no QA person's name, no value), their
        first names come from the task's pool and their values from its value lists,
        so the task's template words, first names and values are in this text but no
        (person, attribute, value) fact of the task is. They are written like the corpus (same templates,
        ``biographies_per_person``, ``sentence_examples``) from random streams of their own.
        """
        _check_range("general corpus size", size, 1, MAX_PEOPLE)
        names = _WordMaker(self._rng("general:names"), reserved=self._words())
        rng = self._rng("general:people")
        people = [self._person(rng, f"g{index:05d}", last, split=None)
                  for index, last in enumerate(names.many("last", size))]
        biographies = {p.id: [self._biography(p, k) for k in range(self.biographies_per_person)] for p in people}
        return self._write(people, biographies, streams="general:")

    def heldout(self) -> tuple[Document, ...]:
        """One unseen biography per person (a new paraphrase and sentence order), for label-free scoring.

        The facts are the pre-training corpus's; the wording is not, so a model scores
        well only by having stored the facts rather than the exact documents.
        """
        variant = self.biographies_per_person
        return tuple(self._biography(person, variant)[0] for person in self.people)

    # -- helpers ----------------------------------------------------------------

    def biographies(self, person: Person | str) -> tuple[Document, ...]:
        """The biographies of one person (a :class:`Person` or its id)."""
        person_id = person.id if isinstance(person, Person) else person
        return tuple(document for document, _ in self._biographies[person_id])

    def attribute_of(self, split: Split) -> tuple[str, ...]:
        """The attribute each question of ``qa(split)`` asks for, in the same order."""
        return tuple(attribute for attribute, _ in self._questions[check_split(split)])

    def majority_answers(self) -> dict[str, str]:
        """The most frequent QA-train answer per attribute (ties: alphabetically first)."""
        counts: dict[str, Counter[str]] = {attribute: Counter() for attribute in self.attributes}
        for attribute, example in self._questions["train"]:
            counts[attribute][example.answer] += 1
        return {a: min(c, key=lambda value, c=c: (-c[value], value)) for a, c in counts.items()}

    def majority_answer_accuracy(self, split: Split = "test") -> float:
        """Exact match, in [0, 1], of always answering the majority QA-train answer of the attribute."""
        majority = self.majority_answers()
        questions = self._questions[check_split(split)]
        return sum(majority[attribute] == example.answer for attribute, example in questions) / len(questions)

    # -- generation -------------------------------------------------------------

    def _rng(self, stream: str) -> random.Random:
        """An independent random stream per stage, so one knob does not reshuffle the rest."""
        return random.Random(f"bioworld:{self.seed}:{stream}")

    def _value_lists(self, words: _WordMaker) -> dict[str, tuple[str, ...]]:
        """One value list per attribute; kinds are drawn in a fixed order, cities shared."""
        kinds = {_KIND[attribute] for attribute in self.attributes}
        by_kind = {kind: words.many(kind, self.n_values) for kind in _WORD_KINDS if kind in kinds}
        if "year" in kinds:
            by_kind["year"] = _years(self._rng("years"), self.n_values)
        return {attribute: by_kind[_KIND[attribute]] for attribute in self.attributes}

    def _people(self, words: _WordMaker) -> tuple[Person, ...]:
        lasts = words.many("last", self.n_people)
        ids = [f"p{index:05d}" for index in range(self.n_people)]
        split_of = split_subjects(ids, self.split_fractions, seed=self.seed)
        rng = self._rng("people")
        return tuple(self._person(rng, person_id, last, split_of[person_id])
                     for person_id, last in zip(ids, lasts, strict=True))

    def _person(self, rng: random.Random, person_id: str, last_name: str, split: Split | None) -> Person:
        """A person with a first name from the pool and one value per attribute, drawn from ``rng`` in that order."""
        first_name = rng.choice(self.first_names)
        facts = {attribute: rng.choice(self.values[attribute]) for attribute in self.attributes}
        return Person(id=person_id, first_name=first_name, last_name=last_name, facts=facts, split=split)

    def _words(self) -> set[str]:
        """Every word of the task's world: template words, names and values."""
        names = {part for person in self.people for part in (person.first_name, person.last_name)}
        values = {value for values in self.values.values() for value in values}
        return _template_words() | set(self.first_names) | names | values

    def _biography(self, person: Person, variant: int) -> tuple[Document, dict[str, int]]:
        """One biography and the offset of each attribute's value in it."""
        rng = self._rng(f"biography:{person.id}:{variant}")
        order = list(self.attributes)
        rng.shuffle(order)
        sentences = [(attribute, rng.choice(TEMPLATES[attribute])) for attribute in order]
        return _render(sentences, person)

    def _corpus(self) -> tuple[Document, ...]:
        return self._write(self.people, self._biographies, streams="")

    def _write(self, people: Sequence[Person], biographies: Mapping[str, Sequence[tuple[Document, dict[str, int]]]],
               streams: str) -> tuple[Document, ...]:
        """The biographies (and one-sentence facts when enabled) of ``people``, shuffled; ``streams`` prefixes
        the names of the random streams used."""
        documents = [document for bios in biographies.values() for document, _ in bios]
        if self.sentence_examples:
            rng = self._rng(f"{streams}sentences")
            for person in people:
                for attribute in self.attributes:
                    documents.append(_render([(attribute, rng.choice(TEMPLATES[attribute]))], person)[0])
        self._rng(f"{streams}corpus").shuffle(documents)
        return tuple(documents)

    def _qa(self) -> dict[Split, list[tuple[str, QAExample]]]:
        rng = self._rng("questions")
        questions: dict[Split, list[tuple[str, QAExample]]] = {split: [] for split in SPLITS}
        for person in self.people:
            context, offsets = self._biographies[person.id][0]
            for attribute in self.attributes:
                example = QAExample(
                    question=rng.choice(QUESTIONS[attribute]).format(name=person.name),
                    answer=person.facts[attribute],
                    subject=person.name,
                    context=context.text,
                    answer_start=offsets[attribute],
                )
                questions[person.split].append((attribute, example))
        return questions


def _render(sentences: Iterable[tuple[str, str]], person: Person) -> tuple[Document, dict[str, int]]:
    """Fills ``(attribute, template)`` sentences in; returns the document and value offsets."""
    text, spans, offsets = "", [], {}
    for attribute, template in sentences:
        if text:
            text += " "
        for piece in re.split(r"(\{name\}|\{value\})", template):
            filler = {"{name}": person.name, "{value}": person.facts[attribute]}.get(piece)
            if filler is None:
                text += piece
                continue
            spans.append((len(text), len(text) + len(filler)))
            if piece == "{value}":
                offsets[attribute] = len(text)
            text += filler
    return Document(text, tuple(spans)), offsets


class _WordMaker:
    """Draws capitalised pseudo-words, never repeating one (case-insensitively) or a reserved word."""

    def __init__(self, rng: random.Random, reserved: Iterable[str] = ()) -> None:
        self.rng = rng
        self.used = {word.lower() for word in reserved}

    def one(self, kind: str) -> str:
        for _ in range(_MAX_REJECTIONS):
            n_syllables = self.rng.choice((2, 2, 3))
            stem = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(n_syllables))
            word = stem + self.rng.choice(_ENDINGS[kind])
            if word not in self.used and not _AVOID.search(word):
                self.used.add(word)
                return word.capitalize()
        raise TaskError(f"the pseudo-word generator ran out of distinct {kind} words; use fewer people or values")

    def many(self, kind: str, count: int) -> tuple[str, ...]:
        return tuple(self.one(kind) for _ in range(count))


def _years(rng: random.Random, count: int) -> tuple[str, ...]:
    """``count`` distinct 4-digit years, from 1940–2004 when they fit, reaching further back otherwise."""
    first = min(1940, 2005 - count)
    return tuple(str(year) for year in rng.sample(range(first, 2005), count))


def _template_words() -> set[str]:
    texts = [t for group in (*TEMPLATES.values(), *QUESTIONS.values()) for t in group]
    return {word for text in texts for word in re.findall(r"[a-z]+", text.lower())}


def _check_attributes(attributes: Sequence[str]) -> tuple[str, ...]:
    attributes = tuple(attributes)
    unknown = [a for a in attributes if a not in TEMPLATES]
    if unknown:
        raise TaskError(f"unknown bioworld attribute(s) {unknown}; known attributes: {', '.join(ATTRIBUTES)}")
    if not attributes or len(set(attributes)) != len(attributes):
        raise TaskError(f"bioworld attributes must be a non-empty list without repeats, got {list(attributes)}")
    return attributes


def _check_range(knob: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or not low <= value <= high:
        raise TaskError(f"bioworld {knob} must be an integer in [{low}, {high}], got {value!r}")
