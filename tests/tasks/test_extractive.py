"""Extractive QA: windows and offsets, the counted skip, refusals, span decoding, and fine-tuning tiny models."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from tokenizers import processors
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerFast

from maskpolicy.tasks.base import QAExample, TaskError
from maskpolicy.tasks.data.squad import SquadTask
from maskpolicy.tasks.text.encoding import pad_rows
from maskpolicy.tasks.text.tokenization import SPECIAL_TOKENS, train_wordpiece
from maskpolicy.tasks.training.datamodule import RowsDataModule
from maskpolicy.tasks.training.downstream import DownstreamTask, FinetuneOptions
from maskpolicy.tasks.training.extractive import ExtractiveQA, ExtractiveQAFineTuning, best_answers, pad_windows
from maskpolicy.tasks.training.models import ModelSpec

SAMPLES = Path(__file__).resolve().parents[3] / "shared/data/squad-sample"
FACTS = [("Ada Quill", "Norvane", "chemistry"), ("Bram Tollo", "Keswith", "music"), ("Cora Venn", "Palrith", "law"),
         ("Dax Ormo", "Lindmoor", "botany"), ("Edda Pell", "Port Ellis", "history"),
         ("Finn Harrow", "Sorrel Bay", "physics")]
TEMPLATES = ["{p} was born in {c} and studied {f} at the academy.", "After years of {f}, {p} went home to {c}.",
             "In {c}, {p} was born; later {p} taught {f}."]
LONG = " ".join(f"{p} was born in {c} and studied {f}." for p, c, f in FACTS)  # one context, many windows


def question(text: str, answer: str, context: str, occurrence: int = 0) -> QAExample:
    start = -1
    for _ in range(occurrence + 1):
        start = context.index(answer, start + 1)
    return QAExample(text, answer, "s", context, start)


def short_questions() -> list[QAExample]:
    """One question per person, asked about a context of its own; the answer moves between templates."""
    contexts = [TEMPLATES[k % 3].format(p=p, c=c, f=f) for k, (p, c, f) in enumerate(FACTS)]
    return [question(f"Where is {p} from?", c, context) for (p, c, _), context in zip(FACTS, contexts, strict=True)]


def long_questions() -> list[QAExample]:
    return [question(f"Where was {p} born?", c, LONG) for p, c, _ in FACTS]


class Questions:
    """A task whose every split asks the same questions (so dev measures memorisation)."""

    name = "questions"

    def __init__(self, examples):
        self.examples = list(examples)

    def corpus(self):
        return []

    def qa(self, split):
        return self.examples


@pytest.fixture(scope="module")
def tokenizer():
    texts = [LONG] + [e.context + " " + e.question for e in short_questions() + long_questions()]
    return train_wordpiece(texts, vocab_size=300)


def context_offsets(row) -> list[tuple[int, int]]:
    return [tuple(pair) for pair in row["offsets"].tolist() if pair[0] >= 0]


# -- windows and offsets --------------------------------------------------------------------------------------------


def test_a_long_context_becomes_overlapping_windows_that_cover_it(tokenizer):
    downstream, max_length, stride = ExtractiveQA(stride=6), 32, 6
    examples = long_questions()[:1]
    rows = downstream.rows(Questions(examples), "dev", tokenizer, "masked_lm", max_length)
    tokens = tokenizer(LONG, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    asked = tokenizer(examples[0].question, add_special_tokens=False)["input_ids"]
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True) - len(asked)
    assert len(rows) == 1 + math.ceil((len(tokens) - room) / (room - stride)) > 2
    windows = [context_offsets(row) for row in rows]
    for before, after in zip(windows, windows[1:], strict=False):
        assert before[-stride:] == after[:stride]  # exactly `stride` tokens shared
    assert windows[0] + [pair for window in windows[1:] for pair in window[stride:]] == [tuple(t) for t in tokens]
    for row in rows:
        outside = row["offsets"][:, 0] < 0
        assert row["input_ids"][1 : len(asked) + 1].tolist() == asked and outside[: len(asked) + 2].all()
        assert outside[-1] and len(row["input_ids"]) <= max_length  # the closing special token
        assert row["index"] == 0 and row["context"] == LONG and row["answers"] == ("Norvane",)
    assert downstream.counts["dev_questions"] == 1 and downstream.counts["dev_windows"] == len(rows)


def test_training_windows_hold_the_whole_answer_at_its_exact_characters(tokenizer):
    downstream, examples = ExtractiveQA(stride=6), long_questions()
    train = downstream.rows(Questions(examples), "train", tokenizer, "masked_lm", 32)
    every = downstream.rows(Questions(examples), "dev", tokenizer, "masked_lm", 32)
    def holds(row) -> bool:
        example, offsets = examples[row["index"]], context_offsets(row)
        return offsets[0][0] <= example.answer_start and offsets[-1][1] >= example.answer_start + len(example.answer)

    def windows(rows) -> list:
        return [(row["index"], row["offsets"].tolist()) for row in rows]

    assert windows(train) == windows([row for row in every if holds(row)])
    assert {row["index"] for row in train} == set(range(len(examples)))
    for row in train:
        offsets, first, last = row["offsets"], row["start_positions"], row["end_positions"]
        assert LONG[offsets[first, 0] : offsets[last, 1]] == examples[row["index"]].answer
        assert "context" not in row and "answers" not in row
    assert downstream.counts["answers_outside_windows"] == 0 and downstream.counts["train_windows"] == len(train)


def test_an_answer_outside_every_window_is_skipped_and_counted(tokenizer):
    context = TEMPLATES[0].format(p="Ada Quill", c="Norvane", f="chemistry")
    too_long = question("What is said of Ada Quill?", context[: context.index(" at")], context)
    examples = [too_long, *short_questions()[1:3]]
    downstream = ExtractiveQA(stride=2)
    train = downstream.rows(Questions(examples), "train", tokenizer, "masked_lm", 20)
    assert {row["index"] for row in train} == {1, 2}
    assert downstream.counts["answers_outside_windows"] == 1 and downstream.counts["train_questions"] == 3
    dev = downstream.rows(Questions(examples), "dev", tokenizer, "masked_lm", 20)
    assert {row["index"] for row in dev} == {0, 1, 2}  # evaluation keeps every question and window
    with pytest.raises(TaskError, match="no training window"):
        downstream.rows(Questions([too_long]), "train", tokenizer, "masked_lm", 20)


def test_a_long_question_gets_the_stride_its_window_allows(tokenizer):
    long_question = question("Where was Ada Quill born, in which town, by the records of the academy?", "Norvane",
                             LONG)
    downstream = ExtractiveQA(stride=20)
    rows = downstream.rows(Questions([long_question, long_questions()[1]]), "dev", tokenizer, "masked_lm", 40)
    asked = len(tokenizer(long_question.question, add_special_tokens=False)["input_ids"])
    room = 40 - 3 - asked
    assert room <= 20 and downstream.counts["dev_strides_lowered"] == 1
    first = [context_offsets(row) for row in rows if row["index"] == 0]
    assert all(a[-(room - 1):] == b[: room - 1] for a, b in zip(first, first[1:], strict=False)) and len(first) > 1
    assert [row["index"] for row in rows] == sorted(row["index"] for row in rows)


def typed_tokenizer(texts):
    """A BERT-style tokenizer that gives token types: 0 for ``[CLS] question [SEP]``, 1 for ``context [SEP]``."""
    backend = train_wordpiece(texts, vocab_size=200).backend_tokenizer
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_input_names=["input_ids", "token_type_ids",
                                                                                "attention_mask"], **SPECIAL_TOKENS)


def test_token_types_reach_a_bert_encoder_and_never_a_seq2seq_one(tiny_bert_spec):
    typed = typed_tokenizer([e.context + " " + e.question for e in short_questions()])
    task, downstream = Questions(short_questions()[:2]), ExtractiveQA()
    rows = downstream.rows(task, "train", typed, "masked_lm", 64)
    context = (rows[0]["offsets"][:, 0] >= 0).long()
    assert rows[0]["token_type_ids"].tolist() == [*context[:-1].tolist(), 1]  # the closing [SEP] is the context's
    assert all("token_type_ids" not in row for row in downstream.rows(task, "train", typed, "seq2seq", 64))
    batch = downstream.collate(typed.pad_token_id)(rows)
    module = ExtractiveQAFineTuning(tiny_bert_spec.build_model(typed)).eval()
    untyped = {key: value for key, value in batch.items() if key != "token_type_ids"}
    assert not torch.equal(module(batch)[0], module(untyped)[0])


@pytest.mark.parametrize("name", ["dev-sample.json", "dev-v2-three-articles.json"])
def test_every_gold_span_of_the_real_squad_samples_decodes_to_its_answer(name):
    path = SAMPLES / name
    if not path.is_file():
        pytest.skip(f"SQuAD sample not found at {path}")
    squad = SquadTask(path=str(path))
    examples = [e for split in ("train", "dev", "test") for e in squad.qa(split)]
    texts = [d.text for d in squad.corpus()] + [e.question for e in examples]
    # characters only (every boundary is a token's), then words; a stride above the longest answer cuts none
    for vocab_size, max_length, stride in ((1, 384, 128), (3000, 128, 32)):
        tokenizer, downstream = train_wordpiece(texts, vocab_size=vocab_size), ExtractiveQA(stride=stride)
        rows = downstream.rows(Questions(examples), "train", tokenizer, "masked_lm", max_length)
        assert downstream.counts["answers_outside_windows"] == 0
        assert {row["index"] for row in rows} == set(range(len(examples)))
        for row in rows:
            example, offsets = examples[row["index"]], row["offsets"]
            found = example.context[offsets[row["start_positions"], 0] : offsets[row["end_positions"], 1]]
            answer = example.answer.strip()
            start = example.answer_start + example.answer.index(answer)
            on_boundaries = start in offsets[:, 0].tolist() and start + len(answer) in offsets[:, 1].tolist()
            assert found == answer if vocab_size == 1 or on_boundaries else answer in found, (example.question, found)


# -- refusals -------------------------------------------------------------------------------------------------------


def test_closed_book_questions_are_refused_with_the_fix(tiny_task, tiny_tokenizer):
    fix = "task=squad; bioworld's questions are closed-book: use downstream=closed_book_qa"
    with pytest.raises(TaskError, match=fix):
        ExtractiveQA().rows(tiny_task, "train", tiny_tokenizer, "masked_lm", 64)


def test_an_answer_off_its_offset_is_refused_naming_the_question(tokenizer):
    good = short_questions()[0]
    moved = QAExample(good.question, good.answer, "s", good.context, good.answer_start + 1)
    with pytest.raises(TaskError, match=r"Where is Ada Quill from\?.*'Norvane' is not at answer_start"):
        ExtractiveQA().rows(Questions([moved]), "dev", tokenizer, "masked_lm", 64)


def test_other_model_kinds_and_bad_options_are_refused(tokenizer, tiny_bert_spec):
    task = Questions(short_questions())
    with pytest.raises(TaskError, match="masked_lm or seq2seq"):
        ExtractiveQA().rows(task, "train", tokenizer, "causal_lm", 64)
    with pytest.raises(TaskError, match="masked_lm or seq2seq"):
        ExtractiveQAFineTuning(tiny_bert_spec.build_model(tokenizer), kind="causal_lm")
    for options, problem in (({"metric": "acc"}, "metric"), ({"stride": -1}, "stride"),
                             ({"max_answer_tokens": 0}, "max_answer_tokens")):
        with pytest.raises(TaskError, match=problem):
            ExtractiveQA(**options)


def test_a_window_too_short_for_the_question_and_a_context_token_is_refused(tokenizer):
    example = short_questions()[0]
    fits = len(tokenizer(example.question, add_special_tokens=False)["input_ids"]) + 3
    with pytest.raises(TaskError, match=rf"max_length={fits} cannot hold question 'Where is Ada Quill from\?'"):
        ExtractiveQA().rows(Questions([example]), "train", tokenizer, "masked_lm", fits)
    assert ExtractiveQA(stride=0).rows(Questions([example]), "dev", tokenizer, "masked_lm", fits + 1)


# -- batches and span decoding ----------------------------------------------------------------------------------------


def test_collate_pads_windows_and_stacks_positions(tokenizer):
    downstream = ExtractiveQA(stride=4)
    train = downstream.rows(Questions(long_questions()), "train", tokenizer, "masked_lm", 32)
    batch = downstream.collate(tokenizer.pad_token_id)([train[0], train[-1]])
    lengths = [len(train[0]["input_ids"]), len(train[-1]["input_ids"])]
    width = max(lengths)
    assert batch["input_ids"].shape == (2, width) and batch["offsets"].shape == (2, width, 2)
    assert batch["attention_mask"].sum(1).tolist() == lengths
    padded = batch["attention_mask"] == 0
    assert (batch["input_ids"][padded] == tokenizer.pad_token_id).all() and (batch["offsets"][padded] == -1).all()
    assert batch["start_positions"].dtype == torch.long and batch["start_positions"].tolist() == [
        train[0]["start_positions"], train[-1]["start_positions"]]
    assert batch["index"] == [train[0]["index"], train[-1]["index"]]
    dev = downstream.rows(Questions(long_questions()), "dev", tokenizer, "masked_lm", 32)
    assert pad_windows(dev[:3], tokenizer.pad_token_id)["answers"] == [row["answers"] for row in dev[:3]]


def test_the_best_span_over_windows_on_hand_set_logits():
    colours, numbers = "red green blue cyan magenta", "one two three four five"
    # [CLS] q q [SEP] context… [SEP] [PAD]: window 0 = red…cyan, window 1 = blue…magenta (padded), window 2 = one…five
    offsets = torch.full((3, 10, 2), -1)
    offsets[0, 4:8] = torch.tensor([[0, 3], [4, 9], [10, 14], [15, 19]])
    offsets[1, 4:7] = torch.tensor([[10, 14], [15, 19], [20, 27]])
    offsets[2, 4:9] = torch.tensor([[0, 3], [4, 7], [8, 13], [14, 18], [19, 23]])
    start, end = torch.zeros(3, 10), torch.zeros(3, 10)
    start[0, 1] = end[0, 1] = 100.0  # a question token: never a candidate
    start[0, 6], end[0, 4] = 4.0, 5.0  # blue…red would score 9 but starts after it ends; best here: red (5)
    start[1, 5], end[1, 6], end[1, 8] = 3.0, 3.0, 100.0  # cyan magenta (6) beats window 0; padding is no candidate
    start[2, 4], end[2, 8], end[2, 7], end[2, 6] = 10.0, 10.5, 10.0, 1.0  # 5 and 4 tokens are too long for 3
    found = best_answers(start, end, offsets, [0, 0, 1], [colours, colours, numbers], max_answer_tokens=3)
    assert found == {0: (6.0, "cyan magenta"), 1: (11.0, "one two three")}
    found = best_answers(start, end, offsets, [0, 0, 1], [colours, colours, numbers], max_answer_tokens=5)
    assert found[1] == (20.5, "one two three four five")
    assert best_answers(start[:1], end[:1], offsets[:1], [0], [colours], max_answer_tokens=3) == {0: (5.0, "red")}


# -- fine-tuning ------------------------------------------------------------------------------------------------------


def finetune(model, tokenizer, kind: str, epochs: int, seed: int = 0, learning_rate: float = 1e-2):
    """Fits on the six short questions and scores the same ones as dev; returns (module, dev before, dev after)."""
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    downstream, task = ExtractiveQA(), Questions(short_questions())
    data = RowsDataModule(downstream.rows(task, "train", tokenizer, kind, 64), tokenizer.pad_token_id,
                          dev=downstream.rows(task, "dev", tokenizer, kind, 64), batch_size=8,
                          collate=downstream.collate(tokenizer.pad_token_id))
    module = downstream.module(model, tokenizer, kind, FinetuneOptions(learning_rate=learning_rate), seed)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                         check_val_every_n_epoch=epochs)
    trainer.validate(module, datamodule=data, verbose=False)
    before = dict(module.scores["dev"])
    torch.manual_seed(seed)
    trainer.fit(module, datamodule=data)
    return module, before, module.scores["dev"]


@pytest.mark.parametrize("spec", ["tiny_bert_spec", "tiny_bart_spec"])
def test_a_tiny_model_memorises_its_questions_and_only_its_encoder_changes(spec, tokenizer, request):
    spec = request.getfixturevalue(spec)
    torch.manual_seed(0)
    model = spec.build_model(tokenizer)
    untouched = copy.deepcopy(model)
    module, before, after = finetune(model, tokenizer, spec.kind, epochs=12)
    assert before["em"] <= 0.2 and after == {"em": 1.0, "f1": 1.0}
    encoder = {id(p) for p in module.encoder.parameters()}
    assert module.encoder is (model.get_encoder() if spec.kind == "seq2seq" else model.base_model)  # in place
    rest = [(name, p) for name, p in model.named_parameters() if id(p) not in encoder]
    assert rest and all(p.grad is None and torch.equal(p, untouched.get_parameter(name)) for name, p in rest)
    changed = [not torch.equal(p, untouched.get_parameter(name)) for name, p in model.named_parameters()
               if id(p) in encoder]
    assert all(changed)
    assert {key.split(".")[0] for key in module.state_dict()} == {"encoder", "head"}  # the LM head is not saved


def test_the_head_is_seeded_without_touching_the_global_generator_and_runs_repeat(tokenizer, tiny_bert_spec):
    torch.manual_seed(0)
    model = tiny_bert_spec.build_model(tokenizer)
    state = torch.get_rng_state()
    heads = [ExtractiveQAFineTuning(copy.deepcopy(model), seed=seed).head for seed in (3, 3, 4)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(heads[0].weight, heads[1].weight) and not torch.equal(heads[0].weight, heads[2].weight)
    assert heads[0].weight.std().item() == pytest.approx(0.02, rel=0.5) and not heads[0].bias.any()
    runs = [finetune(copy.deepcopy(model), tokenizer, "masked_lm", epochs=3, seed=5) for _ in range(2)]
    assert runs[0][2] == runs[1][2]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][0].parameters(), runs[1][0].parameters(), strict=True))


def test_extractive_qa_is_a_downstream_task_and_the_data_module_takes_its_collate(tokenizer):
    downstream = ExtractiveQA()
    assert isinstance(downstream, DownstreamTask) and downstream.name == "extractive_qa"
    assert downstream.metric == "f1" and downstream.stride == 64 and downstream.max_answer_tokens == 30
    rows = downstream.rows(Questions(short_questions()), "train", tokenizer, "masked_lm", 64)
    collate = downstream.collate(tokenizer.pad_token_id)
    data = RowsDataModule(rows, tokenizer.pad_token_id, batch_size=4, collate=collate)
    assert next(iter(data.train_dataloader()))["start_positions"].shape == (4,)
    default = RowsDataModule([], tokenizer.pad_token_id)
    assert default.collate.func is pad_rows and default.collate.keywords == {"pad_token_id": tokenizer.pad_token_id}


# -- data parallel ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_under_ddp_every_example_gets_its_best_window_across_ranks(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env=env, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert all(rank["split_across_ranks"] for rank in ranks)
    assert [rank["ddp"] for rank in ranks] == [{"em": 2 / 7, "f1": 2 / 7}] * 2


def validate_on_two_ranks(out: Path) -> None:
    """Run as ``python test_extractive.py OUT`` (Lightning re-runs it for rank 1): seven questions whose 22 windows
    DDP deals to two ranks in turn, so each long context's windows land on both. The gold answers of questions 1 and
    3 are set to this model's one-process predictions, the others to a string no span gives: EM is 2/7 only if each
    question's best span over all its windows wins."""
    tokenizer = train_wordpiece([LONG] + [e.context + " " + e.question for e in short_questions() + long_questions()],
                                vocab_size=300)
    spec = ModelSpec(config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                             "intermediate_size": 64, "max_position_embeddings": 64}, max_length=64)
    torch.manual_seed(0)
    module = ExtractiveQAFineTuning(spec.build_model(tokenizer).eval(), seed=1)
    downstream = ExtractiveQA(stride=4)
    rows = downstream.rows(Questions(long_questions()[:5] + short_questions()[:2]), "dev", tokenizer, "masked_lm", 32)
    batch = pad_windows(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        found = best_answers(*module(batch), batch["offsets"], batch["index"], batch["context"], 30)
    for row in rows:
        row["answers"] = (found[row["index"]][1],) if row["index"] in (1, 3) else ("not-a-span",)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=out)
    loader = DataLoader(rows, batch_size=3, collate_fn=downstream.collate(tokenizer.pad_token_id))
    trainer.validate(module, loader, verbose=False)
    rank = trainer.global_rank
    mine, theirs = {row["index"] for row in rows[rank::2]}, {row["index"] for row in rows[1 - rank :: 2]}
    record = {"ddp": module.scores["dev"], "split_across_ranks": bool(mine & theirs)}
    (out / f"rank-{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    validate_on_two_ranks(Path(sys.argv[1]))
