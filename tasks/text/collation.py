"""Other people's examples → the project's rows: what a fast tokenizer gives, checked, as tensors ``pad_rows`` pads.

This is the input half of :class:`maskpolicy.MaskingCollator`. One example (a *feature*, in Hugging Face's
word) is a dict of Python lists or tensors, e.g. a row of ``datasets.Dataset.map`` output:

==========================  ==========================================================================
key                         value
==========================  ==========================================================================
``input_ids``               ``list[int]``, required: ``tokenizer(text)["input_ids"]``
``attention_mask``          ``list[int]``, optional: 0 marks padding already there (``padding="max_length"``)
``special_tokens_mask``     ``list[int]``, optional: 1 at special tokens (``return_special_tokens_mask=True``);
                            without it, the tokenizer's special ids count as special (its unknown token not)
``word_ids``                ``list[int | None]``: the fast tokenizer's ``BatchEncoding.word_ids(i)``; ``None``
                            or -1 outside words. Word-level policies (whole_word, span in words, pmi,
                            informative, learned) need it
``offset_mapping``          ``list[[start, end]]``: character offsets (``return_offsets_mapping=True``, a fast
                            tokenizer); needed to place ``entity_spans``, for a tagger and for word features
``entity_spans``            ``list[[start, end]]``: character spans of entities in the text
``entity_ids``              ``list[int]``: the entity index of each token, -1 outside (instead of spans)
``text``                    ``str``: the text the offsets point into (a tagger, word features and contextual
                            states read it)
``token_type_ids``          ``list[int]``, optional: passed through, padded with 0
==========================  ==========================================================================

Other keys are ignored. Entity ids come from ``entity_ids``, else ``entity_spans``, else the tagger.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from maskpolicy.tasks.base import TaskError
from maskpolicy.tasks.data.tagging import merge_spans
from maskpolicy.tasks.text.context import StateSource, as_tensor, pool_states
from maskpolicy.tasks.text.encoding import pad_rows, token_entity_ids
from maskpolicy.tasks.text.features import FeatureSpec, document_features

WORD_IDS_FIX = ("keep the fast tokenizer's word ids in each feature, e.g. enc = tokenizer(texts, "
                "return_offsets_mapping=True); feature['word_ids'] = enc.word_ids(i) (collator.tokenize(texts) "
                "does it)")
OFFSETS_FIX = "tokenize with return_offsets_mapping=True (a fast tokenizer) and keep 'offset_mapping'"
TRAINER_FIX = ("with transformers.Trainer set TrainingArguments(remove_unused_columns=False): it drops every "
               "column the model's forward does not take (word_ids, offset_mapping, text, entity_spans) before "
               "the collator sees them")


class FeatureError(TaskError):
    """The examples handed to a collator lack what its policy needs, or do not fit together."""


def collation_rows(
    features: Sequence[Mapping[str, Any]],
    special_ids: Tensor,
    *,
    tagger: Callable[[str], list] | None = None,
    spec: FeatureSpec | None = None,
    total: int | None = None,
    needs_entities: bool = False,
    slow_tokenizer: str | None = None,
    context: StateSource | None = None,
) -> list[dict[str, Any]]:
    """One row per feature: ``input_ids``, ``special`` (specials and given padding), and when the features allow,
    ``word_ids``, ``entity_ids``, ``features`` (with ``spec``: the learned policy's word features), plus
    ``token_type_ids`` and ``attention`` (a given attention mask) when given.

    ``total``: the number of corpus words behind ``spec.counts`` (summed once, not per row).
    ``needs_entities``: refuse features without an entity source (the learned ``entity`` feature needs one).
    ``slow_tokenizer``: the name of a slow tokenizer in use, for the error messages.
    ``context``: where a learned policy's contextual states come from; rows then hold ``states`` (every example's
    text encoded once by the source, which may cache it, and pooled to its tokens by their offsets).
    """
    if not features:
        raise FeatureError("the collator got an empty list of features; a batch needs at least one example")
    rows = [_row(i, feature, special_ids, tagger, spec, total, needs_entities, slow_tokenizer)
            for i, feature in enumerate(features)]
    if context is not None:
        _add_states(features, rows, context, slow_tokenizer)
    keys = {frozenset(row) for row in rows}
    if len(keys) > 1:
        common = frozenset.intersection(*keys)
        odd = sorted(frozenset.union(*keys) - common)
        raise FeatureError(f"the examples of one batch carry different fields ({', '.join(odd)} only in some); "
                           "tokenize them all the same way")
    return rows


def _add_states(features: Sequence[Mapping[str, Any]], rows: list[dict[str, Any]], context: StateSource,
                slow: str | None) -> None:
    """Each row's contextual states: the examples' texts encoded together, pooled to each row's tokens."""
    for i, feature in enumerate(features):
        missing = [key for key in ("text", "offset_mapping") if feature.get(key) is None]
        if missing:
            raise FeatureError(
                f"example {i} lacks {', '.join(missing)}: the learned policy reads contextual states of a frozen "
                "encoder, computed from each example's text and placed on its tokens by their character offsets; "
                f"{OFFSETS_FIX} and keep 'text'{_slow_hint(slow)}; {TRAINER_FIX}")
    documents = context.states([feature["text"] for feature in features])
    for i, (feature, row, document) in enumerate(zip(features, rows, documents, strict=True)):
        offsets = np.asarray(feature["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        content = ~row["special"].numpy() & (offsets[:, 1] > offsets[:, 0])
        words = row["word_ids"].numpy() if "word_ids" in row else None
        if context.unit == "word" and words is None:
            raise FeatureError(f"example {i} has no word_ids, and the policy's contextual states are pooled over "
                               f"words: {WORD_IDS_FIX}; {TRAINER_FIX}")
        row["states"] = as_tensor(pool_states(document, offsets, content, words, context.unit))


def pad_collation_rows(rows: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Tensor]:
    """The padded batch: ``pad_rows``'s fields, ``token_type_ids`` padded with 0, a given attention mask kept."""
    extra = {key: [row.pop(key) for row in rows] for key in ("token_type_ids", "attention") if key in rows[0]}
    batch = pad_rows(rows, pad_token_id)
    for key, values in extra.items():
        batch[key] = torch.nn.utils.rnn.pad_sequence(values, batch_first=True, padding_value=0)
    if "attention" in batch:
        batch["attention_mask"] = batch["attention_mask"] * batch.pop("attention").bool()
        batch["maskable"] = batch["maskable"] & batch["attention_mask"].bool()
    return batch


def _ids(value: Any, may_be_none: bool = False) -> np.ndarray:
    """An id list as ``Long[T]``, converted in C; with ``may_be_none``, ``None`` means -1 (via NaN as a float)."""
    if isinstance(value, Tensor):
        return value.long().numpy()
    if not may_be_none:
        return np.asarray(value, dtype=np.int64)
    return np.nan_to_num(np.asarray(value, dtype=np.float64), nan=-1).astype(np.int64)


def _row(i: int, feature: Mapping[str, Any], special_ids: Tensor, tagger, spec: FeatureSpec | None,
         total: int | None, needs_entities: bool, slow: str | None) -> dict[str, Any]:
    if "input_ids" not in feature:
        raise FeatureError(f"example {i} has no input_ids (keys: {', '.join(map(str, feature)) or 'none'}); each "
                           "feature needs what tokenizer(text) returns")
    input_ids = torch.as_tensor(_ids(feature["input_ids"]))
    length = len(input_ids)
    row: dict[str, Any] = {"input_ids": input_ids}
    if "special_tokens_mask" in feature:
        special = _sized(i, "special_tokens_mask", _ids(feature["special_tokens_mask"]), length).astype(bool)
    else:
        special = torch.isin(input_ids, special_ids).numpy()
    if "attention_mask" in feature:
        attention = _sized(i, "attention_mask", _ids(feature["attention_mask"]), length)
        special = special | (attention == 0)
        row["attention"] = torch.from_numpy(attention)
    if "token_type_ids" in feature:
        row["token_type_ids"] = torch.from_numpy(_sized(i, "token_type_ids", _ids(feature["token_type_ids"]), length))
    word_ids = None
    if feature.get("word_ids") is not None:
        word_ids = np.where(special, -1, _sized(i, "word_ids", _ids(feature["word_ids"], True), length))
        row["word_ids"] = torch.from_numpy(word_ids)
    offsets = None
    if feature.get("offset_mapping") is not None:
        offsets = np.asarray(feature["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        _sized(i, "offset_mapping", offsets, length)
    entity_ids = _entity_ids(i, feature, special, offsets, tagger, length, slow)
    if entity_ids is not None:
        row["entity_ids"] = torch.from_numpy(entity_ids)
    elif needs_entities:
        raise FeatureError(
            f"example {i} gives no entity spans, but the policy reads the 'entity' word feature: add "
            "'entity_spans' (character [start, end) pairs) with 'offset_mapping', or 'entity_ids', or build the "
            f"collator with a tagger (tagger=RuleTagger()) and keep 'text'; {TRAINER_FIX}")
    if spec is not None:
        row["features"] = torch.from_numpy(_word_features(i, feature, word_ids, offsets, entity_ids, special, spec,
                                                          total, slow))
        row["feature_names"] = spec.names
    row["special"] = torch.from_numpy(special)
    return row


def _sized(i: int, key: str, values: np.ndarray, length: int) -> np.ndarray:
    if len(values) != length:
        raise FeatureError(f"example {i}: {key} has {len(values)} entries but input_ids has {length}; keep the "
                           "tokenizer's fields of one call together (truncate and pad them alike)")
    return values


def _entity_ids(i: int, feature: Mapping[str, Any], special: np.ndarray, offsets: np.ndarray | None, tagger,
                length: int, slow: str | None) -> np.ndarray | None:
    if feature.get("entity_ids") is not None:
        return np.where(special, -1, _sized(i, "entity_ids", _ids(feature["entity_ids"], True), length))
    spans = feature.get("entity_spans")
    if spans is None and tagger is not None:
        if not isinstance(feature.get("text"), str):
            raise FeatureError(f"example {i} has no 'text', which the collator's tagger reads; keep the text column "
                               f"in each feature; {TRAINER_FIX}")
        spans = tagger(feature["text"])
    if spans is None:
        return None
    if offsets is None:
        raise FeatureError(f"example {i} has entity spans in characters but no offset_mapping to place them on "
                           f"tokens: {OFFSETS_FIX}{_slow_hint(slow)}; {TRAINER_FIX}")
    spans = merge_spans((int(start), int(end)) for start, end in spans)
    return token_entity_ids(offsets, spans, special)


def _word_features(i: int, feature: Mapping[str, Any], word_ids: np.ndarray | None, offsets: np.ndarray | None,
                   entity_ids: np.ndarray | None, special: np.ndarray, spec: FeatureSpec, total: int | None,
                   slow: str | None) -> np.ndarray:
    missing = [name for name, value in (("word_ids", word_ids), ("offset_mapping", offsets),
                                        ("text", feature.get("text"))) if value is None]
    if missing:
        raise FeatureError(
            f"example {i} lacks {', '.join(missing)}: the learned policy reads word features "
            f"({', '.join(spec.names)}) computed from the text, its character offsets and the tokenizer's word ids; "
            f"{WORD_IDS_FIX}, {OFFSETS_FIX} and keep 'text'{_slow_hint(slow)}; {TRAINER_FIX}")
    no_entities = np.full(len(special), -1, dtype=np.int64)
    return document_features(feature["text"], offsets, word_ids, no_entities if entity_ids is None else entity_ids,
                             special, spec, spec.counts, total)


def _slow_hint(slow: str | None) -> str:
    return "" if slow is None else (f" (tokenizer {slow!r} is a slow one, which gives no offsets or word ids: load "
                                    "a fast one, AutoTokenizer.from_pretrained(name, use_fast=True))")
