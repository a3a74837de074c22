import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from maskpolicy.tasks.base import TaskError
from maskpolicy.tasks.text.tokenization import check_tokenizer
from maskpolicy.tasks.training.models import ModelSpec


def test_tiny_bert_matches_its_tokenizer(tiny_tokenizer, tiny_bert_spec):
    model = tiny_bert_spec.build_model(tiny_tokenizer)
    assert model.get_input_embeddings().num_embeddings == len(tiny_tokenizer)
    assert model.config.pad_token_id == tiny_tokenizer.pad_token_id
    assert model.config._attn_implementation == "eager"


def test_tiny_bart_generates(tiny_tokenizer, tiny_bart_spec):
    model = tiny_bart_spec.build_model(tiny_tokenizer)
    ids = tiny_tokenizer(["Where was Ada Quill born?"], return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 1 and out.shape[1] <= 5


def test_max_length_beyond_the_model_is_refused(tiny_tokenizer, tiny_bert_spec):
    too_long = ModelSpec(config=tiny_bert_spec.config, max_length=128)
    with pytest.raises(TaskError, match="exceeds the model's 64 positions"):
        too_long.build_model(tiny_tokenizer)


def test_unknown_architecture_and_kind(tiny_tokenizer):
    with pytest.raises(TaskError, match="unknown model architecture"):
        ModelSpec(architecture="no-such-arch").build_model(tiny_tokenizer)
    with pytest.raises(TaskError, match="model kind"):
        ModelSpec(kind="causal")


def test_tokenizer_without_mask_token_is_refused():
    backend = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "hello": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")
    with pytest.raises(TaskError, match="no mask token"):
        check_tokenizer(tokenizer)


def test_a_missing_pretrained_model_names_the_problem(tiny_tokenizer, tmp_path):
    with pytest.raises(TaskError, match="could not load model"):
        ModelSpec(pretrained=str(tmp_path / "nowhere")).build_model(tiny_tokenizer)


def test_tokenizer_training_is_reproducible(tiny_task):
    from maskpolicy.tasks.text.tokenization import train_wordpiece

    texts = [d.text for d in tiny_task.corpus()]
    first, second = train_wordpiece(texts, 60), train_wordpiece(texts, 60)
    assert first.get_vocab() == second.get_vocab()
    assert torch.equal(torch.tensor(first(texts[0])["input_ids"]), torch.tensor(second(texts[0])["input_ids"]))


def test_trained_tokenizer_keeps_frequent_words_whole_and_spells_the_rest(tiny_task):
    from maskpolicy.tasks.text.tokenization import train_wordpiece

    texts = [d.text for d in tiny_task.corpus()]
    tokenizer = train_wordpiece(texts, vocab_size=1000)
    assert tokenizer.tokenize("Norvane chemistry") == ["Norvane", "chemistry"]
    assert tokenizer.tokenize("Norda") == ["N", "##o", "##r", "##d", "##a"], "unseen words are spelt"
    small = train_wordpiece(texts, vocab_size=len(tokenizer) - 3)
    assert len(small) == len(tokenizer) - 3
