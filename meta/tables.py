"""Corpus tables for policies that read corpus statistics (``pmi``'s n-grams, ``informative``'s word scores).

A policy that :class:`~maskpolicy.policies.FitsCorpus` is fitted once per corpus, tokenisation
and table parameters: the tables are cached as safetensors in ``pretrain.tables_cache`` under a
SHA-256 of all three, written atomically, so runs, seeds and search trials on one corpus share one
build. A cache file that cannot be read is logged and rebuilt. Mixture components are fitted too.
A policy that :class:`~maskpolicy.policies.RemembersRows` then does its per-row work for the whole
corpus once (recorded apart, as ``remember_seconds``), unless the corpus is larger than
:data:`REMEMBER_MAX_TOKENS`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from maskpolicy.meta.learning.policy_state import policy_parts
from maskpolicy.meta.results.files import write_atomic
from maskpolicy.policies import FitsCorpus, MaskingPolicy, RemembersRows
from maskpolicy.tasks.text.encoding import pad_rows, token_batch

log = logging.getLogger(__name__)
TABLES_VERSION = 1  # bump when a policy's table format changes, so old cache files are not read
REMEMBER_MAX_TOKENS = 2**26  # rows × width; a row memo holds one or two values per token (≤ 1 GiB here)


@dataclass(frozen=True)
class TablesRecord:
    """What fitting one policy's tables cost and where they are (``results.json``: ``pretrain.tables``)."""

    kind: str
    source: str          # "built" or "cache"
    seconds: float
    entries: int         # table rows, summed over the tables
    path: str | None
    remember_seconds: float | None = None   # the per-row work done once for the corpus; None: not done


def fit_tables(policy: MaskingPolicy, rows: Sequence[dict], pad_token_id: int, cache_dir: str | None
               ) -> list[TablesRecord]:
    """Fits every policy in ``policy`` (itself, mixture components) that reads corpus tables; ``cache_dir=None``
    builds without caching."""
    fitted = [part for part in policy_parts(policy) if isinstance(part, FitsCorpus)]
    if not fitted:
        return []
    corpus = token_batch(pad_rows([{key: row[key] for key in ("input_ids", "special", "word_ids")} for row in rows],
                                  pad_token_id))
    corpus_digest = _corpus_digest(rows)
    return [_remember(part, corpus, _fit_one(part, corpus, corpus_digest, cache_dir)) for part in fitted]


def _remember(policy: FitsCorpus, corpus, record: TablesRecord) -> TablesRecord:
    if not isinstance(policy, RemembersRows):
        return record
    if corpus.input_ids.numel() > REMEMBER_MAX_TOKENS:
        log.info("%s: the corpus (%d × %d tokens) is too large to remember its rows; each batch is worked out anew",
                 record.kind, *corpus.input_ids.shape)
        return record
    started = time.perf_counter()
    policy.remember_rows(corpus)
    return dataclasses.replace(record, remember_seconds=round(time.perf_counter() - started, 3))


def _fit_one(policy: FitsCorpus, corpus, corpus_digest: str, cache_dir: str | None) -> TablesRecord:
    started = time.perf_counter()
    parameters = dict(policy.table_parameters)
    kind = str(parameters.get("kind", type(policy).__name__))
    path = None
    if cache_dir is not None:
        key = json.dumps({"tables": TABLES_VERSION, **parameters, "corpus": corpus_digest}, sort_keys=True)
        path = Path(cache_dir).expanduser() / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"
        tables = _read(path)
        if tables is not None:
            policy.load_tables(tables)
            return TablesRecord(kind, "cache", round(time.perf_counter() - started, 3), _entries(tables), str(path))
    tables = policy.fit(corpus)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        contiguous = {name: tensor.contiguous() for name, tensor in tables.items()}
        write_atomic(path, lambda handle: handle.write(safetensors.torch.save(contiguous)), binary=True)
    return TablesRecord(kind, "built", round(time.perf_counter() - started, 3), _entries(tables),
                        None if path is None else str(path))


def _read(path: Path) -> dict[str, torch.Tensor] | None:
    if not path.exists():
        return None
    try:
        return safetensors.torch.load_file(path)
    except Exception as error:  # noqa: BLE001 - any unreadable cache file is rebuilt, never trusted
        log.warning("corpus tables %s cannot be read (%s); rebuilding them", path, error)
        return None


def _corpus_digest(rows: Sequence[dict]) -> str:
    """SHA-256 of the encoded corpus: token ids, word ids and special-token flags of every row, in order."""
    digest = hashlib.sha256()
    for row in rows:
        for key in ("input_ids", "word_ids", "special"):
            tensor = row[key].contiguous()
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _entries(tables: dict[str, torch.Tensor]) -> int:
    return sum(int(t.numel()) for name, t in tables.items() if name.startswith("keys"))
