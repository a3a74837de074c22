"""The base checkpoint cache: built once per content hash, shared across processes, rebuilt when damaged."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from safetensors.torch import load_file

import maskpolicy.meta.pipeline as pipeline
from maskpolicy.meta.base import CARD, WEIGHTS, base_checkpoint, base_key, check_base
from maskpolicy.meta.config import ConfigError, build
from maskpolicy.tasks.base import TaskError

TINY = ["task.n_people=20", "task.biographies_per_person=2", "model.config.hidden_size=32",
        "model.config.intermediate_size=64", "model.config.num_hidden_layers=1", "base.steps=3",
        "base.corpus_size=6", "base.batch_size=8", "trainer.enable_progress_bar=false", "logger=[csv]",
        "base.enabled=true"]
# A from-scratch run measured before the base existed (policy=entity, seed=1): base.enabled=false must match it.
SCRATCH = ["task.n_people=40", "task.biographies_per_person=2", "pretrain.steps=6", "pretrain.batch_size=8",
           "finetune.epochs=2", "finetune.batch_size=8", "trainer.enable_progress_bar=false", "logger=[csv]",
           "model.config.hidden_size=32", "model.config.intermediate_size=64", "score.passes=2",
           "score.max_sequences=20", "policy=entity", "seed=1", "base.enabled=false"]


def config(cache: Path, *overrides: str):
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        return compose("pretrain", overrides=[*TINY, f"base.cache_dir={cache}", *overrides])


def base_of(cfg):
    return base_checkpoint(cfg, build(cfg.task, "task"), build(cfg.model, "model"))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple:
    """A tiny base, built once for the module: (cfg, base)."""
    cfg = config(tmp_path_factory.mktemp("cache") / "base")
    return cfg, base_of(cfg)


def test_a_base_is_built_once_then_found(built) -> None:
    cfg, base = built
    assert base.record.source == "built" and base.record.steps == 3 and base.record.seconds > 0
    assert base.record.corpus["size"] == 6 and base.record.corpus["documents"] == 6 * 2
    assert base.record.corpus["tokens"] > 0
    again = base_of(cfg)
    assert again.record.source == "cache" and again.record.seconds == 0.0
    assert (again.record.hash, again.record.path, again.model) == (base.record.hash, base.record.path, base.model)
    assert Path(base.model).name == base.record.hash and check_base(Path(base.model), base.record.hash) is None


def test_the_card_says_what_the_base_is(built) -> None:
    cfg, base = built
    card = json.loads((Path(base.model) / CARD).read_text())
    assert card["hash"] == base.record.hash and card["steps"] == 3
    assert card["settings"] == {"corpus": "task", "train": "all", "steps": 3, "corpus_size": 6, "batch_size": 8,
                                "learning_rate": 1e-3, "rate": 0.15, "seed": 0}
    assert card["corpus"]["source"] == "task" and card["pretrained"] is None
    assert card["task"]["config"]["n_people"] == 20 and card["model"]["config"]["hidden_size"] == 32
    assert card["versions"]["torch"] == torch.__version__
    assert {WEIGHTS, "config.json", "tokenizer.json"} <= set(card["files"])


def test_the_hash_covers_what_the_base_depends_on_and_nothing_else(built, tmp_path) -> None:
    cfg, base = built
    task = build(cfg.task, "task")
    general = task.general_corpus(cfg.base.corpus_size)
    assert base_key(cfg, task, general) == base.record.hash
    same = config(tmp_path / "elsewhere", "seed=5", "policy=entity", "pretrain.steps=9", "base.enabled=false")
    assert base_key(same, build(same.task, "task"), general) == base.record.hash
    for override in ("base.steps=4", "base.seed=1", "base.rate=0.3", "model.config.hidden_size=16", "task.seed=1"):
        other = config(tmp_path, override)
        other_task = build(other.task, "task")
        assert base_key(other, other_task, other_task.general_corpus(other.base.corpus_size)) != base.record.hash


def test_the_vocabulary_covers_the_task_and_general_words_but_the_model_saw_only_general_text(built) -> None:
    cfg, base = built
    task = build(cfg.task, "task")
    spec = base.apply(build(cfg.model, "model"))
    tokenizer = spec.build_tokenizer([])
    values = {value for person in task.people for value in person.facts.values()}  # those the task states
    for word in [*values, *(p.last_name for p in task.people)]:
        assert len(tokenizer.tokenize(word)) == 1, word
    general_names = {d.text[start:end] for d in task.general_corpus(6) for start, end in d.entities}
    general_names = {name for name in general_names if " " in name}  # names are two words, values one
    assert len(general_names) == 6 and all(len(tokenizer.tokenize(name)) == 2 for name in general_names)
    # the task's last names were never read: their rows are redrawn like the read ones, not trained as negatives
    embeddings = load_file(str(Path(base.model) / WEIGHTS))["bert.embeddings.word_embeddings.weight"]
    unread = tokenizer.convert_tokens_to_ids([p.last_name for p in task.people])
    read = sorted({i for d in task.general_corpus(6) for i in tokenizer(d.text)["input_ids"]})
    assert json.loads((Path(base.model) / CARD).read_text())["corpus"]["unread_tokens"] >= len(unread)
    assert len({tuple(embeddings[i].tolist()) for i in unread}) == len(unread)  # still tell the people apart
    ratio = embeddings[unread].norm(dim=1).mean() / embeddings[read].norm(dim=1).mean()
    assert 0.5 < ratio < 2.0


def test_setup_loads_the_base_and_records_it(built) -> None:
    cfg, base = built
    run = pipeline.setup(cfg)
    assert run.base == base_of(cfg).record and run.base.source == "cache"
    saved = load_file(str(Path(base.model) / WEIGHTS))
    weights = run.model.state_dict()
    assert all(torch.equal(weights[name], tensor) for name, tensor in saved.items())
    assert run.model.training  # dropout on for intermediate pre-training, as for a model built from a config
    assert run.spec.kind == "masked_lm" and run.spec.max_length == 128
    assert run.tokenizer.get_vocab() == pipeline.setup(cfg).tokenizer.get_vocab()


@pytest.mark.parametrize("damage", ["truncate weights", "delete tokenizer", "garble card", "flip a byte"])
def test_a_damaged_entry_is_detected_logged_and_rebuilt_identically(tmp_path, caplog, damage: str) -> None:
    cfg = config(tmp_path / "cache")
    first = base_of(cfg)
    entry = Path(first.model)
    card = json.loads((entry / CARD).read_text())
    weights = entry / WEIGHTS
    if damage == "truncate weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "delete tokenizer":
        (entry / "tokenizer.json").unlink()
    elif damage == "garble card":
        (entry / CARD).write_text("{not json")
    else:
        payload = bytearray(weights.read_bytes())
        payload[-1] ^= 1
        weights.write_bytes(bytes(payload))
    assert check_base(entry, first.record.hash) is not None
    with caplog.at_level(logging.WARNING, logger="maskpolicy.meta.base"):
        rebuilt = base_of(cfg)
    assert "unusable" in caplog.text and rebuilt.record.source == "built"
    assert check_base(entry, first.record.hash) is None
    assert json.loads((entry / CARD).read_text())["files"] == card["files"]  # the same seeded build, byte for byte


def hf_config(cache: Path, encoder: Path, *overrides: str):
    tiny = [o for o in TINY if not o.startswith("model.")]
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        return compose("pretrain", overrides=[*tiny, "model=hf_masked_lm", f"model.pretrained={encoder}",
                                              "model.max_length=128", f"base.cache_dir={cache}", *overrides])


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    """A BERT checkpoint without a masked-LM head (as a sentence encoder ships), with its tokenizer."""
    from transformers import AutoConfig, BertModel

    from maskpolicy.tasks.text.tokenization import train_wordpiece

    task = build(config(tmp_path_factory.mktemp("unused")).task, "task")
    tokenizer = train_wordpiece([d.text for d in [*task.corpus(), *task.general_corpus(6)]], 400)
    folder = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(0)
    BertModel(AutoConfig.for_model("bert", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
              ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("train", ["head", "all"])
def test_a_pretrained_model_s_base_trains_its_new_head_or_every_weight(encoder, tmp_path, train) -> None:
    cfg = hf_config(tmp_path / "cache", encoder, f"base.train={train}")
    base = base_of(cfg)
    card = json.loads((Path(base.model) / CARD).read_text())
    assert card["pretrained"]["source"] == str(encoder) and card["corpus"]["unread_tokens"] is None
    assert all(name.startswith("cls.") for name in card["pretrained"]["new"])
    saved, original = load_file(str(Path(base.model) / WEIGHTS)), load_file(str(encoder / WEIGHTS))
    kept = [name for name in original if not name.startswith("pooler.")]
    unchanged = [torch.equal(saved[f"bert.{name}"], original[name]) for name in kept]
    assert all(unchanged) if train == "head" else not any(unchanged[1:])   # [0]: position ids-free embeddings
    assert card["pretrained"]["trained"] == (len(card["pretrained"]["new"]) if train == "head" else
                                             len(list(pipeline.setup(cfg).model.parameters())))
    run = pipeline.setup(cfg)  # the run starts from the base: its head is loaded, nothing is new
    assert run.loading.source == base.model and run.loading.new == ()
    assert base_key(cfg, build(cfg.task, "task"), build(cfg.task, "task").general_corpus(6)) == base.record.hash


def test_base_train_head_needs_a_pretrained_model_with_new_weights(encoder, tmp_path) -> None:
    with pytest.raises(ConfigError, match="base.train=head .* built from a config .* base.train=all"):
        base_of(config(tmp_path, "base.train=head"))
    with pytest.raises(ConfigError, match="base.corpus must be one of task, wikipedia"):
        base_of(config(tmp_path, "base.corpus=books"))


def test_an_unwritable_cache_directory_is_refused_before_training(tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = config(blocker / "base")
    with pytest.raises(ConfigError, match=r"not writable .* base.cache_dir .* or base.enabled=false"):
        pipeline.setup(cfg)


def test_a_task_without_general_text_names_base_enabled_false(tiny_task, tmp_path, monkeypatch) -> None:
    cfg = config(tmp_path / "cache")
    with pytest.raises(TaskError, match="no general text .* base.corpus=wikipedia .* or base.enabled=false"):
        base_checkpoint(cfg, tiny_task, build(cfg.model, "model"))
    original = pipeline.build
    monkeypatch.setattr(pipeline, "build", lambda node, what: tiny_task if what == "task" else original(node, what))
    with pytest.raises(TaskError, match="base.enabled=false"):
        pipeline.setup(cfg)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(("override", "message"), [("base.steps=0", "base.steps must be a positive integer"),
                                                   ("base.learning_rate=0", "base.learning_rate must be positive"),
                                                   ("~base.rate", "lacks base.rate")])
def test_bad_base_settings(tmp_path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        base_of(config(tmp_path, override))


def test_base_enabled_false_is_the_from_scratch_run_of_before(tmp_path) -> None:
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose("pretrain", overrides=[*SCRATCH, f"base.cache_dir={tmp_path / 'unused'}"])
    results = pipeline.run_pretraining(cfg, tmp_path / "run", pipeline.RunNames("entity", "bioworld", "tiny_bert"))
    assert (results.pretrain.steps, results.pretrain.tokens, results.pretrain.masked_tokens) == (6, 2337, 354)
    assert results.pretrain.final_loss == pytest.approx(5.884186744689941, rel=1e-5)
    assert results.mll.estimate == pytest.approx(-275.8969807455472, rel=1e-5)
    assert (results.downstream.dev_em, results.downstream.test_em) == (0.0, 1 / 60)
    assert not (tmp_path / "unused").exists()


CHILD = """
import sys, time
from pathlib import Path
from hydra import compose, initialize_config_module
from maskpolicy.meta.base import base_checkpoint
from maskpolicy.meta.config import build
cache, barrier, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
with initialize_config_module("maskpolicy.conf", version_base="1.3"):
    cfg = compose("pretrain", overrides=sys.argv[4:] + [f"base.cache_dir={cache}"])
task, spec = build(cfg.task, "task"), build(cfg.model, "model")
(barrier / me).touch()
while len(list(barrier.iterdir())) < 2:
    time.sleep(0.01)
print("SOURCE", base_checkpoint(cfg, task, spec).record.source)
"""


def test_two_processes_asking_at_once_build_the_base_once(tmp_path) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    overrides = [*TINY, "base.steps=30"]  # long enough that the second process arrives during the build
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "cache"), str(barrier), name,
                                  *overrides], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for name in ("a", "b")]
    outputs = [child.communicate(timeout=300) for child in children]
    assert all(child.returncode == 0 for child in children), [err[-2000:] for _, err in outputs]
    sources = sorted(line.split()[1] for out, _ in outputs for line in out.splitlines() if line.startswith("SOURCE"))
    assert sources == ["built", "cache"]
    entries = [path for path in (tmp_path / "cache").iterdir() if not path.name.startswith(".")]
    assert len(entries) == 1 and check_base(entries[0], entries[0].name) is None
    assert [path.name for path in (tmp_path / "cache").iterdir() if path.name.startswith(".")] == [
        f".{entries[0].name}.lock"]  # no staging directory left behind


def wikipedia_file(path: Path, *extra: tuple[str, str]) -> Path:
    articles = [(f"Article {k}", f"Article {k} is about subject number {k}. It has a second sentence here.")
                for k in range(8)]
    path.write_text(json.dumps({title: {"title": title, "extract": text} for title, text in [*articles, *extra]}))
    return path


def test_a_wikipedia_base_learns_from_the_articles_the_task_does_not_hold(tmp_path) -> None:
    task = build(config(tmp_path).task, "task")
    copied = task.corpus()[0].text.split(". ")[0] + "."   # one of the task's own sentences, in a general article
    source = wikipedia_file(tmp_path / "wiki.json", ("Copy", f"An article quoting the task. {copied.upper()}"))
    cfg = config(tmp_path / "cache", "base.corpus=wikipedia", f"base.wikipedia_path={source}", "base.corpus_size=20")
    base = base_of(cfg)
    corpus = base.record.corpus
    assert corpus["source"] == "wikipedia" and corpus["articles"] == 9 and corpus["dropped_sentence"] == 1
    assert corpus["documents"] == corpus["kept"] == 8 and corpus["dropped_title"] == 0
    tokenizer = base.apply(build(cfg.model, "model")).build_tokenizer([])
    assert all(len(tokenizer.tokenize(p.last_name)) == 1 for p in task.people), "the task's words stay whole"
    assert base_of(cfg).record.source == "cache"


def test_a_wikipedia_corpus_emptied_by_the_task_or_not_installed_is_refused(tmp_path, monkeypatch) -> None:
    task = build(config(tmp_path).task, "task")
    only_copies = tmp_path / "copies.json"
    only_copies.write_text(json.dumps([{"title": "Copy", "extract": task.corpus()[0].text}]))
    with pytest.raises(TaskError, match="is left as general text: of 1 .* 1 share a sentence"):
        base_of(config(tmp_path, "base.corpus=wikipedia", f"base.wikipedia_path={only_copies}"))
    import importlib.metadata

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(TaskError, match="make real"):
        base_of(config(tmp_path, "base.corpus=wikipedia"))
    assert not (tmp_path / "base").exists()
