import numpy as np
import pytest
import torch

from maskpolicy.tasks.base import TaskError
from maskpolicy.tasks.text.encoding import encode_documents, pad_rows, token_batch, token_entity_ids


def test_token_entity_ids_marks_overlapping_tokens_and_skips_specials():
    offsets = np.array([[0, 0], [0, 3], [4, 9], [10, 12], [13, 18], [18, 20], [0, 0]])
    special = np.array([True, False, False, False, False, False, True])
    spans = [(4, 9), (13, 20)]
    assert token_entity_ids(offsets, spans, special).tolist() == [-1, -1, 0, -1, 1, 1, -1]
    assert token_entity_ids(offsets, [], special).tolist() == [-1] * 7


def test_encoded_entities_decode_to_the_gold_span_text(tiny_task, tiny_tokenizer):
    corpus = tiny_task.corpus()
    rows = encode_documents([d.text for d in corpus], [d.entities for d in corpus], tiny_tokenizer, 64)
    assert len(rows) == len(corpus)
    for row, document in zip(rows, corpus, strict=True):
        for k, (start, end) in enumerate(document.entities):
            tokens = row["input_ids"][row["entity_ids"] == k]
            assert tiny_tokenizer.decode(tokens) == document.text[start:end]
        assert (row["word_ids"][row["special"]] == -1).all()
        words = row["word_ids"][~row["special"]]
        assert (words.diff() >= 0).all(), "word ids are contiguous and increasing"


def test_overflow_chunk_truncate_and_error(tiny_task, tiny_tokenizer):
    texts = [" ".join(d.text for d in tiny_task.corpus())]
    spans = [()]
    chunked = encode_documents(texts, spans, tiny_tokenizer, 16, overflow="chunk")
    truncated = encode_documents(texts, spans, tiny_tokenizer, 16, overflow="truncate")
    assert len(truncated) == 1 and len(chunked) > 1
    assert all(len(row["input_ids"]) <= 16 for row in chunked)
    content = sum(int((~row["special"]).sum()) for row in chunked)
    assert content == len(tiny_tokenizer(texts[0], add_special_tokens=False)["input_ids"]), "chunking loses nothing"
    with pytest.raises(TaskError, match="overflow=chunk"):
        encode_documents(texts, spans, tiny_tokenizer, 16, overflow="error")


def test_empty_corpus_is_refused(tiny_tokenizer):
    with pytest.raises(TaskError, match="corpus is empty"):
        encode_documents([], [], tiny_tokenizer, 16)


def test_pad_rows_builds_the_policy_view(tiny_task, tiny_tokenizer):
    corpus = tiny_task.corpus()
    rows = encode_documents([d.text for d in corpus], [d.entities for d in corpus], tiny_tokenizer, 64)
    rows[1] = {key: value[:5] for key, value in rows[1].items()}  # a shorter row forces padding
    batch = pad_rows(rows, tiny_tokenizer.pad_token_id)
    view = token_batch(batch)
    assert view.input_ids.shape == view.maskable.shape == batch["attention_mask"].shape
    assert not view.maskable[1, 5:].any()
    assert (view.input_ids[1, 5:] == tiny_tokenizer.pad_token_id).all()
    specials = torch.isin(view.input_ids, torch.tensor(tiny_tokenizer.all_special_ids))
    assert not (view.maskable & specials).any()
    assert (view.maskable == (~specials & batch["attention_mask"].bool())).all()
