"""The masked-LM head at the labelled positions only gives the full head's loss, gradients and log-probabilities."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoConfig, AutoModelForMaskedLM, BertConfig, BertForPreTraining

from maskpolicy.meta.scoring.predictors import MaskedLMPredictor
from maskpolicy.policies import RandomPolicy
from maskpolicy.tasks.text.encoding import encode_documents, pad_rows, token_batch
from maskpolicy.tasks.training import heads
from maskpolicy.tasks.training.heads import LAYOUTS, layout_of, masked_lm_loss, masked_logits
from maskpolicy.tasks.training.pretraining import MaskedPretraining, build_corruption

VOCAB, ROWS, LENGTH, FIRST_ORDINARY_ID, MASK_ID = 150, 4, 24, 5, 4
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 64, "vocab_size": VOCAB}
# a tiny config per architecture; every entry of LAYOUTS needs one (see the first test)
CONFIGS = {name: TINY for name in LAYOUTS} | {
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "max_position_embeddings": 64,
                   "vocab_size": VOCAB},
    "albert": TINY | {"embedding_size": 16, "hidden_dropout_prob": 0.1},  # ALBERT's default dropout is 0
    "electra": TINY | {"embedding_size": 16},  # the generator's head maps back to the smaller embeddings
}
UNSPLIT = "deberta-v2"  # a masked LM left out of the table


def tiny(model_type: str, seed: int = 0):
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **CONFIGS.get(model_type, TINY))
    return AutoModelForMaskedLM.from_config(config, attn_implementation="eager")


def batch(seed: int = 1, rate: float = 0.15) -> dict[str, torch.Tensor]:
    """Random ids, the last row padded after 16 tokens, ~``rate`` of the real positions labelled (at least one)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_ORDINARY_ID, VOCAB, (ROWS, LENGTH), generator=generator)
    attention = torch.ones_like(ids)
    attention[-1, 16:] = 0
    chosen = (torch.rand(ROWS, LENGTH, generator=generator) < rate) & attention.bool()
    chosen[0, 3] = True
    return {"input_ids": torch.where(chosen, MASK_ID, ids), "attention_mask": attention,
            "labels": torch.where(chosen, ids, -100)}


def loss_and_grads(model, compute, seed: int = 5) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks in train mode
    loss = compute()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_loss_and_grads(model, inputs: dict[str, torch.Tensor]) -> None:
    full, full_grads = loss_and_grads(model, lambda: model(**inputs).loss)
    sparse, sparse_grads = loss_and_grads(model, lambda: masked_lm_loss(model, **inputs))
    assert float(sparse) == pytest.approx(float(full), abs=1e-6)
    assert sparse_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_every_layout_has_a_tiny_config_and_names_its_masked_lm_class():
    assert set(LAYOUTS) <= set(CONFIGS) and UNSPLIT not in LAYOUTS
    for name, layout in LAYOUTS.items():
        assert type(tiny(name)).__name__ == layout.masked_lm


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("model_type", sorted(LAYOUTS))
def test_the_sparse_head_gives_the_full_heads_loss_and_gradients(model_type, mode):
    model = getattr(tiny(model_type), mode)()
    assert layout_of(model) is LAYOUTS[model_type]
    assert_same_loss_and_grads(model, batch())


@pytest.mark.parametrize("model_type", sorted(LAYOUTS))
def test_masked_logits_are_the_full_logits_at_the_chosen_positions(model_type):
    model, inputs = tiny(model_type).eval(), batch(rate=0.5)
    chosen = inputs.pop("labels") != -100
    with torch.no_grad():
        full = model(**inputs).logits[chosen]
        sparse = masked_logits(model, inputs["input_ids"], inputs["attention_mask"], chosen)
    assert sparse.shape == (int(chosen.sum()), VOCAB)
    torch.testing.assert_close(sparse, full, rtol=1e-5, atol=1e-5)


def test_token_type_ids_reach_the_encoder():
    model = AutoModelForMaskedLM.from_config(BertConfig(**TINY, type_vocab_size=2), attn_implementation="eager")
    inputs = batch()
    types = (torch.arange(LENGTH) >= LENGTH // 2).long().expand(ROWS, LENGTH)
    model.eval()
    assert_same_loss_and_grads(model, inputs | {"token_type_ids": types})
    with torch.no_grad():
        assert masked_lm_loss(model, **inputs, token_type_ids=types) != masked_lm_loss(model, **inputs)


def test_a_model_outside_the_table_runs_in_full_and_is_logged_once(caplog, monkeypatch):
    monkeypatch.setattr(heads, "_reported", set())
    model = tiny(UNSPLIT).eval()
    assert layout_of(model) is None
    with caplog.at_level(logging.INFO, logger=heads.__name__):
        assert_same_loss_and_grads(model, batch())
        assert_same_loss_and_grads(model, batch(seed=2))
    notes = [record.getMessage() for record in caplog.records if record.name == heads.__name__]
    assert len(notes) == 1 and "DebertaV2ForMaskedLM (deberta-v2)" in notes[0]


def test_a_listed_architecture_that_is_not_its_masked_lm_is_not_split():
    assert layout_of(BertForPreTraining(BertConfig(**TINY))) is None
    with pytest.raises(TypeError, match="cannot be split"):
        heads.head(BertForPreTraining(BertConfig(**TINY)), torch.zeros(1, 32))


@pytest.mark.parametrize("model_type", ["bert", UNSPLIT])
def test_a_batch_without_labels_gives_zero_with_zero_gradients_where_the_full_head_gives_nan(model_type):
    model = tiny(model_type).train()
    inputs = batch()
    inputs["labels"] = torch.full_like(inputs["labels"], -100)
    assert torch.isnan(model(**inputs).loss)
    loss, grads = loss_and_grads(model, lambda: masked_lm_loss(model, **inputs))
    assert float(loss) == 0.0
    assert len(grads) == len(list(model.parameters())) and all(not g.any() for g in grads.values())


@pytest.mark.parametrize("model_type", ["bert", "distilbert", UNSPLIT])
def test_the_scorer_gives_the_full_softmax_log_probabilities_at_masked_positions(model_type):
    model, inputs = tiny(model_type).train(), batch(rate=0.4)
    ids, masks = torch.where(inputs["labels"] != -100, inputs["labels"], inputs["input_ids"]), inputs["labels"] != -100
    ids[-1, 16:] = 0  # padding (pad id 0) drops out of attention
    log_probs = MaskedLMPredictor(model, MASK_ID, pad_token_id=0)(ids, masks)
    assert model.training  # the predictor restores the mode it found
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids.masked_fill(masks, MASK_ID), attention_mask=inputs["attention_mask"]).logits
    expected = logits.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
    torch.testing.assert_close(log_probs[masks], expected[masks], rtol=1e-5, atol=1e-5)
    assert not log_probs[~masks].any()


@pytest.fixture
def rows(tiny_task, tiny_tokenizer):
    corpus = tiny_task.corpus()
    return pad_rows(encode_documents([d.text for d in corpus], [d.entities for d in corpus], tiny_tokenizer, 64),
                    tiny_tokenizer.pad_token_id)


@pytest.mark.parametrize("kind", ["masked_lm", "seq2seq"])
def test_the_pretraining_step_gives_the_models_own_loss(kind, rows, tiny_tokenizer, tiny_bert_spec, tiny_bart_spec):
    torch.manual_seed(0)
    model = (tiny_bert_spec if kind == "masked_lm" else tiny_bart_spec).build_model(tiny_tokenizer).eval()
    corruption = build_corruption(kind, tiny_tokenizer)
    loss = MaskedPretraining(model, RandomPolicy(0.3), corruption, seed=3).training_step(rows, 0)
    twin = MaskedPretraining(model, RandomPolicy(0.3), corruption, seed=3)  # the same mask stream
    mask = twin.policy.select(token_batch(rows), twin.generator)
    with torch.no_grad():
        expected = model(**corruption(rows, mask, twin.generator)).loss
    assert loss.requires_grad and float(loss.detach()) == pytest.approx(float(expected), abs=1e-6)
