"""A discrete hidden Markov model with known parameters: a tractable task for the marginal-likelihood estimator.

K hidden states, V symbols, sequences of T symbols. The initial distribution,
transition and emission rows are drawn from a symmetric Dirichlet(``concentration``)
by a generator seeded with ``seed`` alone, floored away from zero and renormalised.
``log p(x)`` comes from the forward algorithm and ``log p(x_j | x_observed)`` from
forward-backward with the masked positions treated as missing, both in log space
and exact to float64 rounding.

The module also holds a tiny BERT masked LM over the same symbols and a training
loop with the cumulative masking objective, to measure how far a learned model's
estimate of the log marginal likelihood lands from the exact one (the gap itself is
computed where ``maskpolicy.meta`` may be imported: tests and ``benchmarks/hmm_gap.py``).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch
from torch import Tensor
from transformers import AutoModelForMaskedLM, BertConfig, PreTrainedModel

from maskpolicy.tasks.base import TaskError

PROBABILITY_FLOOR = 1e-3
MAX_STATES = 1000
MAX_SYMBOLS = 100_000


class HMMTask:
    """A seeded HMM and ``n_sequences`` sequences sampled from it; a ``TractableTask``.

    Args:
        n_states: number of hidden states K.
        n_symbols: number of observed symbols V (ids ``0 … V−1``).
        length: symbols per sequence T.
        n_sequences: sequences in ``data()``.
        seed: seeds the parameters and, through them, the data.
        concentration: of the symmetric Dirichlet each probability row is drawn from;
            small values give peaked rows (a more predictable chain).
        save_data: ``maskpolicy-score`` writes the data and true parameters to ``data.npz``.
    """

    name = "hmm"

    def __init__(
        self,
        n_states: int = 3,
        n_symbols: int = 6,
        length: int = 8,
        n_sequences: int = 200,
        seed: int = 0,
        concentration: float = 0.5,
        save_data: bool = False,
    ) -> None:
        _check_count("n_states", n_states, 1, MAX_STATES)
        _check_count("n_symbols", n_symbols, 2, MAX_SYMBOLS)
        _check_count("length", length, 1, None)
        _check_count("n_sequences", n_sequences, 1, None)
        if not isinstance(seed, Integral) or isinstance(seed, bool) or seed < 0:
            raise TaskError(f"hmm seed must be a non-negative integer, got {seed!r}")
        if not isinstance(concentration, Real) or not math.isfinite(concentration) or concentration <= 0:
            raise TaskError(
                f"hmm concentration must be a finite number > 0 (the Dirichlet parameter of every probability row), "
                f"got {concentration!r}; 0.5 gives peaked rows, 1.0 uniform-on-the-simplex ones"
            )
        self.n_states, self.n_symbols, self.length = int(n_states), int(n_symbols), int(length)
        self.n_sequences, self.seed, self.concentration = int(n_sequences), int(seed), float(concentration)
        self.save_data = bool(save_data)
        generator = torch.Generator().manual_seed(self.seed)
        self.initial = dirichlet_rows(1, self.n_states, self.concentration, generator)[0]
        self.transition = dirichlet_rows(self.n_states, self.n_states, self.concentration, generator)
        self.emission = dirichlet_rows(self.n_states, self.n_symbols, self.concentration, generator)
        data_seed = int(torch.randint(2**62, (1,), generator=generator))
        self._data = self.sample(self.n_sequences, torch.Generator().manual_seed(data_seed))

    # -- the TractableTask protocol ------------------------------------------------

    def data(self) -> Tensor:
        """The task's sequences, ``Long[n_sequences, length]`` (a copy)."""
        return self._data.clone()

    def log_likelihood(self, data: Tensor, observed: Tensor | None = None) -> Tensor:
        """Exact ``log p(x_O)`` per row of ``Long[B, T]`` (any T ≥ 1) by the forward algorithm, ``Float64[B]``.

        ``observed`` ``Bool[B, T]`` is O (every position when ``None``); the other positions
        are missing observations, summed out (emission factor 1). Nothing observed gives 0.
        """
        data = self._check_symbols(data, "data")
        observed = torch.ones_like(data, dtype=torch.bool) if observed is None else observed
        self._check_mask(observed, data, "observed")
        log_emit = self._log_emission(data, ~observed)
        return (self._forward(log_emit)[:, -1] + log_emit[:, -1]).logsumexp(-1)

    def masked_log_probs(self, inputs: Tensor, masks: Tensor) -> Tensor:
        """Exact ``log p(x_j | x_{not M})`` at every masked ``j`` by forward-backward, ``Float64[N, T]``.

        ``inputs`` ``Long[N, T]``, ``masks`` ``Bool[N, T]``. Masked positions are missing
        observations (emission factor 1), so at a masked ``j`` forward × backward is
        ``p(z_j, x_{not M})``: the posterior over the hidden state there, which then emits
        ``x_j``. Every unmasked position is observed, whether the estimator scores it or not.
        Unmasked entries are 0.
        """
        inputs = self._check_symbols(inputs, "inputs")
        self._check_mask(masks, inputs, "masks")
        log_emit = self._log_emission(inputs, masks)
        joint = self._forward(log_emit) + log_emit + self._backward(log_emit)
        posterior = joint - joint.logsumexp(-1, keepdim=True)
        log_probs = (posterior + self.emission.log().T[inputs]).logsumexp(-1)
        return torch.where(masks, log_probs, 0.0)

    def arrays(self) -> dict[str, np.ndarray]:
        """The data and the true parameters, for ``data.npz``."""
        return {
            "data": self._data.numpy().copy(),
            "initial": self.initial.numpy().copy(),
            "transition": self.transition.numpy().copy(),
            "emission": self.emission.numpy().copy(),
        }

    # -- sampling ------------------------------------------------------------------

    def sample(self, n: int, generator: torch.Generator, length: int | None = None) -> Tensor:
        """``n`` fresh sequences from the HMM, ``Long[n, length]`` (the task's length when ``None``)."""
        _check_count("n", n, 0, None)
        length = self.length if length is None else length
        _check_count("length", length, 1, None)
        symbols = torch.empty(n, length, dtype=torch.long)
        if n == 0:
            return symbols
        state = _draw(self.initial.expand(n, -1), generator)
        # The chain is sequential: each state depends on the previous one, so time is a loop.
        for t in range(length):
            symbols[:, t] = _draw(self.emission[state], generator)
            state = _draw(self.transition[state], generator)
        return symbols

    # -- inference -----------------------------------------------------------------

    def _log_emission(self, symbols: Tensor, missing: Tensor) -> Tensor:
        """``Float64[B, T, K]`` log emission factors, 0 where ``missing`` ``Bool[B, T]``."""
        log_emit = self.emission.log().T[symbols]
        return log_emit.masked_fill(missing[..., None], 0.0)

    def _forward(self, log_emit: Tensor) -> Tensor:
        """``log p(x_{<t} observed, z_t = k)`` (emission at t excluded), ``Float64[B, T, K]``.

        ``log_emit`` ``Float64[B, T, K]`` are the log emission factors (0 where missing).
        """
        log_transition = self.transition.log()
        alpha = torch.empty_like(log_emit)
        message = self.initial.log().expand(len(log_emit), -1)
        for t in range(log_emit.shape[1]):
            alpha[:, t] = message
            message = ((message + log_emit[:, t])[:, :, None] + log_transition).logsumexp(1)
        return alpha

    def _backward(self, log_emit: Tensor) -> Tensor:
        """``log p(x_{>t} observed | z_t = k)``, ``Float64[B, T, K]`` from ``log_emit`` ``[B, T, K]``."""
        log_transition = self.transition.log()
        beta = torch.empty_like(log_emit)
        message = torch.zeros_like(log_emit[:, 0])
        for t in range(log_emit.shape[1] - 1, -1, -1):
            beta[:, t] = message
            message = (log_transition + (log_emit[:, t] + message)[:, None, :]).logsumexp(2)
        return beta

    @staticmethod
    def _check_mask(mask: Tensor, symbols: Tensor, what: str) -> None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != symbols.shape:
            found = f"{mask.dtype} {list(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
            raise TaskError(f"{what} must be Bool{list(symbols.shape)} like the symbols, got {found}")

    def _check_symbols(self, symbols: Tensor, what: str) -> Tensor:
        """``symbols`` as ``Long[B, T]`` after checking it holds integer ids in ``[0, V)``."""
        if not isinstance(symbols, Tensor) or symbols.dim() != 2 or symbols.shape[1] == 0:
            found = list(symbols.shape) if isinstance(symbols, Tensor) else type(symbols).__name__
            raise TaskError(f"hmm {what} must be a [batch, length] tensor of symbol ids with length ≥ 1, got {found}")
        if symbols.dtype.is_floating_point or symbols.dtype.is_complex or symbols.dtype == torch.bool:
            raise TaskError(
                f"hmm {what} must hold integer symbol ids (torch.long), got {symbols.dtype}; "
                "convert with .long() only if the values are whole numbers"
            )
        if symbols.numel() and (int(symbols.min()) < 0 or int(symbols.max()) >= self.n_symbols):
            raise TaskError(
                f"hmm {what} holds symbols in [{int(symbols.min())}, {int(symbols.max())}] but the model has "
                f"n_symbols={self.n_symbols} (ids 0 … {self.n_symbols - 1}); a mask token id is not a symbol"
            )
        return symbols.long()


def _check_count(knob: str, value: object, low: int, high: int | None) -> None:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f"≥ {low}" if high is None else f"in [{low}, {high}]"
        raise TaskError(f"hmm {knob} must be an integer {bound}, got {value!r}")


def _draw(probabilities: Tensor, generator: torch.Generator) -> Tensor:
    """One category per row of ``Float64[n, C]`` probabilities, ``Long[n]``."""
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(1)


def dirichlet_rows(rows: int, size: int, concentration: float, generator: torch.Generator) -> Tensor:
    """``Float64[rows, size]`` rows from a symmetric Dirichlet, floored at ``PROBABILITY_FLOOR`` and renormalised.

    The floor keeps every probability positive, so no log-probability is −inf.
    """
    gammas = _gamma(concentration, rows * size, generator).view(rows, size)
    probabilities = gammas / gammas.sum(1, keepdim=True).clamp(min=torch.finfo(torch.float64).tiny)
    probabilities = probabilities + PROBABILITY_FLOOR
    return probabilities / probabilities.sum(1, keepdim=True)


def _gamma(shape: float, n: int, generator: torch.Generator) -> Tensor:
    """``Float64[n]`` Gamma(shape, 1) draws from ``generator`` (Marsaglia and Tsang's method).

    For shape < 1 a Gamma(shape + 1) draw is scaled by U^(1/shape). torch's own gamma
    sampler takes no generator, hence this one.
    """
    boosted = shape + 1.0 if shape < 1.0 else shape
    d = boosted - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    draws = torch.empty(n, dtype=torch.float64)
    pending = torch.arange(n)
    while len(pending):
        z = torch.randn(len(pending), generator=generator, dtype=torch.float64)
        u = torch.rand(len(pending), generator=generator, dtype=torch.float64)
        v = (1.0 + c * z) ** 3
        accept = (v > 0) & (u.log() < 0.5 * z**2 + d - d * v + d * v.clamp(min=1e-300).log())
        draws[pending[accept]] = d * v[accept]
        pending = pending[~accept]
    if shape < 1.0:
        draws *= torch.rand(n, generator=generator, dtype=torch.float64) ** (1.0 / shape)
    return draws


# -- a tiny masked LM over the HMM's symbols ----------------------------------------


def tiny_masked_lm(
    n_symbols: int,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
    max_length: int = 64,
    dropout: float = 0.0,
) -> PreTrainedModel:
    """A randomly initialised BERT masked LM over ``n_symbols`` symbols plus a mask token (id ``n_symbols``).

    No padding id (every row is a full sequence) and one token type. The
    initialisation is seeded by ``seed`` without touching torch's global random state.
    """
    _check_count("n_symbols", n_symbols, 2, MAX_SYMBOLS)
    _check_count("max_length", max_length, 1, None)
    if hidden % heads:
        raise TaskError(f"tiny masked LM: hidden={hidden} must be a multiple of heads={heads}")
    config = BertConfig(
        vocab_size=n_symbols + 1,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=max_length,
        type_vocab_size=1,
        pad_token_id=None,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForMaskedLM.from_config(config, attn_implementation="eager")


def cumulative_masks(rows: int, length: int, generator: torch.Generator) -> Tensor:
    """``Bool[rows, length]``: per row, m uniform in ``1 … length``, then a uniform subset of m positions."""
    sizes = torch.randint(1, length + 1, (rows, 1), generator=generator)
    ranks = torch.rand(rows, length, generator=generator).argsort(1).argsort(1)
    return ranks < sizes


def train_masked_lm(
    model: PreTrainedModel,
    sequences: Tensor,
    steps: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    generator: torch.Generator | None = None,
    mask_token_id: int | None = None,
) -> list[float]:
    """Trains ``model`` in place on ``sequences`` ``Long[B, T]`` with the cumulative masking objective.

    Each step draws ``batch_size`` rows with replacement and masks them with
    :func:`cumulative_masks`. The loss averages cross-entropy over each row's masked
    positions, then over rows: the negative one-sample estimate of Σ_m S_m / T, so the
    conditionals are trained for every rate, which the marginal-likelihood identity
    needs. AdamW, constant ``lr``. ``mask_token_id`` defaults to the last vocabulary
    id (as :func:`tiny_masked_lm` builds). Returns the loss of every step.
    """
    if not isinstance(sequences, Tensor) or sequences.dim() != 2 or sequences.dtype != torch.long:
        found = f"{sequences.dtype} {list(sequences.shape)}" if isinstance(sequences, Tensor) else type(sequences)
        raise TaskError(f"train_masked_lm needs sequences as Long[batch, length], got {found}")
    _check_count("steps", steps, 0, None)
    _check_count("batch_size", batch_size, 1, None)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    mask_token_id = model.config.vocab_size - 1 if mask_token_id is None else mask_token_id
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    was_training = model.training
    model.train()
    losses = []
    try:
        for _ in range(steps):
            batch = sequences[torch.randint(len(sequences), (batch_size,), generator=generator)]
            masks = cumulative_masks(batch_size, batch.shape[1], generator)
            loss = _masked_loss(model, batch.to(device), masks.to(device), mask_token_id)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        model.train(was_training)
    return losses


def _masked_loss(model: PreTrainedModel, batch: Tensor, masks: Tensor, mask_token_id: int) -> Tensor:
    """Mean over rows of the mean cross-entropy at each row's masked positions; ``batch``, ``masks`` ``[N, T]``."""
    logits = model(input_ids=batch.masked_fill(masks, mask_token_id)).logits
    token_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch, reduction="none")
    return ((token_loss * masks).sum(1) / masks.sum(1)).mean()
