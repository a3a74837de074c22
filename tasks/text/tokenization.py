"""Tokenizers: any Hugging Face tokenizer by name or path, or one trained on the corpus."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from maskpolicy.tasks.base import TaskError

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                  "mask_token": "[MASK]"}


def train_wordpiece(
    texts: Iterable[str], vocab_size: int = 4000, lowercase: bool = False, keep: Iterable[str] = ()
) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer built from ``texts``, offline and reproducible.

    The vocabulary is every character (word-initial and ``##`` forms, so any word
    can be spelt) plus the most frequent whole words, ties broken alphabetically.
    The ``tokenizers`` WordPiece trainer is not used because it breaks ties in
    hash-map order, so the same corpus gives different ids from run to run.
    ``[CLS]``/``[SEP]`` double as BOS/EOS so the same tokenizer serves seq2seq models.

    ``keep`` are texts whose every word (as this tokenizer's normaliser and
    pre-tokenizer split them) gets a whole-word entry first; the most frequent words
    of ``texts`` then fill the room left. So a base tokenizer trained on large general
    text plus a small task corpus as ``keep`` spells every task word (names, values) as
    one token. Their characters join the alphabet. When ``keep``'s words alone exceed
    the room, its most frequent ones are kept (ties alphabetical) and a warning is
    logged. Words are whole-word entries sorted alphabetically either way, so without
    ``keep`` the vocabulary is exactly what it was before the argument existed.
    """
    normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()

    def word_counts(corpus: Iterable[str]) -> Counter[str]:
        counts: Counter[str] = Counter()
        for text in corpus:
            counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
        return counts

    counts, kept_counts = word_counts(texts), word_counts(keep)
    characters = sorted({c for word in (*counts, *kept_counts) for c in word})
    vocab = list(SPECIAL_TOKENS.values()) + characters + [f"##{c}" for c in characters]
    room = max(0, vocab_size - len(vocab))
    kept = _most_frequent(kept_counts, room)
    wanted = sum(len(w) > 1 for w in kept_counts)  # single characters are in the alphabet already
    if len(kept) < wanted:
        log.warning(
            "train_wordpiece: keep has %d distinct words but the vocabulary has room for %d; kept its %d most "
            "frequent, the rest are spelt in pieces (raise vocab_size to keep them all)", wanted, room, len(kept),
        )
    kept_set = set(kept)
    frequent = _most_frequent(Counter({w: n for w, n in counts.items() if w not in kept_set}), room - len(kept))
    vocab += sorted(kept + frequent)
    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, pre_tokenizer
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="[CLS]", eos_token="[SEP]", **SPECIAL_TOKENS)


def _most_frequent(counts: Counter[str], room: int) -> list[str]:
    """The ``room`` most frequent words of more than one character, ties broken alphabetically."""
    return sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))[: max(0, room)]


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
