"""MaskingCollator in the real clients: a ``transformers.Trainer`` pre-training run and a PyTorch ``DataLoader``
with worker processes (tiny BERT, tokenizer trained here, offline, seconds)."""

from __future__ import annotations

import pytest
import torch
from test_collator import RATE, SPANS, TEXTS  # tests/meta is on sys.path (pytest's prepend mode)
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForMaskedLM, Trainer, TrainingArguments

from maskpolicy import CollatorError, MaskingCollator, save_policy
from maskpolicy.policies import LearnedPolicy
from maskpolicy.tasks.text.encoding import token_batch
from maskpolicy.tasks.text.tokenization import train_wordpiece

IGNORE = -100


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece(TEXTS, vocab_size=160)


class RecordingTrainer(Trainer):
    """A Trainer that keeps every batch its data collator produced, as the model received it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches: list[dict[str, torch.Tensor]] = []

    def compute_loss(self, model, inputs, *args, **kwargs):
        self.batches.append({key: value.detach().cpu().clone() for key, value in inputs.items()})
        return super().compute_loss(model, inputs, *args, **kwargs)


def train(collator: MaskingCollator, tokenizer, folder, *, steps: int = 6, **arguments) -> RecordingTrainer:
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    options = {"remove_unused_columns": False, **arguments}
    args = TrainingArguments(output_dir=str(folder), max_steps=steps, per_device_train_batch_size=4, report_to=[],
                             use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
                             **options)
    trainer = RecordingTrainer(model=model, args=args, train_dataset=collator.tokenize(TEXTS, SPANS),
                               data_collator=collator)
    trainer.train()
    return trainer


def originals(trainer: RecordingTrainer, collator: MaskingCollator) -> list[tuple[dict, torch.Tensor, dict]]:
    """(prepared example, its selected positions, its corrupted row) for every row the model saw.

    The original row is the labels where they are set and the inputs elsewhere; finding it among the
    training examples shows that nothing but the selected positions was corrupted."""
    prepared = [collator.prepare([example]) for example in collator.tokenize(TEXTS, SPANS)]
    by_ids = {tuple(p["input_ids"][0].tolist()): p for p in prepared}
    rows = []
    for batch in trainer.batches:
        for b in range(len(batch["input_ids"])):
            real = batch["attention_mask"][b].bool()
            selected = (batch["labels"][b] != IGNORE)[real]
            original = torch.where(selected, batch["labels"][b][real], batch["input_ids"][b][real])
            assert tuple(original.tolist()) in by_ids, "a row was corrupted outside its selected positions"
            rows.append((by_ids[tuple(original.tolist())], selected, {k: v[b][real] for k, v in batch.items()}))
    return rows


def check_contract(rows, mask_token_id: int) -> None:
    """Labels -100 exactly where not selected (by construction of ``originals``), never a special token, and the
    80/10/10 split roughly honoured over everything selected."""
    selected = torch.cat([s for _, s, _ in rows])
    masked = torch.cat([row["input_ids"][s] == mask_token_id for _, s, row in rows])
    assert all(not (s & ~p["maskable"][0]).any() for p, s, _ in rows)
    assert selected.sum() > 20 and 0.65 < masked.float().mean() < 0.95


def test_a_trainer_pre_trains_with_entity_masks_inside_entity_spans_only(tokenizer, tmp_path):
    collator = MaskingCollator(tokenizer, "entity", rate=RATE, shortfall="top_up")
    rows = originals(train(collator, tokenizer, tmp_path), collator)
    check_contract(rows, tokenizer.mask_token_id)
    for example, selected, _ in rows:
        entity, maskable = example["entity_ids"][0] >= 0, example["maskable"][0]
        budget = round(RATE * int(maskable.sum()))
        if int((entity & maskable).sum()) >= budget:  # rows with enough entity tokens mask entity tokens only
            assert not (selected & ~entity).any() and selected.any()


def test_a_trainer_pre_trains_with_contiguous_span_masks_of_exact_size(tokenizer, tmp_path):
    collator = MaskingCollator(tokenizer, "span", rate=RATE, p=0.2, max_length=10)
    rows = originals(train(collator, tokenizer, tmp_path, steps=12), collator)
    check_contract(rows, tokenizer.mask_token_id)
    runs = tokens = 0
    for example, selected, _ in rows:
        assert int(selected.sum()) == round(RATE * int(example["maskable"][0].sum()))
        starts = selected & ~torch.nn.functional.pad(selected[:-1], (1, 0), value=False)
        runs, tokens = runs + int(starts.sum()), tokens + int(selected.sum())
    # spans, not scattered tokens: 3.8 tokens on average before the cut at each row's budget of 4-8 tokens;
    # uniform choices of 30% of a row would give runs of about 1 / (1 - 0.3) = 1.4 tokens
    assert tokens / runs > 1.7


def test_a_trainer_pre_trains_with_pmi_units_as_whole_words(tokenizer, tmp_path):
    collator = MaskingCollator(tokenizer, "pmi", rate=RATE, min_count=2).fit(TEXTS)
    rows = originals(train(collator, tokenizer, tmp_path), collator)
    check_contract(rows, tokenizer.mask_token_id)
    joined = 0
    for example, selected, _ in rows:
        words = example["word_ids"][0]
        for word in words[words >= 0].unique():
            inside = selected[words == word]
            assert inside.all() or not inside.any(), "pmi masks words whole"
        chosen_words = words[selected].unique()
        joined += int(torch.isin(chosen_words + 1, chosen_words).sum())
    assert joined > 0  # some n-grams were masked as one unit


def test_a_trainer_pre_trains_with_a_saved_learned_policy(tokenizer, tmp_path):
    policy = LearnedPolicy(RATE, sampling="topk", seed=4)
    save_policy(policy, tmp_path / "learned", training={"method": "supervised"})
    collator = MaskingCollator.from_pretrained(tmp_path / "learned", tokenizer).fit(TEXTS)
    rows = originals(train(collator, tokenizer, tmp_path / "run"), collator)
    check_contract(rows, tokenizer.mask_token_id)
    for example, selected, _ in rows:  # top-k: exactly the highest-scoring tokens of the row
        logits = collator.policy.logits(token_batch({**example, "feature_names": collator.feature_names}))[0]
        assert torch.equal(selected, torch.zeros_like(selected).scatter(0, logits.topk(int(selected.sum())).indices,
                                                                          True))


def test_a_trainer_that_drops_the_word_ids_gets_told_which_setting_does_it(tokenizer, tmp_path):
    collator = MaskingCollator(tokenizer, "whole_word")
    with pytest.raises(CollatorError, match="remove_unused_columns=False"):
        train(collator, tokenizer, tmp_path, steps=1, remove_unused_columns=True)


def batches(collator: MaskingCollator, *, seed: int | None, epochs: int = 1, workers: int = 2) -> list[dict]:
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    loader = DataLoader(collator.tokenize(TEXTS * 2, SPANS * 2), batch_size=4, num_workers=workers,
                        collate_fn=collator, generator=generator)
    return [batch for _ in range(epochs) for batch in loader]


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_a_dataloader_with_two_workers_repeats_its_batches_at_one_seed(tokenizer):
    collator = MaskingCollator(tokenizer, "whole_word", rate=RATE, seed=3)
    first, again = batches(collator, seed=0), batches(collator, seed=0)
    assert same(first, again)
    assert not same(first, batches(collator, seed=1))  # another DataLoader seed, other masks
    assert same(first, batches(MaskingCollator(tokenizer, "whole_word", rate=RATE, seed=3), seed=0))
    assert not same(first, batches(MaskingCollator(tokenizer, "whole_word", rate=RATE, seed=4), seed=0))


def test_workers_mask_the_same_examples_differently_and_epochs_differ(tokenizer):
    collator = MaskingCollator(tokenizer, "random", rate=RATE, seed=3)
    loader = DataLoader([collator.tokenize(TEXTS[:1])[0]] * 8, batch_size=4, num_workers=2, collate_fn=collator,
                        generator=torch.Generator().manual_seed(0))
    epoch_1, epoch_2 = list(loader), list(loader)
    # batch 0 came from worker 0 and batch 1 from worker 1: the same rows, masked apart
    assert len(epoch_1) == 2 and not torch.equal(epoch_1[0]["labels"], epoch_1[1]["labels"])
    assert not torch.equal(epoch_1[0]["labels"], epoch_2[0]["labels"])  # a new epoch, new worker seeds
    fixed = MaskingCollator(tokenizer, "random", rate=RATE, seed=3, reseed_each_epoch=False)
    unseeded = [list(DataLoader([collator.tokenize(TEXTS[:1])[0]] * 8, batch_size=4, num_workers=2,
                                collate_fn=fixed)) for _ in range(2)]
    assert same(unseeded[0], unseeded[1])  # tied to seed and worker id only: no DataLoader seed needed
    assert not torch.equal(unseeded[0][0]["labels"], unseeded[0][1]["labels"])
