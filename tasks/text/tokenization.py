"""Tokenizers: any Hugging Face tokenizer by name or path, or one trained on the corpus."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from maskpolicy.tasks.base import TaskError

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                  "mask_token": "[MASK]"}


def train_wordpiece(texts: Iterable[str], vocab_size: int = 4000, lowercase: bool = False) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer built from ``texts``, offline and reproducible.

    The vocabulary is every character (word-initial and ``##`` forms, so any word
    can be spelt) plus the most frequent whole words, ties broken alphabetically.
    The ``tokenizers`` WordPiece trainer is not used because it breaks ties in
    hash-map order, so the same corpus gives different ids from run to run.
    ``[CLS]``/``[SEP]`` double as BOS/EOS so the same tokenizer serves seq2seq models.
    """
    normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    characters = sorted({c for word in counts for c in word})
    vocab = list(SPECIAL_TOKENS.values()) + characters + [f"##{c}" for c in characters]
    room = max(0, vocab_size - len(vocab))
    frequent = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))[:room]
    vocab += sorted(frequent)
    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, pre_tokenizer
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="[CLS]", eos_token="[SEP]", **SPECIAL_TOKENS)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """A Hugging Face tokenizer by hub name (when online) or local path."""
    try:
        return AutoTokenizer.from_pretrained(name_or_path, use_fast=True)
    except (OSError, ValueError) as error:
        raise TaskError(
            f"could not load tokenizer {name_or_path!r} ({error}); give a local path or a hub name "
            "reachable from this machine, or set model.tokenizer=null to train one on the corpus"
        ) from error


def check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Rejects tokenizers the masking pipeline cannot use, naming the fix."""
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if tokenizer.mask_token_id is None:
        raise TaskError(
            f"tokenizer {name!r} has no mask token, so masked positions cannot be marked; use a masked-LM "
            "tokenizer, add one with tokenizer.add_special_tokens({'mask_token': '[MASK]'}), or train one "
            "(model.tokenizer=null)"
        )
    if tokenizer.pad_token_id is None:
        raise TaskError(f"tokenizer {name!r} has no padding token; add one with add_special_tokens")
    if not tokenizer.is_fast:
        raise TaskError(f"tokenizer {name!r} is not a fast tokenizer; word ids and offsets need a fast one")
    return tokenizer
