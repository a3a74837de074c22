"""Whole-word and entity masking line up with words and entity spans under the three tokenizer families
researchers use: WordPiece (``##`` continuations), byte-level BPE (``Ġ`` word starts, GPT-2 / RoBERTa) and
SentencePiece-style unigram (``▁`` word starts, T5 / XLM-R). Each is trained here on the bioworld text.

The policies never look at token strings: word boundaries come from each tokenizer's own word ids and entity
spans from its character offsets. These tests check the result against the text itself.
"""

from __future__ import annotations

import re

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from maskpolicy.policies import EntityPolicy, PMIPolicy, WholeWordPolicy
from maskpolicy.tasks.data.bioworld import BioWorld
from maskpolicy.tasks.text.encoding import encode_documents, pad_rows, token_batch
from maskpolicy.tasks.text.tokenization import check_tokenizer, train_wordpiece

ALPHANUMERIC = re.compile(r"[^\W_]")


@pytest.fixture(scope="module")
def corpus():
    return BioWorld(n_people=30, biographies_per_person=1).corpus()


def byte_level_bpe(texts: list[str]) -> PreTrainedTokenizerFast:
    """GPT-2 / RoBERTa style: bytes, BPE merges, a word's first piece carries the space as ``Ġ``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, min_frequency=2, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", tokenizer.token_to_id("</s>")),
                                                            ("<s>", tokenizer.token_to_id("<s>")), trim_offsets=True)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>")


def sentencepiece_unigram(texts: list[str]) -> PreTrainedTokenizerFast:
    """T5 / XLM-R style: a unigram model over pieces, a word's first piece starts with ``▁``."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(texts, trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>", "<mask>"], unk_token="<unk>", show_progress=False))
    eos = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>")


FAMILIES = {"wordpiece": lambda texts: train_wordpiece(texts, vocab_size=150), "byte_level_bpe": byte_level_bpe,
            "sentencepiece_unigram": sentencepiece_unigram}
MARKERS = {"wordpiece": "##", "byte_level_bpe": "Ġ", "sentencepiece_unigram": "▁"}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def encoded(request, corpus):
    texts = [document.text for document in corpus]
    tokenizer = check_tokenizer(FAMILIES[request.param](texts))
    rows = encode_documents(texts, [document.entities for document in corpus], tokenizer, 512)
    assert len(rows) == len(corpus), "one row per biography, so rows and texts line up"
    return request.param, tokenizer, rows, pad_rows(rows, tokenizer.pad_token_id)


def test_each_family_marks_words_its_own_way(encoded):
    family, tokenizer, rows, _ = encoded
    pieces = tokenizer.convert_ids_to_tokens(rows[0]["input_ids"].tolist())
    assert any(MARKERS[family] in piece for piece in pieces)
    word_ids = rows[0]["word_ids"]
    multi_token_words = (word_ids[1:] == word_ids[:-1]) & (word_ids[1:] >= 0)
    assert multi_token_words.any(), "the fixture must split some words into several tokens"


def test_whole_word_masks_whole_words_of_the_text(encoded, corpus):
    family, tokenizer, rows, batch = encoded
    mask = WholeWordPolicy(0.3).select(token_batch(batch), torch.Generator().manual_seed(0))
    for row, document in enumerate(corpus):
        words = batch["word_ids"][row]
        for word in words[mask[row]].unique().tolist():
            assert mask[row][words == word].all(), f"{family}: a word was masked in part"
            start, end = word_span(tokenizer, document.text, rows[row], word)
            text = document.text
            assert not (start > 0 and ALPHANUMERIC.match(text[start - 1]) and ALPHANUMERIC.match(text[start]))
            assert not (end < len(text) and ALPHANUMERIC.match(text[end]) and ALPHANUMERIC.match(text[end - 1])), (
                f"{family}: word {text[start:end]!r} ends inside {text[max(0, start - 5):end + 5]!r}")


def test_entity_masking_covers_exactly_the_gold_spans(encoded, corpus):
    family, tokenizer, rows, batch = encoded
    mask = EntityPolicy(0.3, shortfall="allow").select(token_batch(batch), torch.Generator().manual_seed(0))
    for row, document in enumerate(corpus):
        offsets = tokenizer(document.text, return_offsets_mapping=True)["offset_mapping"]
        for k, (start, end) in enumerate(document.entities):
            tokens = (rows[row]["entity_ids"] == k).nonzero().flatten().tolist()
            covered = "".join(document.text[a:b] for a, b in (offsets[t] for t in tokens))
            assert covered.replace(" ", "") == document.text[start:end].replace(" ", ""), family
            assert mask[row, tokens].all() or not mask[row, tokens].any(), f"{family}: an entity masked in part"


def test_pmi_units_are_whole_words(encoded):
    family, _, _, batch = encoded
    view = token_batch(batch)
    policy = PMIPolicy(0.3, min_count=3)
    policy.fit(view)
    mask = policy.select(view, torch.Generator().manual_seed(0))
    words = batch["word_ids"]
    for row in range(len(words)):
        for word in words[row][mask[row]].unique().tolist():
            assert mask[row][words[row] == word].all(), f"{family}: pmi masked part of a word"


def word_span(tokenizer, text: str, row: dict, word: int) -> tuple[int, int]:
    """Character span of one word of an encoded row (stripped of the spaces a byte-level token carries)."""
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    positions = (row["word_ids"] == word).nonzero().flatten().tolist()
    start, end = offsets[positions[0]][0], offsets[positions[-1]][1]
    while start < end and text[start].isspace():
        start += 1
    return start, end
