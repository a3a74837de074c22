import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, default_collate

from maskpolicy.policies import EntityPolicy, RandomPolicy, RateSchedule
from maskpolicy.tasks.text.encoding import encode_documents, pad_rows, token_batch
from maskpolicy.tasks.training.pretraining import EncoderCorruption, MaskedPretraining, Seq2SeqCorruption


@pytest.fixture
def batch(tiny_task, tiny_tokenizer):
    corpus = tiny_task.corpus()
    rows = encode_documents([d.text for d in corpus], [d.entities for d in corpus], tiny_tokenizer, 64)
    return pad_rows(rows, tiny_tokenizer.pad_token_id)


def test_random_replacements_never_use_special_tokens(tiny_tokenizer):
    corruption = EncoderCorruption(tiny_tokenizer)
    assert not set(corruption.replacement_ids.tolist()) & set(tiny_tokenizer.all_special_ids)
    assert len(corruption.replacement_ids) == len(tiny_tokenizer) - len(tiny_tokenizer.all_special_ids)


def test_encoder_step_masks_entities_and_gives_a_finite_loss(batch, tiny_tokenizer, tiny_bert_spec):
    torch.manual_seed(0)
    model = tiny_bert_spec.build_model(tiny_tokenizer)
    module = MaskedPretraining(model, EntityPolicy(rate=0.15), EncoderCorruption(tiny_tokenizer), seed=3)
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss) and loss.requires_grad
    assert module.masked_seen > 0 and module.tokens_seen == int(batch["attention_mask"].sum())


def test_seq2seq_step_with_both_targets(batch, tiny_tokenizer, tiny_bart_spec):
    model = tiny_bart_spec.build_model(tiny_tokenizer)
    mask = RandomPolicy(0.3).select(token_batch(batch), torch.Generator().manual_seed(0))
    for target in ("spans", "full"):
        inputs = Seq2SeqCorruption(tiny_tokenizer, target=target)(batch, mask, torch.Generator())
        assert torch.isfinite(model(**inputs).loss)
        if target == "full":
            assert inputs["labels"].shape == batch["input_ids"].shape


def test_generator_state_survives_a_checkpoint(batch, tiny_tokenizer, tiny_bert_spec):
    model = tiny_bert_spec.build_model(tiny_tokenizer)
    module = MaskedPretraining(model, RandomPolicy(0.3), EncoderCorruption(tiny_tokenizer), seed=7)
    module.policy.select(token_batch(batch), module.generator)
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    expected = module.policy.select(token_batch(batch), module.generator)
    restored = MaskedPretraining(model, RandomPolicy(0.3), EncoderCorruption(tiny_tokenizer), seed=7)
    restored.on_load_checkpoint(checkpoint)
    assert torch.equal(restored.policy.select(token_batch(batch), restored.generator), expected)


class RateLog(pl.Callback):
    """The policy's rate at every training batch, by global step."""

    def __init__(self):
        self.rates = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.rates[trainer.global_step - 1] = module.policy.rate


def fit(module, batch, steps: int, tmp_path, resume=None) -> RateLog:
    log = RateLog()
    saver = ModelCheckpoint(tmp_path, every_n_train_steps=2, save_top_k=-1, filename="{step}")
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[log, saver], accelerator="cpu")
    rows = [{k: v[i] for k, v in batch.items()} for i in range(len(batch["input_ids"]))]
    trainer.fit(module, DataLoader(rows, batch_size=4, collate_fn=default_collate), ckpt_path=resume)
    return log


def test_a_rate_schedule_follows_the_global_step_across_a_resume(batch, tiny_tokenizer, tiny_bert_spec, tmp_path):
    schedule = RateSchedule("linear", start=0.4, end=0.1)

    def module():
        return MaskedPretraining(tiny_bert_spec.build_model(tiny_tokenizer), RandomPolicy(0.15),
                                 EncoderCorruption(tiny_tokenizer), seed=0, schedule=schedule)

    whole = fit(module(), batch, 4, tmp_path / "whole")
    assert whole.rates == pytest.approx({0: 0.4, 1: 0.3, 2: 0.2, 3: 0.1})
    resumed = fit(module(), batch, 4, tmp_path / "resumed", resume=tmp_path / "whole" / "step=2.ckpt")
    assert resumed.rates == pytest.approx({2: 0.2, 3: 0.1})
    assert module().rate_points(4, points=3) == [[0, 0.4], [2, 0.2], [3, 0.1]]
