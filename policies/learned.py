"""A learned masking policy: a small token scorer over word-level features and, optionally, contextual states.

The scorer sees only the features of :mod:`.features` (hashed word, shape, position in
sentence, entity tag, corpus frequency, subword place) and, with a ``context``
(:class:`.context.ContextSpec`), a frozen encoder's states pooled to each token
(``TokenBatch.states``, computed once per document at encoding time) — never token ids, so a
policy trained with one tokenizer or task can mask text of another. Masks take each row's
budget, round(rate · n) tokens, by the scores: Gumbel top-k (sampling without
replacement, proportional to softmax(logit / temperature)) or plain top-k. With ``members`` > 1 the
scores are the mean logit of a seed ensemble (:class:`ScorerEnsemble`), each scorer trained on its own loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .base import PolicyError, TokenBatch, check_rate
from .context import ContextSpec
from .features import DEFAULT_FEATURES, FEATURE_SIZES, check_features
from .ops import budget, select_count

Sampling = Literal["gumbel", "topk"]


class TokenScorer(nn.Module):
    """Masking logit per token: feature embeddings (summed over channels), plus with ``context_dim`` > 0 the
    token's contextual states (layer-normed, dropped out, projected to the embedding size) → BiLSTM → linear.

    Padding at the end of a row does not change the row's scores (sequences are
    packed to their last featured token).
    """

    def __init__(
        self, features: Sequence[str] = DEFAULT_FEATURES, embedding_dim: int = 32, hidden_size: int = 32,
        context_dim: int = 0, context_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.features = check_features(features)
        self.embeddings = nn.ModuleList(
            nn.Embedding(FEATURE_SIZES[name], embedding_dim, padding_idx=0) for name in self.features
        )
        self.context_dim = int(context_dim)
        if self.context_dim:
            self.context = nn.Sequential(nn.LayerNorm(self.context_dim), nn.Dropout(context_dropout),
                                         nn.Linear(self.context_dim, embedding_dim))
        self.encoder = nn.LSTM(embedding_dim, hidden_size, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden_size, 1)

    def forward(self, features: Tensor, states: Tensor | None = None) -> Tensor:
        """``features`` ``Long[B, L, F]`` (channels in ``self.features`` order) and, for a scorer with
        ``context_dim``, ``states`` ``Float[B, L, context_dim]`` → logits ``Float[B, L]``."""
        if features.shape[0] == 0 or features.shape[1] == 0:
            return torch.zeros(features.shape[:2], device=features.device)
        embedded = sum(embedding(features[..., i]) for i, embedding in enumerate(self.embeddings))
        if self.context_dim:
            if states is None or states.shape[-1] != self.context_dim:
                raise PolicyError(f"this scorer reads {self.context_dim} contextual channels per token, got "
                                  f"{None if states is None else states.shape[-1]}")
            embedded = embedded + self.context(states.to(embedded.dtype))
        featured = (features != 0).any(-1)
        positions = torch.arange(features.shape[1], device=features.device)
        lengths = torch.where(featured, positions + 1, 0).amax(1).clamp(min=1)
        packed = nn.utils.rnn.pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        hidden, _ = self.encoder(packed)
        hidden, _ = nn.utils.rnn.pad_packed_sequence(hidden, batch_first=True, total_length=features.shape[1])
        return self.head(hidden).squeeze(-1)

    def member_logits(self, features: Tensor, states: Tensor | None = None) -> Tensor:
        """The logits as a one-member ensemble's, ``Float[1, B, L]``."""
        return self(features, states)[None]

    @property
    def members(self) -> tuple[TokenScorer, ...]:
        return (self,)


class ScorerEnsemble(nn.Module):
    """The mean logit of several :class:`TokenScorer` of the same features and context (a seed ensemble).

    Each member is trained on its own loss (:meth:`member_logits`), so the members are independent models
    that saw the same batches; their mean ranks tokens with less of any one seed's noise.
    """

    def __init__(self, members: Sequence[TokenScorer]) -> None:
        super().__init__()
        if len(members) < 2:
            raise PolicyError(f"a scorer ensemble needs at least 2 members, got {len(members)}")
        first = members[0]
        if any(m.features != first.features or m.context_dim != first.context_dim for m in members):
            raise PolicyError("the members of a scorer ensemble must read the same features and contextual states")
        self.scorers = nn.ModuleList(members)

    @property
    def members(self) -> tuple[TokenScorer, ...]:
        return tuple(self.scorers)

    @property
    def features(self) -> tuple[str, ...]:
        return self.scorers[0].features

    @property
    def context_dim(self) -> int:
        return self.scorers[0].context_dim

    def member_logits(self, features: Tensor, states: Tensor | None = None) -> Tensor:
        """Every member's logits, ``Float[M, B, L]``."""
        return torch.stack([member(features, states) for member in self.scorers])

    def forward(self, features: Tensor, states: Tensor | None = None) -> Tensor:
        return self.member_logits(features, states).mean(0)


Scorer = TokenScorer | ScorerEnsemble


class LearnedPolicy:
    """Masks the tokens a trained :class:`TokenScorer` rates highest.

    Args:
        rate: fraction of maskable tokens to mask per row, in (0, 1].
        features: the feature names the scorer reads (a subset of :data:`.features.FEATURES`;
            default :data:`.features.DEFAULT_FEATURES`).
        embedding_dim: the scorer's feature embedding size.
        hidden_size: the scorer's hidden size.
        sampling: ``"gumbel"`` (Gumbel top-k: varied masks that follow the scores) or
            ``"topk"`` (always the highest-scoring tokens).
        temperature: divides the logits before Gumbel sampling; lower is greedier.
        seed: initialises the scorer's weights (an untrained policy is a seeded random scorer).
        scorer: trained weights to use instead of a fresh scorer.
        context: the contextual states it also reads (:class:`.context.ContextSpec`, or a mapping of its
            fields; ``None``: word features only). Batches must then carry ``states`` of ``context.dim``
            channels, from the encoder the policy was trained with.
        context_dropout: dropout on the states while training.
        members: scorers in the seed ensemble (1: one scorer); masks follow their mean logit. Drawn in turn from
            ``seed``, so the first member is the one-scorer policy's scorer.
    """

    def __init__(
        self,
        rate: float = 0.15,
        features: Sequence[str] = DEFAULT_FEATURES,
        embedding_dim: int = 32,
        hidden_size: int = 32,
        sampling: Sampling = "gumbel",
        temperature: float = 0.3,
        seed: int = 0,
        scorer: Scorer | None = None,
        context: ContextSpec | Mapping[str, Any] | None = None,
        context_dropout: float = 0.1,
        members: int = 1,
    ) -> None:
        self.rate = check_rate(rate)
        self.context = ContextSpec.of(context)
        if not 0.0 <= float(context_dropout) < 1.0:
            raise PolicyError(f"learned policy context_dropout must be in [0, 1), got {context_dropout}")
        if sampling not in ("gumbel", "topk"):
            raise PolicyError(f"learned policy sampling must be 'gumbel' or 'topk', got {sampling!r}")
        if not temperature > 0:
            raise PolicyError(f"learned policy temperature must be > 0, got {temperature}")
        if not isinstance(members, int) or isinstance(members, bool) or members < 1:
            raise PolicyError(f"learned policy members must be a positive number of scorers, got {members!r}")
        self.sampling, self.temperature = sampling, float(temperature)
        if scorer is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                scorers = [TokenScorer(features, embedding_dim, hidden_size, self.context.dim if self.context else 0,
                                       float(context_dropout)) for _ in range(members)]
            scorer = scorers[0] if members == 1 else ScorerEnsemble(scorers)
        expected = self.context.dim if self.context else 0
        if scorer.context_dim != expected:
            raise PolicyError(f"the scorer reads {scorer.context_dim} contextual channels but the policy's context "
                              f"gives {expected}; build them with the same context")
        self.scorer = scorer
        self.source: dict | None = None  # where a loaded policy came from (set by the artifact loader)

    @property
    def features(self) -> tuple[str, ...]:
        return self.scorer.features

    @property
    def members(self) -> int:
        return len(self.scorer.members)

    def logits(self, batch: TokenBatch) -> Tensor:
        """Differentiable masking logits ``Float[B, L]`` (an ensemble's: its members' mean); ``-inf`` where a token
        is not maskable."""
        return self.member_logits(batch).mean(0)

    def member_logits(self, batch: TokenBatch) -> Tensor:
        """Each ensemble member's differentiable logits ``Float[M, B, L]`` (``M`` = 1 for one scorer), ``-inf``
        where a token is not maskable: what each member is trained on."""
        self.scorer.to(batch.input_ids.device)
        scores = self.scorer.member_logits(self._channels(batch), self._states(batch))
        return scores.masked_fill(~batch.maskable, float("-inf"))

    @property
    def context_dropout(self) -> float:
        first = self.scorer.members[0]
        return float(first.context[1].p) if first.context_dim else 0.1

    def _states(self, batch: TokenBatch) -> Tensor | None:
        """The batch's contextual states, checked against the policy's context; None for a policy without one."""
        if self.context is None:
            return None
        if batch.states is None:
            raise PolicyError(
                f"the learned policy reads contextual states of encoder {self.context.encoder!r} (layers "
                f"{list(self.context.layers)}), but this batch has none; encode the text with them "
                "(maskpolicy.meta.context.state_source(policy) as FeatureSpec.context, or MaskingCollator, which "
                "computes them) so TokenBatch.states is set")
        if batch.states.shape[-1] != self.context.dim:
            raise PolicyError(f"the learned policy reads {self.context.dim} contextual channels per token (encoder "
                              f"{self.context.encoder!r}, layers {list(self.context.layers)}); the batch's states "
                              f"have {batch.states.shape[-1]}")
        return batch.states

    def select(self, batch: TokenBatch, generator: torch.Generator) -> Tensor:
        with torch.no_grad():
            logits = self.logits(batch)
        if self.sampling == "gumbel":
            uniform = torch.rand(logits.shape, generator=generator, device=logits.device)
            logits = logits / self.temperature - torch.log(-torch.log(uniform.clamp(min=1e-20)))
        return select_count(-logits, batch.maskable, budget(batch.maskable, self.rate))

    def _channels(self, batch: TokenBatch) -> Tensor:
        """The batch's feature channels in the scorer's order."""
        if batch.features is None:
            raise PolicyError(
                "the learned policy reads word features, but this batch has none; encode text with "
                "features (maskpolicy.tasks.features) so TokenBatch.features is set"
            )
        missing = [name for name in self.features if name not in batch.feature_names]
        if missing:
            raise PolicyError(
                f"the learned policy needs features {list(self.features)}; the batch lacks {missing} "
                f"(it has {list(batch.feature_names)})"
            )
        index = torch.tensor([batch.feature_names.index(name) for name in self.features], device=batch.features.device)
        channels = batch.features.index_select(2, index)
        sizes = torch.tensor([FEATURE_SIZES[name] for name in self.features], device=channels.device)
        # an id past its embedding would fail deep inside torch (IndexError, or a device assert on a GPU)
        outside = ((channels < 0) | (channels >= sizes)).flatten(0, 1).any(0)
        if outside.any():
            names = [name for name, bad in zip(self.features, outside.tolist(), strict=True) if bad]
            raise PolicyError(f"feature ids out of range for {names} (ids must be in [0, size): "
                              f"{ {name: FEATURE_SIZES[name] for name in names} }); encode the text with this "
                              "maskpolicy's features (maskpolicy.tasks.text.features)")
        return channels
