"""The word-level features a learned policy reads: names and sizes, shared by tasks and policies.

Each feature is a categorical id per token in ``[0, size)``; id 0 means "none"
(special tokens, padding, a token outside any word). The features describe the
*word* a token belongs to, not the token id, so a policy trained with one tokenizer
or corpus still reads a batch from another. ``tasks.features`` computes them from text.

======================  ====  ==================================================================
name                    size  value (ids ≥ 1)
======================  ====  ==================================================================
``word``                4096  hash of the lower-cased word (stable across runs), 1 + crc32 mod 4095
``shape``                  8  lower, Capitalised, UPPER, digits, alphanumeric mix, punctuation, other
``position``              10  word index in its sentence: 0, 1, 2, 3, 4–5, 6–8, 9–12, 13–20, 21+
``entity``                 3  first word of an entity span, a later word of the span (0: outside any span)
``frequency``             16  1 + floor(log2(count of the lower-cased word in the corpus)), capped
``subword``                3  first token of its word, a continuation token
``repeats``                5  how often the lower-cased word occurs in its document: 1, 2, 3, 4+
``suffix``               512  hash of the lower-cased word's last three characters (a part-of-speech cue)
``rarity``                16  1 + clamp(floor(20 + log2(share of the corpus's words that are this word)), 0, 14)
``function``             174  1: a content word; 2 + index in FUNCTION_WORDS, then in PUNCTUATION_MARKS
======================  ====  ==================================================================

``frequency`` counts occurrences, so the same word falls in different buckets in a small and a
large corpus; ``rarity`` is its share of the corpus, comparable between corpora of any size.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import PolicyError

# English closed-class words (determiners, pronouns, prepositions, conjunctions, auxiliaries, connectives).
# Their identities generalise across subjects where a content word's hash memorises one article; the
# ``function`` feature reads them, and the rule tagger strips them from the start of a capitalised run.
_FUNCTION_TEXT = """
a an the this that these those there their they them then than thus so such some many most much more any each
every all both either neither no not nor none other another several few i we you he she it his her its our
your my me us him who whom whose which what when where why how if while although though because since unless
until after before during following despite however therefore moreover furthermore meanwhile also instead
still yet as at by for from in into of on onto over under upon with within without about above across against
along among around behind below beneath beside between beyond near through throughout to toward towards and or
but is are was were be been being has have had do does did can could may might must shall should will would
here now today yesterday tomorrow once later again according unlike like
"""
FUNCTION_WORDS: tuple[str, ...] = tuple(_FUNCTION_TEXT.split())
PUNCTUATION_MARKS: tuple[str, ...] = tuple(",.;:!?()[]\"'-–—/$%&")

FEATURE_SIZES: dict[str, int] = {"word": 4096, "shape": 8, "position": 10, "entity": 3, "frequency": 16, "subword": 3,
                                  "repeats": 5, "suffix": 512, "rarity": 16,
                                  "function": 2 + len(FUNCTION_WORDS) + len(PUNCTUATION_MARKS)}
FEATURES: tuple[str, ...] = tuple(FEATURE_SIZES)
# What transfers between tasks with different vocabularies: everything but the hashed word.
PORTABLE_FEATURES: tuple[str, ...] = ("shape", "position", "entity", "frequency", "subword")
# A learned policy's default: no hashed identities (word, suffix), which memorise the training
# articles, and corpus-size-free rarity instead of raw counts. Chosen by benchmarks/policy_quality.py
# (held-out SQuAD articles); bioworld's answer precision is the same with it.
DEFAULT_FEATURES: tuple[str, ...] = ("shape", "position", "entity", "subword", "repeats", "rarity")


def check_features(names: Sequence[str]) -> tuple[str, ...]:
    """Validates a feature list: known names, no repeats, at least one."""
    names = tuple(names)
    unknown = [name for name in names if name not in FEATURE_SIZES]
    if unknown or not names or len(set(names)) != len(names):
        raise PolicyError(
            f"features must be distinct names from {', '.join(FEATURES)}; got {list(names)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return names
