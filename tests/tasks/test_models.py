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


# -- pre-trained checkpoints: what was loaded, what is new, and folders that cannot be used ----------------------


@pytest.fixture()
def encoder_folder(tiny_tokenizer, tmp_path):
    """A BERT checkpoint without a masked-LM head (as a sentence encoder ships): the encoder and a pooler only."""
    from transformers import AutoConfig, BertModel

    config = AutoConfig.for_model("bert", vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(tmp_path / "encoder")
    tiny_tokenizer.save_pretrained(tmp_path / "encoder")
    return tmp_path / "encoder"


def test_a_checkpoint_without_a_head_is_loaded_with_the_head_recorded_as_new(encoder_folder, tiny_tokenizer):
    from safetensors.torch import load_file

    spec = ModelSpec(pretrained=str(encoder_folder), tokenizer=str(encoder_folder), architecture="bert", max_length=64)
    torch.manual_seed(3)
    model, report = spec.load(spec.build_tokenizer([]))
    assert report.source == str(encoder_folder) and report.architecture == "bert"
    assert report.model_class == "BertForMaskedLM"
    assert set(report.new) >= {"cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
                               "cls.predictions.transform.LayerNorm.weight", "cls.predictions.bias"}
    assert all(name.startswith("cls.") for name in report.new), "only the head is new"
    assert set(report.unused) == {"pooler.dense.weight", "pooler.dense.bias"} and report.mismatched == ()
    assert report.loaded == sum(1 for name, _ in model.named_parameters() if name not in report.new)
    saved = load_file(encoder_folder / "model.safetensors")
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, saved["embeddings.word_embeddings.weight"])
    torch.manual_seed(3)
    again, _ = spec.load(spec.build_tokenizer([]))
    assert torch.equal(model.cls.predictions.transform.dense.weight, again.cls.predictions.transform.dense.weight), \
        "new weights come from the seeded generator"


def test_a_model_built_from_its_config_has_no_load_report(tiny_tokenizer, tiny_bert_spec):
    assert tiny_bert_spec.load(tiny_tokenizer)[1] is None


def test_a_checkpoint_of_another_architecture_or_kind_is_refused(encoder_folder, tiny_tokenizer):
    with pytest.raises(TaskError, match="'bert' checkpoint but model.architecture is 'roberta'.*architecture=null"):
        ModelSpec(pretrained=str(encoder_folder), architecture="roberta").load(tiny_tokenizer)
    with pytest.raises(TaskError, match="'bert' checkpoint, which has no seq2seq model class.*model=hf_masked_lm"):
        ModelSpec(kind="seq2seq", pretrained=str(encoder_folder)).load(tiny_tokenizer)
    assert ModelSpec(pretrained=str(encoder_folder), max_length=64).load(tiny_tokenizer)[1].architecture == "bert", \
        "architecture null accepts any"


def test_model_folders_without_weights_config_or_tokenizer_name_what_is_missing(encoder_folder, tiny_tokenizer,
                                                                                tmp_path):
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((encoder_folder / "config.json").read_text())
    with pytest.raises(TaskError, match="has no weights .*model.safetensors"):
        ModelSpec(pretrained=str(no_weights)).load(tiny_tokenizer)
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes((encoder_folder / "model.safetensors").read_bytes())
    with pytest.raises(TaskError, match="has no config.json"):
        ModelSpec(pretrained=str(no_config)).load(tiny_tokenizer)
    with pytest.raises(TaskError, match="has no tokenizer .*model.tokenizer=null"):
        ModelSpec(pretrained=str(no_weights), tokenizer=str(no_weights)).build_tokenizer([])
    with pytest.raises(TaskError, match="is a file"):
        ModelSpec(pretrained=str(encoder_folder / "config.json")).load(tiny_tokenizer)
