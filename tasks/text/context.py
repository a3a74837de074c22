"""Contextual states of a frozen pretrained encoder, pooled to another tokenizer's tokens by character offsets.

A learned policy may read, besides its word features, what a pretrained encoder (the MiniLM encoder that
``make real`` installs, any Hugging Face encoder by name or folder) makes of each token in its context.
The encoder runs once per document with its own tokenizer: :meth:`FrozenEncoder.states` gives, per
document, the character span of each of the encoder's tokens and its hidden states at the chosen layers
(concatenated), float16. A document longer than the encoder's positions is cut into windows that overlap by
``stride`` tokens; each token keeps the state of the window where it sits farthest from an edge.
:func:`pool_states` then averages, for each token of the run's own tokenizer, the encoder tokens whose
characters overlap it (``unit="token"``) or overlap its whole word (``unit="word"``), so states follow a
policy across tokenizers. Caching by content hash is the caller's (:mod:`maskpolicy.meta.context`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from maskpolicy.tasks.assets import ASSETS, asset_path
from maskpolicy.tasks.base import TaskError
from maskpolicy.tasks.hashing import update_with_file

log = logging.getLogger(__name__)
Unit = Literal["token", "word"]
UNITS = ("token", "word")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".h5", ".msgpack")


@dataclass(frozen=True)
class DocumentStates:
    """One document as the encoder saw it: ``offsets`` ``Long[N, 2]`` character spans of its tokens (specials
    dropped, in order) and ``states`` ``Float16[N, D]`` their hidden states."""

    offsets: np.ndarray
    states: np.ndarray


@runtime_checkable
class StateSource(Protocol):
    """Gives the contextual states of documents: :class:`FrozenEncoder`, or a cache in front of one."""

    dim: int
    unit: Unit

    def states(self, texts: Sequence[str]) -> list[DocumentStates]: ...


def encoder_location(name: str) -> str:
    """Where encoder ``name`` is read from: an asset key (``minilm``) → its installed folder; a folder or a
    Hugging Face name as it is."""
    return str(asset_path(name)) if name in ASSETS else str(Path(name).expanduser()) if Path(
        name).expanduser().exists() else name


@lru_cache(maxsize=8)
def _digest(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for path, _, _ in files:
        digest.update(Path(path).name.encode())
        update_with_file(digest, path)
    return digest.hexdigest()


def weights_sha256(location: str) -> str:
    """SHA-256 over an encoder folder's weight files (names and bytes, sorted by name; memoised by size and
    modification time). A Hugging Face name is first resolved to its local snapshot."""
    folder = Path(location)
    if not folder.is_dir():
        folder = _snapshot(location)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise TaskError(f"encoder folder {folder} has no weight files ({', '.join(WEIGHT_SUFFIXES)}); give a Hugging "
                        "Face model folder (config.json and model.safetensors)")
    return _digest(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


def _snapshot(name: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as error:  # noqa: BLE001 - any hub error means the same thing here
        raise TaskError(f"encoder {name!r} is neither an asset ({', '.join(ASSETS)}), a folder, nor a Hugging Face "
                        f"model in the local cache ({type(error).__name__}); give an installed folder") from None


class FrozenEncoder:
    """A pretrained encoder, frozen and in eval mode, giving each document's token states.

    Args:
        name: an asset key (``minilm``), a model folder, or a Hugging Face name already in the local cache.
        layers: indices into the encoder's hidden states (0 is the embedding output, -1 the last layer),
            concatenated per token.
        unit: what :func:`pool_states` averages over for each of the run's tokens (``token`` or ``word``).
        stride: tokens shared by consecutive windows of a long document (``None``: 64, or a quarter of a window
            when windows are shorter than 256 tokens).
        batch_size: windows per forward pass.
        max_length: window length in tokens, specials included (``None``: the encoder's positions).
    """

    def __init__(self, name: str, layers: Sequence[int] = (-1,), unit: Unit = "word", stride: int | None = None,
                 batch_size: int = 16, max_length: int | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        if unit not in UNITS:
            raise TaskError(f"context unit must be one of {', '.join(UNITS)}, got {unit!r}")
        self.name, self.unit, self.layers = name, unit, tuple(int(layer) for layer in layers)
        if not self.layers:
            raise TaskError("a contextual encoder needs at least one layer (policy.context.layers)")
        self.location = encoder_location(name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.location)
            self.model = AutoModel.from_pretrained(self.location).eval().requires_grad_(False)
        except (OSError, ValueError) as error:
            raise TaskError(f"could not load encoder {name!r} from {self.location} ({error}); give an asset key "
                            f"({', '.join(ASSETS)}), a Hugging Face model folder, or a cached model name") from error
        self._check_offsets()
        self._template = _template(self.tokenizer)
        self.weights_sha256 = weights_sha256(self.location)
        config = self.model.config
        n_states = config.num_hidden_layers + 1
        bad = [layer for layer in self.layers if not -n_states <= layer < n_states]
        if bad:
            raise TaskError(f"encoder {name!r} has {n_states} hidden states (embeddings + {n_states - 1} layers); "
                            f"layers {bad} do not exist (use 0..{n_states - 1} or -1..-{n_states})")
        self.dim = config.hidden_size * len(self.layers)
        positions = getattr(config, "max_position_embeddings", 512)
        self.max_length = min(max_length or positions, positions)
        self.window = self.max_length - len(self._template[0]) - len(self._template[1])
        stride = min(64, self.window // 4) if stride is None else int(stride)
        if not 0 <= stride < self.window // 2:
            raise TaskError(f"context stride {stride} must be in [0, {self.window // 2}) for windows of "
                            f"{self.window} tokens")
        self.stride, self.batch_size = stride, batch_size

    def _check_offsets(self) -> None:
        try:
            probe = self.tokenizer("alpha beta", return_offsets_mapping=True, add_special_tokens=False)
        except NotImplementedError:
            probe = None
        if probe is None or not probe.get("offset_mapping"):
            raise TaskError(
                f"the tokenizer of encoder {self.name!r} ({type(self.tokenizer).__name__}) gives no character "
                "offsets, which pooling its states to another tokenizer's tokens needs: give a folder with a fast "
                "tokenizer (tokenizer.json), e.g. AutoTokenizer.from_pretrained(name, use_fast=True).save_pretrained")

    def states(self, texts: Sequence[str]) -> list[DocumentStates]:
        """Every document's encoder-token offsets and states (windows of long documents merged)."""
        encoded = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        windows = []  # (document, first token, token ids)
        for doc, ids in enumerate(encoded["input_ids"]):
            for start in _window_starts(len(ids), self.window, self.stride):
                windows.append((doc, start, ids[start:start + self.window]))
        hidden: list[np.ndarray | None] = [None] * len(windows)
        order = sorted(range(len(windows)), key=lambda w: len(windows[w][2]))
        for first in range(0, len(order), self.batch_size):
            group = order[first:first + self.batch_size]
            for w, states in zip(group, self._forward([windows[w][2] for w in group]), strict=True):
                hidden[w] = states
        out, w = [], 0
        for doc, ids in enumerate(encoded["input_ids"]):
            merged = np.zeros((len(ids), self.dim), dtype=np.float16)
            best = np.full(len(ids), -1)
            while w < len(windows) and windows[w][0] == doc:
                _, start, piece = windows[w]
                centrality = np.minimum(np.arange(len(piece)), np.arange(len(piece))[::-1])
                place = np.arange(start, start + len(piece))
                better = centrality > best[place]
                merged[place[better]] = hidden[w][better]
                best[place[better]] = centrality[better]
                w += 1
            offsets = np.asarray(encoded["offset_mapping"][doc], dtype=np.int64).reshape(-1, 2)
            out.append(DocumentStates(offsets, merged))
        return out

    def _forward(self, pieces: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Hidden states ``Float16[n, D]`` of each window's tokens (specials added for the pass, then dropped)."""
        prefix, suffix = self._template
        inputs = [[*prefix, *piece, *suffix] for piece in pieces]
        lead = len(prefix)
        width = max(map(len, inputs))
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(inputs), width), pad, dtype=torch.long)
        attention = torch.zeros((len(inputs), width), dtype=torch.long)
        for i, row in enumerate(inputs):
            ids[i, :len(row)], attention[i, :len(row)] = torch.tensor(row), 1
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            output = self.model(input_ids=ids.to(device), attention_mask=attention.to(device),
                                output_hidden_states=True)
        stacked = torch.cat([output.hidden_states[layer] for layer in self.layers], dim=-1).float().cpu()
        return [stacked[i, lead:lead + len(piece)].to(torch.float16).numpy() for i, piece in enumerate(pieces)]


def _template(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a single sequence (BERT: [CLS] … [SEP])."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start], full[start + len(plain):]
    raise TaskError(f"cannot tell where {type(tokenizer).__name__} puts a sequence among its special tokens")


def _window_starts(n_tokens: int, window: int, stride: int) -> list[int]:
    """First token of each window over ``n_tokens`` tokens: windows of ``window`` tokens overlapping by ``stride``
    (one empty window for an empty document)."""
    if n_tokens <= window:
        return [0]
    step = window - stride
    starts = list(range(0, n_tokens - window, step))
    return [*starts, n_tokens - window]


def pool_states(document: DocumentStates, offsets: np.ndarray, content: np.ndarray,
                word_ids: np.ndarray | None = None, unit: Unit = "token") -> np.ndarray:
    """``Float16[T, D]`` states of the run's tokens: for each content token, the mean of the encoder tokens whose
    characters overlap its span (``unit="token"``) or its word's (``unit="word"``; needs ``word_ids``); the
    nearest encoder token when none overlaps; zeros at specials and padding.

    Args: ``offsets`` ``Long[T, 2]`` the run's token character offsets into the same text; ``content`` ``Bool[T]``
    the tokens to fill; ``word_ids`` ``Long[T]`` document-level word index (-1 outside words).
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    content = np.asarray(content, dtype=bool)
    pooled = np.zeros((len(offsets), document.states.shape[1]), dtype=np.float16)
    if not content.any() or len(document.offsets) == 0:
        return pooled
    starts, ends = offsets[content, 0], offsets[content, 1]
    if unit == "word":
        if word_ids is None:
            raise TaskError("pooling contextual states over words needs the run's word ids")
        words = np.asarray(word_ids)[content]
        _, inverse = np.unique(words, return_inverse=True)
        word_start = np.full(inverse.max() + 1, np.iinfo(np.int64).max)
        word_end = np.zeros(inverse.max() + 1, dtype=np.int64)
        np.minimum.at(word_start, inverse, starts)
        np.maximum.at(word_end, inverse, ends)
        in_word = np.asarray(word_ids)[content] >= 0
        starts = np.where(in_word, word_start[inverse], starts)
        ends = np.where(in_word, word_end[inverse], ends)
    enc_start, enc_end = document.offsets[:, 0], document.offsets[:, 1]
    # encoder tokens are in text order and do not overlap: those overlapping [s, e) are a contiguous run
    low = np.searchsorted(enc_end, starts, side="right")
    high = np.searchsorted(enc_start, ends, side="left")
    empty = high <= low
    nearest = np.clip(low, 0, len(enc_start) - 1)
    low, high = np.where(empty, nearest, low), np.where(empty, nearest + 1, high)
    running = np.concatenate([np.zeros((1, document.states.shape[1])), np.cumsum(document.states, 0, dtype=np.float64)])
    pooled[content] = ((running[high] - running[low]) / (high - low)[:, None]).astype(np.float16)
    return pooled


def as_tensor(states: np.ndarray) -> Tensor:
    """Pooled states as the ``states`` tensor of a row (float16; policies compute in float32)."""
    return torch.from_numpy(np.ascontiguousarray(states))
