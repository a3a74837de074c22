import pytest

from maskpolicy.policies import IGNORE_INDEX
from maskpolicy.tasks.base import QAExample
from maskpolicy.tasks.training.metrics import exact_match, normalize_answer, qa_scores, token_f1
from maskpolicy.tasks.training.qa import encode_qa


def test_normalisation_and_metrics():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert exact_match("denver broncos", ["The Denver Broncos"]) == 1.0
    assert exact_match("broncos", ["The Denver Broncos"]) == 0.0
    assert token_f1("broncos", ["Denver Broncos"]) == pytest.approx(2 / 3)
    assert token_f1("Carolina Panthers", ["Denver Broncos", "Panthers"]) == pytest.approx(2 / 3)
    assert qa_scores(["a b", "c"], [["a b"], ["d"]]) == {"em": 0.5, "f1": 0.5}
    assert qa_scores([], []) == {"em": 0.0, "f1": 0.0}


def test_cloze_rows_mask_exactly_the_answer_tokens(tiny_tokenizer):
    example = QAExample("Where was Ada Quill born?", "Norvane", "Ada Quill", aliases=("norvane",))
    (row,) = encode_qa([example], tiny_tokenizer, "masked_lm", 32)
    answer = tiny_tokenizer("Norvane", add_special_tokens=False)["input_ids"]
    at_answer = row["labels"] != IGNORE_INDEX
    assert row["labels"][at_answer].tolist() == answer
    assert (row["input_ids"][at_answer] == tiny_tokenizer.mask_token_id).all()
    assert tiny_tokenizer.mask_token_id not in row["input_ids"][~at_answer].tolist()
    assert row["input_ids"][-1] == tiny_tokenizer.sep_token_id
    assert row["answers"] == ("Norvane", "norvane")


def test_seq2seq_rows_target_the_answer_then_eos(tiny_tokenizer):
    example = QAExample("Where was Ada Quill born?", "Norvane", "Ada Quill")
    (row,) = encode_qa([example], tiny_tokenizer, "seq2seq", 32)
    answer = tiny_tokenizer("Norvane", add_special_tokens=False)["input_ids"]
    assert row["labels"].tolist() == answer + [tiny_tokenizer.eos_token_id]
    assert tiny_tokenizer.mask_token_id not in row["input_ids"].tolist()
