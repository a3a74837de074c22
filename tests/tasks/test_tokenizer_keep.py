"""train_wordpiece(keep=...): task words get whole-word entries before the general text's frequent words."""

from __future__ import annotations

import logging

from maskpolicy.tasks.text.tokenization import SPECIAL_TOKENS, train_wordpiece

GENERAL = ["the river runs to the sea and the sea is wide", "the hills are green and the river is cold"] * 3
TASK = ["Zorblax met Quintara in Vellum.", "Quintara left Vellum."]


def _words(tokenizer) -> list[str]:
    """Whole-word entries in id order (not specials, not single characters, not ## pieces)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    specials = set(SPECIAL_TOKENS.values())
    return [t for t, _ in vocab if t not in specials and len(t) > 1 and not t.startswith("##")]


def test_no_keep_is_the_tokenizer_it_always_was():
    for size in (1, 40, 60, 4000):
        plain, empty = train_wordpiece(GENERAL, size), train_wordpiece(GENERAL, size, keep=[])
        assert plain.backend_tokenizer.to_str() == empty.backend_tokenizer.to_str()


def test_every_keep_word_is_one_token_and_general_words_fill_the_rest():
    alphabet = len(train_wordpiece(GENERAL, vocab_size=1, keep=TASK))  # specials and every character
    tokenizer = train_wordpiece(GENERAL, vocab_size=alphabet + 6 + 4, keep=TASK)
    assert len(tokenizer) == alphabet + 10
    # The task's 6 words, then GENERAL's 4 most frequent: "the" (15), then "and", "is", "river" of the four at 6.
    assert _words(tokenizer) == ["Quintara", "Vellum", "Zorblax", "and", "in", "is", "left", "met", "river", "the"]
    for word in ("Zorblax", "Quintara", "Vellum"):
        assert tokenizer.tokenize(word) == [word]
    plain = train_wordpiece(GENERAL, vocab_size=4000)
    assert "Zorblax" not in plain.get_vocab() and plain.tokenize("Zorblax") == ["[UNK]"], "no Z, b, x without keep"
    characters = {c for text in TASK for c in text if not c.isspace()}
    assert all(c in tokenizer.get_vocab() and f"##{c}" in tokenizer.get_vocab() for c in characters)


def test_keep_words_beyond_the_room_keep_the_most_frequent_and_warn(caplog):
    base = len(train_wordpiece(GENERAL, vocab_size=1, keep=TASK))  # specials and the alphabet only
    with caplog.at_level(logging.WARNING, logger="maskpolicy.tasks.text.tokenization"):
        tokenizer = train_wordpiece(GENERAL, vocab_size=base + 3, keep=TASK)
    # Quintara and Vellum appear twice; of the words seen once, "Zorblax" < "in" < "left" < "met" in code-point order.
    assert _words(tokenizer) == ["Quintara", "Vellum", "Zorblax"]
    assert "keep has 6 distinct words but the vocabulary has room for 3" in caplog.text


def test_keep_sees_words_as_the_tokenizer_does():
    tokenizer = train_wordpiece(["plain text"], vocab_size=1000, lowercase=True, keep=["ÉCOLE-Normale's"])
    assert {"ecole", "normale"} <= set(_words(tokenizer))
    assert tokenizer.tokenize("École-Normale's") == ["ecole", "-", "normale", "'", "s"]
