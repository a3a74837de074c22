"""Shared fixtures: a tiny hand-written task and a tokenizer trained on it."""

from __future__ import annotations

import pytest

from maskpolicy.tasks.base import Document, QAExample
from maskpolicy.tasks.text.tokenization import train_wordpiece
from maskpolicy.tasks.training.models import ModelSpec

PEOPLE = [("Ada Quill", "Norvane"), ("Bram Tollo", "Keswith"), ("Cora Venn", "Norvane"), ("Dax Ormo", "Palrith")]


class TinyTask:
    """Four people, one fact each; enough to exercise every stage in milliseconds."""

    name = "tiny"

    def corpus(self) -> list[Document]:
        documents = []
        for person, city in PEOPLE:
            text = f"{person} was born in {city} and studied chemistry at the academy."
            start = text.index(city)
            documents.append(Document(text, ((0, len(person)), (start, start + len(city)))))
        return documents

    def qa(self, split: str) -> list[QAExample]:
        chosen = {"train": PEOPLE[:2], "dev": PEOPLE[2:3], "test": PEOPLE[3:]}[split]
        return [QAExample(f"Where was {person} born?", city, person) for person, city in chosen]


@pytest.fixture(scope="session")
def tiny_task() -> TinyTask:
    return TinyTask()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_task):
    questions = [q.question for split in ("train", "dev", "test") for q in tiny_task.qa(split)]
    texts = [d.text for d in tiny_task.corpus()] + questions
    return train_wordpiece(texts, vocab_size=200)


@pytest.fixture(scope="session")
def tiny_bert_spec() -> ModelSpec:
    config = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
              "max_position_embeddings": 64}
    return ModelSpec(config=config, max_length=64)


@pytest.fixture(scope="session")
def tiny_bart_spec() -> ModelSpec:
    config = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
              "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
              "max_position_embeddings": 64}
    return ModelSpec(kind="seq2seq", architecture="bart", config=config, max_length=64)
