"""MaskingCollator: the Hugging Face collator contract for every registered policy, policy folders, bad input.

The shared part (like ``tests/policies/test_policy_suite.py``) runs every name in ``available()`` — plugins too —
through one suite: a collator built for it masks a batch of tokenized biographies, its labels and inputs obey
the contract, it is deterministic for a seed, it pickles, and ``save_pretrained`` / ``from_pretrained`` gives the
same masks at the same seed.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import torch
from transformers import BertTokenizerLegacy, PreTrainedTokenizerFast

from maskpolicy import ArtifactError, CollatorError, MaskingCollator, load_policy, read_card, save_policy
from maskpolicy.meta.collator import columns
from maskpolicy.meta.config import ConfigError
from maskpolicy.meta.learning.artifacts import CARD
from maskpolicy.policies import (
    DEFAULT_FEATURES,
    EntityPolicy,
    LearnedPolicy,
    MixturePolicy,
    PMIPolicy,
    RandomPolicy,
    SpanPolicy,
    available,
)
from maskpolicy.tasks.data.tagging import RuleTagger
from maskpolicy.tasks.text.collation import FeatureError
from maskpolicy.tasks.text.tokenization import train_wordpiece

PEOPLE = [("Ada Quill", "Norvane", "1931"), ("Bram Tollo", "Keswith", "1947"), ("Cora Venn", "Palrith", "1952"),
          ("Dax Ormo", "Norvane", "1960"), ("Eli Marsh", "Tovin", "1975"), ("Fay Grell", "Keswith", "1988")]
SUBJECTS = ["chemistry", "history", "botany"]
TEMPLATES = ["{name} was born in {city} in {year} and studied {subject} at the academy of {city}.",
             "In {year}, {name} moved to {city} to teach {subject} to the students of the old college.",
             "Colleagues of {name} in {city} still praise the {subject} lectures given there since {year}."]
RATE = 0.3


def corpus() -> tuple[list[str], list[list[list[int]]]]:
    """Biographies and their gold entity spans (names, cities, years), character ``[start, end)``."""
    texts, spans = [], []
    for k, (name, city, year) in enumerate(PEOPLE):
        for t, template in enumerate(TEMPLATES):
            text = template.format(name=name, city=city, year=year, subject=SUBJECTS[(k + t) % 3])
            found = sorted(m.span() for entity in (name, city, year) for m in re.finditer(re.escape(entity), text))
            texts.append(text)
            spans.append([list(span) for span in found])
    return texts, spans


TEXTS, SPANS = corpus()


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_wordpiece(TEXTS, vocab_size=160)  # small: many words split into pieces


def policy_for(case: str):
    """A collator's ``policy`` argument (and parameters) for a case: a name, or a built policy."""
    if case == "mixture":
        return MixturePolicy({"entity": EntityPolicy(RATE, "top_up"), "span": SpanPolicy(RATE, unit="word")}), {}
    if case == "entity":
        return "entity", {"rate": RATE, "shortfall": "top_up"}
    if case == "pmi":
        return "pmi", {"rate": RATE, "min_count": 2}
    if case == "learned":
        return LearnedPolicy(RATE, features=DEFAULT_FEATURES, seed=3), {}
    if case == "mixture[pmi+random]":
        return MixturePolicy([PMIPolicy(RATE, min_count=2), RandomPolicy(RATE)]), {}
    return case, {"rate": RATE}


CASES = sorted({*available(), "mixture[pmi+random]"})


def collator_for(case: str, tokenizer, **options) -> MaskingCollator:
    policy, params = policy_for(case)
    return MaskingCollator(tokenizer, policy, **params, **options).fit(TEXTS)


def examples(collator: MaskingCollator, n: int = 8) -> list[dict]:
    return collator.tokenize(TEXTS[:n], entity_spans=SPANS[:n])


@pytest.fixture(params=CASES)
def case(request) -> str:
    return request.param


def test_every_policy_obeys_the_collator_contract(case, tokenizer):
    collator = collator_for(case, tokenizer)
    batch = collator.prepare(examples(collator))
    chosen = collator.select(batch, torch.Generator().manual_seed(0))
    out = collator.mask(batch, torch.Generator().manual_seed(0))  # select draws first, so the same selection
    assert set(out) == {"input_ids", "attention_mask", "labels"}
    assert all(t.shape == batch["input_ids"].shape for t in out.values())
    assert torch.equal(out["labels"] != -100, chosen) and chosen.any()
    assert not (chosen & ~batch["maskable"]).any()  # specials and padding never
    assert torch.equal(out["labels"][chosen], batch["input_ids"][chosen])
    assert torch.equal(out["input_ids"][~chosen], batch["input_ids"][~chosen])
    assert torch.equal(out["attention_mask"], batch["attention_mask"])
    share = chosen.sum().item() / batch["maskable"].sum().item()
    assert abs(share - RATE) < 0.1


def test_every_policy_masks_alike_for_a_seed_and_pickled(case, tokenizer):
    features = examples(collator_for(case, tokenizer))
    first, again = collator_for(case, tokenizer, seed=5), collator_for(case, tokenizer, seed=5)
    a, b = first(features), again(features)
    unpickled = pickle.loads(pickle.dumps(collator_for(case, tokenizer, seed=5)))(features)
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], unpickled[k]) for k in a)
    assert not torch.equal(a["labels"], first(features)["labels"])  # the generator advances
    assert torch.equal(a["labels"], collator_for(case, tokenizer, seed=5)(columns(features))["labels"])


def test_every_policy_round_trips_through_its_folder_with_identical_masks(case, tokenizer, tmp_path):
    collator = collator_for(case, tokenizer, seed=11)
    features = examples(collator)
    collator.save_pretrained(tmp_path / "policy")
    card = read_card(tmp_path / "policy")
    assert card["format_version"] == 2 and card["policy"]["name"] == case.split("[")[0]
    assert card["collator"]["seed"] == 11 and card["tokenizer"]["vocab_size"] == len(tokenizer)
    loaded = MaskingCollator.from_pretrained(tmp_path / "policy", tokenizer)
    expected, got = collator_for(case, tokenizer, seed=11)(features), loaded(features)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    rebuilt = load_policy(tmp_path / "policy")  # the policy alone, any family
    assert type(rebuilt) is type(collator.policy)


def test_a_policy_folder_names_no_pickle_and_fitted_tables_carry_their_checksum(tokenizer, tmp_path):
    collator = collator_for("pmi", tokenizer)
    collator.save_pretrained(tmp_path / "pmi")
    card = json.loads((tmp_path / "pmi" / CARD).read_text())
    assert sorted(p.name for p in (tmp_path / "pmi").iterdir()) == ["card.json", "policy.safetensors"]
    assert card["fitted_tables"] and len(card["tensors"]["sha256"]) == 64
    assert all(name.startswith("tables.") for name in card["tensors"]["shapes"])
    collator_for("random", tokenizer).save_pretrained(tmp_path / "random")
    assert sorted(p.name for p in (tmp_path / "random").iterdir()) == ["card.json"]
    assert read_card(tmp_path / "random")["policy"] == {"name": "random", "params": {"rate": RATE, "exact": True}}


def test_a_learned_collator_saves_its_word_counts_and_training_tagger(tokenizer, tmp_path):
    collator = collator_for("learned", tokenizer, tagger=RuleTagger(dates=False))
    collator.save_pretrained(tmp_path / "learned")
    assert (tmp_path / "learned" / "word_counts.json").is_file()
    loaded = MaskingCollator.from_pretrained(tmp_path / "learned", tokenizer)
    assert loaded.word_counts == collator.word_counts and isinstance(loaded.tagger, RuleTagger)
    assert loaded.tagger.dates is False


def test_the_policy_comes_by_name_object_config_node_config_file_or_folder(tokenizer, tmp_path):
    features = examples(MaskingCollator(tokenizer))
    reference = MaskingCollator(tokenizer, SpanPolicy(0.2, p=0.3))(features)
    node = {"_target_": "maskpolicy.policies.SpanPolicy", "rate": 0.2, "p": 0.3,
            "schedule": {"kind": "constant"}}
    (tmp_path / "best_policy.yaml").write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in node.items()))
    (tmp_path / "policy.json").write_text(json.dumps({"name": "span", "params": {"rate": 0.2, "p": 0.3}}))
    save_policy(SpanPolicy(0.2, p=0.3), tmp_path / "folder")
    for policy, params in [("span", {"rate": 0.2, "p": 0.3}), (node, {}), (tmp_path / "best_policy.yaml", {}),
                           (str(tmp_path / "policy.json"), {}), (tmp_path / "folder", {})]:
        got = MaskingCollator(tokenizer, policy, **params)(features)
        assert all(torch.equal(reference[k], got[k]) for k in reference), policy


def test_a_shipped_policy_yaml_is_a_config_file_and_a_composed_one_is_refused_naming_the_fix(tokenizer):
    conf = Path(__file__).resolve().parents[2] / "conf" / "policy"
    features = examples(MaskingCollator(tokenizer))
    reference = MaskingCollator(tokenizer, SpanPolicy(0.15))(features)
    got = MaskingCollator(tokenizer, conf / "span.yaml")(features)  # its defaults list names only the schedule
    assert all(torch.equal(reference[k], got[k]) for k in reference)
    with pytest.raises(ConfigError, match=r"mixture.yaml has a Hydra defaults list .*compose it first"):
        MaskingCollator(tokenizer, conf / "mixture.yaml")


def test_seq2seq_collation_is_the_sentinel_format(tokenizer):
    collator = MaskingCollator(tokenizer, "span", rate=RATE, kind="seq2seq", target="spans")
    batch = collator.prepare(examples(collator, 2))
    chosen = collator.select(batch, torch.Generator().manual_seed(1))
    out = collator.mask(batch, torch.Generator().manual_seed(1))
    row, mask_id = 0, tokenizer.mask_token_id
    kept = batch["input_ids"][row][batch["attention_mask"][row].bool() & ~chosen[row]]
    assert torch.equal(out["input_ids"][row][out["input_ids"][row] != mask_id][: len(kept)], kept)
    labels = out["labels"][row][out["labels"][row] != -100]
    assert labels[-1] == tokenizer.eos_token_id and set(labels[:-1].tolist()) - {mask_id} <= set(
        batch["input_ids"][row][chosen[row]].tolist())
    full = MaskingCollator(tokenizer, "span", rate=RATE, kind="seq2seq", target="full").mask(
        batch, torch.Generator().manual_seed(1))["labels"]
    assert torch.equal(full[batch["attention_mask"].bool()], batch["input_ids"][batch["attention_mask"].bool()])


def test_the_device_side_mode_masks_what_the_one_call_masks(tokenizer):
    features = examples(MaskingCollator(tokenizer))
    whole = collator_for("entity", tokenizer, seed=2)(features)
    split = collator_for("entity", tokenizer, seed=2)
    halves = split.mask({key: tensor.clone() for key, tensor in split.prepare(features).items()})
    assert all(torch.equal(whole[k], halves[k]) for k in whole)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_the_device_side_mode_masks_on_the_gpu(tokenizer):
    collator = collator_for("span", tokenizer)
    batch = {key: tensor.cuda() for key, tensor in collator.prepare(examples(collator)).items()}
    out = collator.mask(batch)
    assert out["labels"].is_cuda and not ((out["labels"] != -100) & ~batch["maskable"]).any()


def test_padding_already_in_the_features_is_never_masked(tokenizer):
    collator = MaskingCollator(tokenizer, "random", rate=1.0)
    encoded = tokenizer(TEXTS[:3], padding="max_length", max_length=40, return_special_tokens_mask=True)
    features = [{key: encoded[key][i] for key in encoded} for i in range(3)]
    out = collator(features)
    padding = torch.tensor(encoded["attention_mask"]) == 0
    assert torch.equal(out["attention_mask"].bool(), ~padding) and (out["labels"][padding] == -100).all()
    assert (out["labels"][~padding & ~torch.tensor(encoded["special_tokens_mask"]).bool()] != -100).all()


# ------------------------------------------------------------------------------------------ bad input


def test_a_folder_from_a_newer_format_is_refused_naming_the_upgrade(tokenizer, tmp_path):
    collator_for("span", tokenizer).save_pretrained(tmp_path / "policy")
    card = json.loads((tmp_path / "policy" / CARD).read_text())
    card["format_version"] = 3
    (tmp_path / "policy" / CARD).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="format version 3; this maskpolicy reads versions 1–2. Upgrade"):
        MaskingCollator.from_pretrained(tmp_path / "policy", tokenizer)


def test_features_without_word_ids_name_the_tokenizer_option_and_the_trainer_setting(tokenizer):
    collator = MaskingCollator(tokenizer, "whole_word")
    features = [{"input_ids": ids} for ids in tokenizer(TEXTS[:2])["input_ids"]]
    with pytest.raises(CollatorError, match=r"(?s)needs word ids.*no 'word_ids'.*enc.word_ids\(i\).*"
                                            r"return_offsets_mapping=True.*remove_unused_columns=False"):
        collator(features)
    spans = [{"input_ids": ids, "entity_spans": SPANS[0]} for ids in tokenizer(TEXTS[:1])["input_ids"]]
    with pytest.raises(FeatureError, match="no offset_mapping to place them on tokens: tokenize with "
                                           "return_offsets_mapping=True"):
        MaskingCollator(tokenizer, "entity")(spans)


def slow_tokenizer(tokenizer, folder) -> BertTokenizerLegacy:
    """A slow (Python) tokenizer over the same vocabulary."""
    vocabulary = sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().get)
    (folder / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    return BertTokenizerLegacy(str(folder / "vocab.txt"), do_lower_case=False)


def test_a_slow_tokenizer_where_offsets_are_needed_is_refused(tokenizer, tmp_path):
    slow = slow_tokenizer(tokenizer, tmp_path)
    assert not slow.is_fast
    for policy, options in [("learned", {}), ("entity", {"tagger": RuleTagger()}), ("pmi", {})]:
        with pytest.raises(CollatorError, match="only a fast tokenizer gives.*is a slow one: load a fast one"):
            MaskingCollator(slow, policy, **options)
    collator = MaskingCollator(slow, "whole_word")  # a word-level policy fails at the batch, naming why
    with pytest.raises(CollatorError, match="is a slow one, which gives neither word ids nor offsets"):
        collator(collator.tokenize(TEXTS[:2]))
    assert MaskingCollator(slow, "random")(collator.tokenize(TEXTS[:2]))["labels"].shape[0] == 2


def test_a_saved_learned_policy_the_tokenizer_cannot_feed_is_refused(tokenizer, tmp_path):
    save_policy(LearnedPolicy(RATE, seed=1), tmp_path / "learned")
    with pytest.raises(CollatorError, match="is a slow one"):
        MaskingCollator.from_pretrained(tmp_path / "learned", slow_tokenizer(tokenizer, tmp_path))
    from tokenizers import Tokenizer, models

    unsplit = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordPiece(tokenizer.get_vocab(),
                                                                                  unk_token="[UNK]")),
                                      pad_token="[PAD]", mask_token="[MASK]", unk_token="[UNK]")
    with pytest.raises(CollatorError, match="cannot produce the learned policy's word features .* 1 word"):
        MaskingCollator.from_pretrained(tmp_path / "learned", unsplit)
    card = json.loads((tmp_path / "learned" / CARD).read_text())
    card["feature_sizes"]["rarity"] = 99
    (tmp_path / "learned" / CARD).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="feature 'rarity' of size 99.*re-train the policy"):
        MaskingCollator.from_pretrained(tmp_path / "learned", tokenizer)


def test_a_learned_policy_needs_its_corpus_counts_and_an_entity_source(tokenizer):
    collator = MaskingCollator(tokenizer, LearnedPolicy(RATE, seed=1))
    with pytest.raises(CollatorError, match=r"rarity feature, which counts words of your corpus: call "
                                            r"collator.fit\(texts\)"):
        collator(collator.tokenize(TEXTS[:2]))
    collator.fit(TEXTS)
    with pytest.raises(FeatureError, match="reads the 'entity' word feature: add 'entity_spans'"):
        collator(collator.tokenize(TEXTS[:2]))
    assert collator(collator.tokenize(TEXTS[:2], SPANS[:2]))["labels"].shape[0] == 2


def test_pmi_tables_from_another_tokenizer_are_refused_unless_refitted(tokenizer, tmp_path):
    collator_for("pmi", tokenizer).save_pretrained(tmp_path / "pmi")
    other = train_wordpiece(TEXTS, vocab_size=120)
    with pytest.raises(ArtifactError, match="built from the token ids of tokenizer .* another vocabulary: refit"):
        MaskingCollator.from_pretrained(tmp_path / "pmi", other)
    refit = MaskingCollator.from_pretrained(tmp_path / "pmi", other, texts=TEXTS)
    assert refit(refit.tokenize(TEXTS[:2]))["labels"].shape[0] == 2


def test_bad_policy_specifications_name_the_choices(tokenizer):
    with pytest.raises(CollatorError, match="neither a registered name .*random.* nor a policy config file"):
        MaskingCollator(tokenizer, "no_such_policy")
    with pytest.raises(CollatorError, match="go with a policy name"):
        MaskingCollator(tokenizer, RandomPolicy(0.2), rate=0.3)
    with pytest.raises(CollatorError, match="kind must be 'masked_lm' or 'seq2seq'"):
        MaskingCollator(tokenizer, kind="causal")
    with pytest.raises(FeatureError, match="example 0 has no input_ids"):
        MaskingCollator(tokenizer)([{"text": "hello"}])
    with pytest.raises(FeatureError, match="word_ids has 2 entries but input_ids has 3"):
        MaskingCollator(tokenizer, "whole_word")([{"input_ids": [2, 40, 3], "word_ids": [None, 0]}])


def test_policy_params_reach_the_policy_when_a_name_is_also_a_collator_argument(tokenizer):
    collator = MaskingCollator(tokenizer, "learned", seed=1, policy_params={"seed": 7, "rate": 0.2})
    reference = LearnedPolicy(0.2, seed=7)
    assert collator.seed == 1 and collator.policy.rate == 0.2
    assert all(torch.equal(a, b) for a, b in zip(collator.policy.scorer.state_dict().values(),
                                                 reference.scorer.state_dict().values(), strict=True))


def test_a_used_collator_pickles_without_its_generators_and_masks_like_a_fresh_one(tokenizer):
    features = examples(MaskingCollator(tokenizer))
    used = MaskingCollator(tokenizer, "span", rate=RATE, seed=9)
    first = used(features)
    copy = pickle.loads(pickle.dumps(used))
    assert torch.equal(copy(features)["labels"], first["labels"])  # a fresh stream in the new process
