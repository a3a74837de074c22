"""Contextual states of a frozen encoder: pooling across tokenizers, windows, the cache, the card, the collator.

A tiny BERT encoder (2 layers, hidden 16, 24 positions) with its own WordPiece tokenizer is written to a folder
once per module; the run's tokenizer is another WordPiece, so every test crosses tokenizers. The real MiniLM
encoder is used only by the last tests, skipped (with the reason) where ``make real`` has not installed it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel, BertTokenizerLegacy

from maskpolicy import ArtifactError, MaskingCollator, load_policy, read_card, save_policy
from maskpolicy.meta.context import CachedStates, ContextError, resolve_run_model, source_for, state_source
from maskpolicy.meta.learning.meta_learning import MetaLearningOptions, meta_data, outer_batch
from maskpolicy.meta.learning.train import learn_policy, train_policy
from maskpolicy.meta.search.space import SearchSpace
from maskpolicy.meta.search.trial import needs_training
from maskpolicy.policies import IGNORE_INDEX, LearnedPolicy
from maskpolicy.policies.context import ContextSpec
from maskpolicy.tasks.assets import skip_reason
from maskpolicy.tasks.base import TaskError
from maskpolicy.tasks.data.tagging import RuleTagger
from maskpolicy.tasks.text.collation import FeatureError
from maskpolicy.tasks.text.context import DocumentStates, FrozenEncoder, _window_starts, pool_states, weights_sha256
from maskpolicy.tasks.text.encoding import encode_documents, pad_rows, token_batch
from maskpolicy.tasks.text.features import FeatureSpec
from maskpolicy.tasks.text.tokenization import train_wordpiece

TEXTS = ["Ada Quill was born in Norvane in 1931 and studied chemistry at the academy.",
         "Bram Tollo moved to Keswith in 1947 to teach history to the students of the old college.",
         "Colleagues of Cora Venn in Palrith still praise the botany lectures given there since 1952."]
HIDDEN, LAYERS = 16, 2


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A tiny BERT encoder folder: weights from seed 0, a fast WordPiece tokenizer with offsets, 24 positions."""
    folder = tmp_path_factory.mktemp("encoder")
    tokenizer = train_wordpiece(TEXTS, vocab_size=120, lowercase=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=24)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def run_tokenizer():
    return train_wordpiece(TEXTS, vocab_size=150)  # cased, another vocabulary: the run's own tokenizer


def spec_for(folder, layers=(-1,), unit="word", **fields) -> ContextSpec:
    return ContextSpec(str(folder), tuple(layers), unit, HIDDEN * len(layers), **fields)


# ------------------------------------------------------------------ pooling (pure)

DOC = DocumentStates(offsets=np.array([[0, 3], [4, 6], [6, 9], [10, 14]]),
                     states=np.array([[1.0, 0.0], [2.0, 4.0], [4.0, 8.0], [9.0, 9.0]], dtype=np.float16))


def test_token_pooling_averages_the_encoder_tokens_that_overlap_each_token():
    # the run's tokens: "abc" [0,3), "de" [4,6), "fgh" [6,9) as one token [4,9), a special, "wxyz" [10,14)
    offsets = np.array([[0, 3], [4, 9], [0, 0], [10, 12], [12, 14]])
    content = np.array([True, True, False, True, True])
    pooled = pool_states(DOC, offsets, content, unit="token")
    assert pooled.dtype == np.float16
    assert pooled.tolist() == [[1.0, 0.0], [3.0, 6.0], [0.0, 0.0], [9.0, 9.0], [9.0, 9.0]]


def test_word_pooling_averages_over_the_whole_word_of_each_token():
    offsets = np.array([[4, 6], [6, 9], [0, 3]])  # "de" and "fgh": two pieces of one word; "abc"
    words = np.array([1, 1, 0])
    pooled = pool_states(DOC, offsets, np.ones(3, dtype=bool), words, unit="word")
    assert pooled.tolist() == [[3.0, 6.0], [3.0, 6.0], [1.0, 0.0]]
    with pytest.raises(TaskError, match="pooling contextual states over words needs the run's word ids"):
        pool_states(DOC, offsets, np.ones(3, dtype=bool), None, unit="word")


def test_a_token_no_encoder_token_overlaps_takes_the_nearest_one():
    pooled = pool_states(DOC, np.array([[9, 10], [20, 22]]), np.ones(2, dtype=bool), unit="token")
    assert pooled.tolist() == [[9.0, 9.0], [9.0, 9.0]]


def test_windows_overlap_by_the_stride_and_end_on_the_last_token():
    assert _window_starts(5, 10, 2) == [0]
    assert _window_starts(0, 10, 2) == [0]
    assert _window_starts(25, 10, 2) == [0, 8, 15]
    starts = _window_starts(100, 22, 6)
    assert starts[-1] + 22 == 100 and all(b - a <= 16 for a, b in zip(starts, starts[1:], strict=False))


# ------------------------------------------------------------------ the frozen encoder

def test_the_encoder_gives_each_document_its_tokens_offsets_and_states(encoder_dir):
    encoder = FrozenEncoder(str(encoder_dir), layers=(-1, 0), unit="token", max_length=64)
    assert encoder.dim == 2 * HIDDEN and encoder.max_length == 24  # never past the encoder's positions
    (doc,) = encoder.states(TEXTS[:1])
    ids = encoder.tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    assert doc.offsets.shape == (len(ids), 2) and doc.states.shape == (len(ids), 2 * HIDDEN)
    assert doc.states.dtype == np.float16 and np.isfinite(doc.states).all()
    # layer 0 is the embedding output of the window; an unchanged encoder gives the same states again
    assert np.array_equal(encoder.states(TEXTS[:1])[0].states, doc.states)


def test_a_document_longer_than_the_positions_is_windowed_each_token_from_its_most_central_window(encoder_dir):
    encoder = FrozenEncoder(str(encoder_dir), stride=6, batch_size=2)
    text = " ".join(TEXTS)
    (doc,) = encoder.states([text])
    ids = encoder.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > encoder.window == 22  # 24 positions less [CLS] and [SEP]
    starts = _window_starts(len(ids), encoder.window, 6)
    assert len(starts) >= 3 and doc.states.shape == (len(ids), HIDDEN)
    windows = encoder._forward([ids[s:s + encoder.window] for s in starts])
    assert np.array_equal(doc.states[:3], windows[0][:3])  # the first tokens sit only in the first window
    assert np.array_equal(doc.states[-3:], windows[-1][-3:])
    # the middle of window 1 is nearer its centre than any other window's tokens: it keeps window 1's state
    middle = starts[1] + encoder.window // 2
    assert np.array_equal(doc.states[middle], windows[1][encoder.window // 2])


def test_bad_encoder_settings_are_clear_errors(encoder_dir, tmp_path):
    with pytest.raises(TaskError, match=r"has 3 hidden states .* layers \[5\] do not exist"):
        FrozenEncoder(str(encoder_dir), layers=(5,))
    with pytest.raises(TaskError, match=r"context stride 20 must be in \[0, 11\)"):
        FrozenEncoder(str(encoder_dir), stride=20)
    with pytest.raises(TaskError, match="context unit must be one of token, word"):
        FrozenEncoder(str(encoder_dir), unit="span")
    with pytest.raises(TaskError, match="neither an asset .* a folder, nor a Hugging Face model in the local cache"):
        weights_sha256("no-such-org/no-such-encoder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskError, match="has no weight files"):
        weights_sha256(str(tmp_path / "empty"))


def test_an_encoder_whose_tokenizer_gives_no_offsets_is_refused(encoder_dir):
    encoder = FrozenEncoder(str(encoder_dir))
    encoder.tokenizer = _slow_from(encoder.tokenizer, encoder_dir)
    with pytest.raises(TaskError, match="gives no character offsets, which pooling its states .* needs"):
        encoder._check_offsets()


def _slow_from(fast, folder):
    vocab = folder / "slow-vocab.txt"
    vocab.write_text("\n".join(token for token, _ in sorted(fast.get_vocab().items(), key=lambda kv: kv[1])))
    return BertTokenizerLegacy(str(vocab))


# ------------------------------------------------------------------ the cache

def test_states_are_cached_in_memory_and_on_disk_by_content(encoder_dir, tmp_path):
    spec = spec_for(encoder_dir)
    first = CachedStates(source_for(spec).encoder, tmp_path / "cache")
    computed = first.states([TEXTS[0], TEXTS[1], TEXTS[0]])
    assert (first.stats.computed, first.stats.memory, first.stats.disk) == (2, 0, 0)
    assert np.array_equal(computed[0].states, computed[2].states)
    first.states(TEXTS[:1])
    assert first.stats.memory == 1
    files = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 2 and {f.stem for f in files} == {first.key(TEXTS[0]), first.key(TEXTS[1])}
    second = CachedStates(first.encoder, tmp_path / "cache")  # a second run: read, not computed
    again = second.states(TEXTS[:2])
    assert (second.stats.computed, second.stats.disk) == (0, 2)
    assert all(np.array_equal(a.states, b.states) and np.array_equal(a.offsets, b.offsets)
               for a, b in zip(again, computed[:2], strict=True))
    assert first.key(TEXTS[0] + " ") != first.key(TEXTS[0])


def test_an_unreadable_cache_file_is_computed_again_with_a_warning(encoder_dir, tmp_path, caplog):
    source = CachedStates(source_for(spec_for(encoder_dir)).encoder, tmp_path)
    (expected,) = source.states(TEXTS[2:])
    path = next(tmp_path.rglob("*.safetensors"))
    path.write_bytes(b"not a safetensors file")
    fresh = CachedStates(source.encoder, tmp_path)
    (found,) = fresh.states(TEXTS[2:])
    assert fresh.stats.computed == 1 and np.array_equal(found.states, expected.states)
    assert "is unreadable" in caplog.text


def test_a_source_checks_the_policys_width_and_weights(encoder_dir):
    with pytest.raises(ContextError, match="gives 16 channels per token at layers \\[-1\\], but policy.context.dim "
                                           "is 8; set policy.context.dim=16"):
        source_for(ContextSpec(str(encoder_dir), (-1,), "word", 8))
    with pytest.raises(ContextError, match="trained on states of encoder .* with weights sha256 000000000000"):
        source_for(spec_for(encoder_dir, weights_sha256="0" * 64))
    with pytest.raises(ContextError, match="cannot be loaded"):
        source_for(ContextSpec("/no/such/encoder", (-1,), "word", 16))
    assert state_source(LearnedPolicy(0.2)) is None


def test_the_run_model_encoder_is_the_runs_pretrained_folder(encoder_dir):
    policy = LearnedPolicy(0.2, context=ContextSpec("model", (-1,), "word", HIDDEN))
    with pytest.raises(ContextError, match="model.pretrained is null"):
        resolve_run_model(policy, None)
    resolve_run_model(policy, encoder_dir)
    assert policy.context.encoder == str(encoder_dir)


# ------------------------------------------------------------------ encoding, training, the card

def test_encoded_rows_carry_the_states_pooled_to_the_runs_tokens(encoder_dir, run_tokenizer):
    source = source_for(spec_for(encoder_dir, unit="token"))
    rows = encode_documents(TEXTS, [()] * 3, run_tokenizer, 64, features=FeatureSpec(context=source))
    for row in rows:
        assert row["states"].shape == (len(row["input_ids"]), HIDDEN) and row["states"].dtype == torch.float16
        assert not row["states"][row["special"]].any()  # zeros at [CLS] / [SEP]
        assert row["states"][~row["special"]].abs().sum(1).gt(0).all()
    (doc,) = source.states(TEXTS[:1])
    offsets = run_tokenizer(TEXTS[0], return_offsets_mapping=True)["offset_mapping"]
    expected = pool_states(doc, np.array(offsets), ~rows[0]["special"].numpy(), unit="token")
    assert np.array_equal(rows[0]["states"].numpy(), expected)
    batch = token_batch(pad_rows(rows, run_tokenizer.pad_token_id))
    assert batch.states.shape == (*batch.input_ids.shape, HIDDEN)


def learn_config(encoder_dir, tmp_path, *overrides):
    context = f"{{encoder:'{encoder_dir}',layers:[-1],unit:word,dim:{HIDDEN}}}"
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        return compose("learn", overrides=["task.n_people=24", "task.biographies_per_person=2",
                                           "learning.supervised.epochs=2", f"++policy.context={context}",
                                           f"learning.states_cache={tmp_path / 'states'}", *overrides])


@pytest.fixture(scope="module")
def trained(encoder_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    result = train_policy(learn_config(encoder_dir, tmp))
    save_policy(result.policy, tmp / "policy", training={"method": "supervised"}, tokenizer=result.tokenizer)
    return result, tmp / "policy"


def test_a_trained_policy_records_its_encoder_and_its_weights(encoder_dir, trained):
    result, folder = trained
    assert result.policy.context.weights_sha256 == weights_sha256(str(encoder_dir))
    card = read_card(folder)
    assert card["context"] == {"encoder": str(encoder_dir), "layers": [-1], "unit": "word", "dim": HIDDEN,
                               "weights_sha256": weights_sha256(str(encoder_dir))}
    loaded = load_policy(folder)
    assert loaded.context == result.policy.context
    assert all(torch.equal(a, b) for a, b in zip(loaded.scorer.state_dict().values(),
                                                  result.policy.scorer.state_dict().values(), strict=True))


def test_the_learned_states_preset_trains_an_ensemble_by_per_token_cross_entropy(encoder_dir, tmp_path):
    context = f"{{encoder:'{encoder_dir}',layers:[-1,-3],unit:word,dim:{2 * HIDDEN}}}"
    cfg = learn_config(encoder_dir, tmp_path, "policy=learned_states", f"policy.context={context}")
    assert cfg.learning.supervised.loss == "auto" and cfg.policy.members == 5
    learn_policy(cfg, tmp_path, "bioworld")
    card = read_card(tmp_path / "policy")
    assert card["training"]["supervised_loss"] == "bce" and card["policy"]["params"]["members"] == 5
    assert card["context"]["layers"] == [-1, -3] and card["context"]["dim"] == 2 * HIDDEN


def test_a_transferred_policy_finds_its_encoder_elsewhere_or_is_refused(encoder_dir, trained, tmp_path):
    _, folder = trained
    moved = tmp_path / "moved"
    shutil.copytree(encoder_dir, moved)
    assert load_policy(folder, encoder=str(moved)).context.encoder == str(moved)  # the same weights, elsewhere
    with pytest.raises(ArtifactError, match="which is not available here: .* give load_policy\\(path, encoder="):
        load_policy(folder, encoder=str(tmp_path / "nowhere"))
    weights = load_file(moved / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1.0
    save_file(weights, moved / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ArtifactError, match="was trained on states of encoder .* but .* holds weights"):
        load_policy(folder, encoder=str(moved))


def test_the_collator_computes_the_states_of_a_saved_policy_and_masks_like_the_policy(trained, tmp_path):
    result, folder = trained
    tokenizer = result.tokenizer
    texts = [document.text for document in result.task.corpus()[:4]]
    collator = MaskingCollator(tokenizer, folder, tagger=RuleTagger(), states_cache=tmp_path / "states", seed=0)
    collator.fit(texts)
    source = collator._states()
    computed = source.stats.computed
    features = collator.tokenize(texts)
    batch = collator(features)
    assert source.stats.computed == computed  # fit() encoded them; the batch read them
    again = MaskingCollator(tokenizer, folder, tagger=RuleTagger(), states_cache=tmp_path / "states",
                            seed=0).fit(texts)(collator.tokenize(texts))
    assert torch.equal(batch["labels"], again["labels"])
    assert ((batch["labels"] != IGNORE_INDEX).sum(1) > 0).all()
    untagged = MaskingCollator(tokenizer, folder, states_cache=tmp_path / "states").fit(texts)
    spanned = untagged.tokenize(texts, entity_spans=[[]] * len(texts))
    with pytest.raises(FeatureError, match="example 0 lacks text: the learned policy reads"):
        untagged([{key: value for key, value in feature.items() if key != "text"} for feature in spanned])


def test_outer_answers_masks_exactly_the_answer_tokens_of_each_context(encoder_dir, tmp_path):
    cfg = learn_config(encoder_dir, tmp_path, "learning.method=meta_learning", "learning.meta_learning.steps=1")
    from maskpolicy.meta.config import build
    task, spec = build(cfg.task, "task"), build(cfg.model, "model")
    tokenizer = spec.build_tokenizer(document.text for document in task.corpus())
    data = meta_data(task, "train", tokenizer, spec, FeatureSpec(("shape", "position")))
    picks = [0, 1]
    batch = outer_batch(data, picks, tokenizer, "answers")
    for row, i in enumerate(picks):
        answers = data.answers[i] & ~data.contexts[i]["special"]
        n = len(answers)
        assert answers.any()
        labels, inputs = batch["labels"][row, :n], batch["input_ids"][row, :n]
        assert torch.equal(labels != IGNORE_INDEX, answers)
        assert torch.equal(labels[answers], data.contexts[i]["input_ids"][answers])
        assert (inputs[answers] == tokenizer.mask_token_id).all()
        assert torch.equal(inputs[~answers], data.contexts[i]["input_ids"][~answers])
    with pytest.raises(ValueError, match="outer must be one of qa, answers, got 'loss'"):
        MetaLearningOptions(**{**cfg.learning.meta_learning, "outer": "loss"})


def test_meta_learning_through_the_answers_objective_learns_from_states(encoder_dir, tmp_path):
    result = train_policy(learn_config(encoder_dir, tmp_path, "learning.method=meta_learning",
                                       "learning.meta_learning.steps=3", "learning.meta_learning.batch_size=4",
                                       "learning.meta_learning.outer=answers", "model.config.hidden_size=32",
                                       "model.config.intermediate_size=64"))
    losses = result.history["outer_loss"]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert result.policy.context.weights_sha256 == weights_sha256(str(encoder_dir))


# ------------------------------------------------------------------ the real MiniLM encoder

@pytest.fixture(scope="module")
def minilm():
    if reason := skip_reason("minilm"):
        pytest.skip(reason)
    return source_for(ContextSpec("minilm", (-1,), "word", 384))


def test_minilm_states_reach_another_tokenizers_words(minilm, run_tokenizer):
    rows = encode_documents(TEXTS[:1], [()], run_tokenizer, 64, features=FeatureSpec(context=minilm))
    states, special = rows[0]["states"].float(), rows[0]["special"]
    assert states.shape[1] == 384 and states[~special].abs().sum(1).gt(0).all()
    words = rows[0]["word_ids"]
    for word in words[~special].unique():  # word pooling: every piece of a word carries the same state
        assert (states[words == word] == states[words == word][0]).all()
    assert len(minilm.weights_sha256) == 64 and json.dumps(minilm.weights_sha256)


@pytest.mark.slow
def test_pretraining_with_a_saved_states_policy_masks_from_precomputed_states(encoder_dir, trained, tmp_path):
    from maskpolicy.meta.pipeline import RunNames, run_pretraining

    _, folder = trained
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        cfg = compose("pretrain", overrides=[
            "policy=artifact", f"policy.path={folder}", "task.n_people=24", "task.biographies_per_person=2",
            "model.config.hidden_size=32", "model.config.intermediate_size=64", "pretrain.steps=2",
            "pretrain.batch_size=8", "pretrain.checkpoint_every=0", "score.enabled=false", "finetune.epochs=1",
            "finetune.batch_size=8", "trainer.enable_progress_bar=false", "logger=[csv]",
            f"pretrain.states_cache={tmp_path / 'states'}"])
    results = run_pretraining(cfg, tmp_path / "run", RunNames("artifact", "bioworld", "tiny_bert"))
    assert results.pretrain.steps == 2 and results.pretrain.masked_tokens > 0
    assert len(list((tmp_path / "states").rglob("*.safetensors"))) == 48  # every biography encoded once


@pytest.mark.slow
def test_both_engines_take_the_same_first_answers_step_with_states(encoder_dir, tmp_path):
    """The answers objective and the states change only the outer batch and the scorer's inputs: the ``higher`` and
    ``torch.func`` hypergradients (checked against finite differences in ``test_inner.py``) still agree."""
    off = ["learning.method=meta_learning", "learning.meta_learning.steps=1", "learning.meta_learning.batch_size=4",
           "learning.meta_learning.outer=answers", "model.config.hidden_size=32", "model.config.intermediate_size=64",
           "+model.config.hidden_dropout_prob=0.0", "+model.config.attention_probs_dropout_prob=0.0",
           "++policy.context_dropout=0.0"]
    runs = [train_policy(learn_config(encoder_dir, tmp_path, *off, f"learning.meta_learning.engine={engine}"))
            for engine in ("higher", "torch_func")]
    assert runs[0].history["outer_loss"][0] == pytest.approx(runs[1].history["outer_loss"][0], rel=1e-6)
    for x, y in zip(runs[0].policy.scorer.parameters(), runs[1].policy.scorer.parameters(), strict=True):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-6)


def test_the_real_text_search_space_draws_the_learned_states_preset_and_trains_it_first():
    raw = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[2] / "conf/search/space/real_text.yaml"))
    space = SearchSpace.from_config({"families": {"learned_states": raw["families"]["learned_states"]}})
    suggestion = space.suggest(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask())
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        preset = compose("pretrain", overrides=["policy=learned_states"]).policy
    assert suggestion.policy["context"] == OmegaConf.to_container(preset.context)
    assert suggestion.policy["members"] == preset.members and suggestion.policy["_target_"] == preset._target_
    assert needs_training(suggestion.policy) and suggestion.overrides == {"learning.method": "supervised"}
    assert 0.1 <= suggestion.policy["rate"] <= 0.3
