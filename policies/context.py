"""Which contextual states a learned policy reads: a frozen encoder's hidden layers, pooled to the run's tokens.

The states themselves are computed at encoding time, once per document, by the ``tasks`` side
(:mod:`maskpolicy.tasks.text.context`) and reach the policy as ``TokenBatch.states``; this module only
describes them, so a policy can say what it needs and a saved policy can say what it was trained on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .base import PolicyError

UNITS = ("token", "word")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ContextSpec:
    """The contextual states a learned policy reads.

    Attributes:
        encoder: where the encoder is read from: an asset key (``minilm``: the MiniLM-L6 encoder ``make real``
            installs), a model folder, a Hugging Face name in the local cache, or ``model``: the run's own
            pre-trained model (its ``model.pretrained``, resolved when the policy is trained).
        layers: hidden-state indices (0: the embedding output, -1: the last layer), concatenated per token.
        unit: ``word`` averages the encoder tokens over each token's whole word, ``token`` over the token itself.
        dim: channels per token (the encoder's hidden size × number of layers); the scorer is sized by it.
        weights_sha256: SHA-256 of the encoder's weight files the policy was trained with (set when it is
            trained; ``None`` for an untrained policy). A policy is refused states of other weights.
    """

    encoder: str = "minilm"
    layers: tuple[int, ...] = (-1,)
    unit: str = "word"
    dim: int = 384
    weights_sha256: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.encoder, str) or not self.encoder.strip():
            raise PolicyError(f"context.encoder must name an encoder (an asset key, folder or model name), got "
                              f"{self.encoder!r}")
        layers = tuple(self.layers) if not isinstance(self.layers, int) else (self.layers,)
        if not layers or not all(isinstance(layer, int) and not isinstance(layer, bool) for layer in layers):
            raise PolicyError(f"context.layers must be a non-empty list of layer indices, got {self.layers!r}")
        object.__setattr__(self, "layers", layers)
        if self.unit not in UNITS:
            raise PolicyError(f"context.unit must be one of {', '.join(UNITS)}, got {self.unit!r}")
        if not isinstance(self.dim, int) or self.dim <= 0:
            raise PolicyError(f"context.dim must be a positive channel count, got {self.dim!r}")
        if self.weights_sha256 is not None and not _SHA256.fullmatch(str(self.weights_sha256)):
            raise PolicyError(f"context.weights_sha256 must be 64 lower-case hex digits or null, got "
                              f"{self.weights_sha256!r}")

    @classmethod
    def of(cls, value: ContextSpec | Mapping[str, Any] | None) -> ContextSpec | None:
        """A spec from a spec, a mapping of its fields (a config node) or ``None`` (no contextual states)."""
        if value is None or isinstance(value, ContextSpec):
            return value
        if not isinstance(value, Mapping):
            raise PolicyError(f"a learned policy's context must be a mapping (encoder, layers, unit, dim) or null, "
                              f"got {type(value).__name__}")
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise PolicyError(f"unknown context setting(s) {', '.join(map(str, unknown))}; the settings are "
                              f"{', '.join(cls.__dataclass_fields__)}")
        fields = dict(value)
        if "layers" in fields and not isinstance(fields["layers"], int):
            fields["layers"] = tuple(fields["layers"])
        return cls(**fields)

    def as_dict(self) -> dict[str, Any]:
        """The spec as JSON values (layers as a list)."""
        return {**asdict(self), "layers": list(self.layers)}
