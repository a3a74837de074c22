"""Hypergradient of a downstream loss w.r.t. a masking policy, through K differentiable inner SGD steps.

The meta-learned masking objective (Ye et al., EMNLP 2021) unrolls a short inner loop on
the language model. Step k takes one masked-LM batch and per-token weights ``w_k`` that
the policy produced (soft masking scores), and moves the parameters::

    L_k(θ, w_k) = Σ_j w_kj · CE_kj(θ) / #{j : label_kj ≠ -100}
    θ_{k+1}     = θ_k − α ∇_θ L_k(θ_k, w_k)          k = 0 … K−1

The outer loss is the model's own loss on a downstream batch (e.g. cloze QA) at θ_K; its
gradient w.r.t. the policy parameters flows back through every update (second order).

``first_order=True`` treats the inner gradients as constants *in θ* but keeps their
dependence on the weights: ``θ_{k+1} = θ_k − α G_k`` with ``G_k = ∇_θ L_k(stop_grad(θ_k), w_k)``.
Dropping the weights as well would make the policy gradient zero. Because ``L_k`` is linear
in ``w_k``, the result has a closed form that needs no double backward::

    ∂L_out/∂w_kj = −α / N_k · ⟨∇_θ CE_kj(θ_k), ∇_θ L_out(θ_K)⟩

computed for all tokens at once as one forward-mode JVP of the per-token losses at θ_k along
``∇_θ L_out(θ_K)``. It drops only the θ-Hessian terms of later steps, so for K = 1 it equals
the full hypergradient exactly.

Two engines compute the same quantity: ``"higher"`` (``higher.innerloop_ctx`` with its
differentiable SGD) and ``"torch_func"`` (``torch.func.functional_call`` over a dict of
parameters, ``torch.autograd.grad(..., create_graph=True)`` per step). The inner optimizer is
plain SGD in both: ``higher`` ships no differentiable AdamW.

Attention: double backward (and forward-mode AD) through PyTorch's fused scaled-dot-product
kernels is not implemented; on CPU a BERT built with ``attn_implementation="sdpa"`` raises
``derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented``
at the outer backward. Everything here therefore runs under
``sdpa_kernel(SDPBackend.MATH)``, whose composite kernel is differentiable to any order;
attention implementations other than ``eager`` and ``sdpa`` are refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import higher
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

Engine = Literal["higher", "torch_func"]
ENGINES: tuple[str, ...] = ("higher", "torch_func")
DIFFERENTIABLE_ATTENTION = ("eager", "sdpa")
IGNORE_INDEX = -100


@dataclass(frozen=True)
class InnerBatch:
    """One inner step's masked-LM batch, as a Hugging Face masked LM takes it, plus the policy's weights.

    Attributes:
        input_ids: ``Long[B, L]``, already corrupted (``[MASK]`` etc. at the labelled positions).
        attention_mask: ``Long[B, L]`` (1 = real token).
        labels: ``Long[B, L]``, the original id at labelled positions and -100 elsewhere.
        weights: ``Float[B, L]`` per-token loss weights, a differentiable function of the policy
            parameters; entries at unlabelled positions are ignored.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    weights: Tensor

    def inputs(self) -> dict[str, Tensor]:
        """The model's keyword inputs (no labels: the weighted loss is computed here)."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def n_labelled(self) -> Tensor:
        """Number of labelled positions, at least 1 so that a batch without any gives loss 0."""
        return (self.labels != IGNORE_INDEX).sum().clamp(min=1)


@dataclass(frozen=True)
class MetaStep:
    """Result of one hypergradient computation.

    Attributes:
        outer_loss: the downstream loss at the updated parameters θ_K.
        policy_grads: d outer_loss / d policy_params, one tensor per parameter, same shapes.
        inner_losses: the weighted inner loss of each step k, at θ_k.
    """

    outer_loss: float
    policy_grads: tuple[Tensor, ...]
    inner_losses: tuple[float, ...]


@dataclass
class _Unrolled:
    """What an engine hands back: the outer loss and, in first-order mode, d outer / d w_k per step."""

    outer_loss: Tensor
    inner_losses: list[Tensor]
    weight_grads: list[Tensor] | None


def hypergradient(
    model: nn.Module,
    policy_params: Sequence[Tensor],
    inner_batches: Sequence[InnerBatch],
    outer_batch: Mapping[str, Tensor],
    *,
    engine: Engine = "higher",
    inner_lr: float = 0.1,
    first_order: bool = False,
) -> MetaStep:
    """Gradient of the outer loss after K = len(inner_batches) weighted inner SGD steps w.r.t. ``policy_params``.

    Args:
        model: a masked LM called as ``model(input_ids=..., attention_mask=...)`` returning ``.logits``
            ``Float[B, L, V]``, and with ``labels=`` returning ``.loss`` (any Hugging Face masked LM).
            It is left untouched: its parameters, buffers and ``.grad`` fields are unchanged. Its
            current train/eval mode is used (dropout makes the engines' results differ by its noise).
        policy_params: the tensors the gradient is taken w.r.t. (e.g. ``list(policy.parameters())``).
        inner_batches: one ``InnerBatch`` per inner step; their ``weights`` must carry the autograd
            graph back to ``policy_params``.
        outer_batch: the downstream batch, keyword inputs of ``model`` including ``labels``.
        engine: ``"higher"`` or ``"torch_func"``; both give the same numbers up to rounding.
        inner_lr: SGD step size α of the inner loop (plain SGD, no momentum: ``higher`` has no AdamW).
        first_order: drop the θ-Hessian terms but keep the inner gradients' dependence on the weights
            (module docstring). Identical to the full gradient for K = 1, where it is ~10% slower (the
            JVP costs more than the double backward it replaces); for K > 1 its memory stays flat in K
            (one graph at a time, K parameter copies) where the full gradient's grows linearly, and it
            is ~20% faster at K = 4 (``benchmarks/meta_step.py``).

    Raises:
        ValueError: bad engine, K < 1, inner_lr ≤ 0, mis-shaped weights, weights without a graph,
            an outer batch without labels, or an attention implementation that cannot be
            differentiated twice.
    """
    _check_inputs(model, policy_params, inner_batches, outer_batch, engine, inner_lr)
    unroll = _unroll_higher if engine == "higher" else _unroll_torch_func
    with sdpa_kernel(SDPBackend.MATH):
        unrolled = unroll(model, inner_batches, outer_batch, inner_lr, first_order)
        grads = _policy_grads(unrolled, policy_params, inner_batches)
    return MetaStep(
        outer_loss=float(unrolled.outer_loss.detach()),
        policy_grads=grads,
        inner_losses=tuple(float(loss.detach()) for loss in unrolled.inner_losses),
    )


def token_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-token cross-entropy ``Float[B, L]`` from ``logits`` ``Float[B, L, V]``; 0 where ``labels`` is -100."""
    flat = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none", ignore_index=IGNORE_INDEX)
    return flat.view(labels.shape)


def weighted_inner_loss(logits: Tensor, batch: InnerBatch) -> Tensor:
    """Scalar Σ_j w_j · CE_j / #labelled for one inner batch; ``logits`` ``Float[B, L, V]``."""
    return (batch.weights * token_cross_entropy(logits, batch.labels)).sum() / batch.n_labelled()


# -- engines ----------------------------------------------------------------------------


def _unroll_higher(
    model: nn.Module, batches: Sequence[InnerBatch], outer_batch: Mapping[str, Tensor], lr: float, first_order: bool
) -> _Unrolled:
    """K steps of ``higher``'s differentiable SGD on a patched copy of ``model``, then the outer loss.

    First order runs ``higher`` untracked (plain gradients, detached fast weights) and recovers the
    weights' gradients by JVPs at the stored θ_k.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=lr)
    with higher.innerloop_ctx(model, optimizer, copy_initial_weights=True, track_higher_grads=not first_order) as (
        fmodel,
        diffopt,
    ):
        visited, inner_losses = [], []
        for batch in batches:
            visited.append(tuple(fmodel.fast_params))
            loss = weighted_inner_loss(fmodel(**batch.inputs()).logits, batch)
            diffopt.step(loss)
            inner_losses.append(loss)
        outer_loss = _outer_loss(fmodel(**outer_batch))
        if not first_order:
            return _Unrolled(outer_loss, inner_losses, None)
        final = tuple(fmodel.fast_params)
        direction = _grads_or_zeros(outer_loss, final)

        def logits_at(params: tuple[Tensor, ...], batch: InnerBatch) -> Tensor:
            return fmodel(**batch.inputs(), params=list(params)).logits

        weight_grads = _first_order_weight_grads(logits_at, visited, direction, batches, lr)
    return _Unrolled(outer_loss, inner_losses, weight_grads)


def _unroll_torch_func(
    model: nn.Module, batches: Sequence[InnerBatch], outer_batch: Mapping[str, Tensor], lr: float, first_order: bool
) -> _Unrolled:
    """K functional SGD steps over a dict of parameters with ``torch.func.functional_call``, then the outer loss.

    θ_0 are fresh leaves sharing the model's storage; every update is out of place, so the model is
    never written. Frozen parameters are left out of the dict and read from the model.
    """
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    module_params = dict(model.named_parameters())
    params = tuple(module_params[name].detach().requires_grad_() for name in names)

    def call(params: tuple[Tensor, ...], inputs: Mapping[str, Tensor]):
        return functional_call(model, dict(zip(names, params, strict=True)), args=(), kwargs=dict(inputs))

    def logits_at(params: tuple[Tensor, ...], batch: InnerBatch) -> Tensor:
        return call(params, batch.inputs()).logits

    visited, inner_losses = [], []
    for batch in batches:
        visited.append(params)
        loss = weighted_inner_loss(logits_at(params, batch), batch)
        grads = torch.autograd.grad(loss, params, create_graph=not first_order, materialize_grads=True)
        params = tuple(p - lr * g for p, g in zip(params, grads, strict=True))
        if first_order:
            params = tuple(p.detach().requires_grad_() for p in params)
        inner_losses.append(loss)
    outer_loss = _outer_loss(call(params, outer_batch))
    if not first_order:
        return _Unrolled(outer_loss, inner_losses, None)
    direction = _grads_or_zeros(outer_loss, params)
    weight_grads = _first_order_weight_grads(logits_at, visited, direction, batches, lr)
    return _Unrolled(outer_loss, inner_losses, weight_grads)


# -- shared pieces ------------------------------------------------------------------------


def _outer_loss(output) -> Tensor:
    """The scalar ``.loss`` of a model output; the outer batch must hold labels for it to exist."""
    loss = getattr(output, "loss", None)
    if loss is None:
        raise ValueError("the model returned no loss on outer_batch; give it 'labels' (-100 at unscored positions)")
    return loss


def _grads_or_zeros(loss: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """∇ loss w.r.t. each of ``params`` (zeros where unused or frozen), detached."""
    live = [p for p in params if p.requires_grad]
    grads = iter(torch.autograd.grad(loss, live, materialize_grads=True))
    return tuple(next(grads) if p.requires_grad else torch.zeros_like(p) for p in params)


def _first_order_weight_grads(
    logits_at: Callable[[tuple[Tensor, ...], InnerBatch], Tensor],
    visited: Sequence[tuple[Tensor, ...]],
    direction: tuple[Tensor, ...],
    batches: Sequence[InnerBatch],
    lr: float,
) -> list[Tensor]:
    """First-order d outer / d w_k ``Float[B, L]`` per step: −α/N_k · ⟨∇_θ CE_kj(θ_k), ∇_θ L_out⟩, one JVP each.

    ``visited[k]`` holds θ_k; ``direction`` is ∇_θ L_out(θ_K) in the same order.
    """
    grads = []
    for params, batch in zip(visited, batches, strict=True):
        primals = tuple(p.detach() for p in params)
        _, tangent = jvp(lambda *ps, b=batch: token_cross_entropy(logits_at(ps, b), b.labels), primals, direction)
        grads.append(-lr * tangent / batch.n_labelled())
    return grads


def _policy_grads(
    unrolled: _Unrolled, policy_params: Sequence[Tensor], batches: Sequence[InnerBatch]
) -> tuple[Tensor, ...]:
    """d outer / d policy_params, zeros for parameters the weights do not depend on."""
    if unrolled.weight_grads is None:
        outputs, cotangents = [unrolled.outer_loss], None
    else:
        pairs = [(b.weights, g) for b, g in zip(batches, unrolled.weight_grads, strict=True) if b.weights.requires_grad]
        outputs, cotangents = [w for w, _ in pairs], [g.to(w.dtype) for w, g in pairs]
    grads = torch.autograd.grad(outputs, list(policy_params), grad_outputs=cotangents, allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g.detach() for p, g in zip(policy_params, grads, strict=True))


def _check_inputs(
    model: nn.Module,
    policy_params: Sequence[Tensor],
    batches: Sequence[InnerBatch],
    outer_batch: Mapping[str, Tensor],
    engine: str,
    inner_lr: float,
) -> None:
    """Raise ValueError with the fix for every input the meta step cannot use."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(map(repr, ENGINES))}")
    if len(batches) < 1:
        raise ValueError("need at least one inner batch (K ≥ 1 inner steps)")
    if not (isinstance(inner_lr, int | float) and math.isfinite(inner_lr) and inner_lr > 0):
        raise ValueError(f"inner_lr must be a finite number > 0, got {inner_lr!r}")
    if not policy_params or not all(p.requires_grad for p in policy_params):
        raise ValueError("policy_params must be a non-empty sequence of tensors that require grad")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters for the inner loop to update")
    if "labels" not in outer_batch:
        raise ValueError("outer_batch needs 'labels' (-100 at unscored positions) for the model to return a loss")
    for k, batch in enumerate(batches):
        _check_batch(k, batch)
    if not any(b.weights.requires_grad for b in batches):
        raise ValueError(
            "no inner batch's weights carry an autograd graph; compute them from policy_params outside "
            "torch.no_grad() and without .detach()"
        )
    _check_attention(model)


def _check_batch(k: int, batch: InnerBatch) -> None:
    """Shapes and dtypes of inner batch ``k``."""
    if batch.weights.shape != batch.labels.shape:
        raise ValueError(
            f"inner batch {k}: weights shape {tuple(batch.weights.shape)} must equal labels shape "
            f"{tuple(batch.labels.shape)} (one weight per token)"
        )
    if batch.input_ids.shape != batch.labels.shape:
        raise ValueError(
            f"inner batch {k}: input_ids shape {tuple(batch.input_ids.shape)} must equal labels shape "
            f"{tuple(batch.labels.shape)}"
        )
    if not batch.weights.is_floating_point():
        raise ValueError(f"inner batch {k}: weights must be a floating-point tensor, got {batch.weights.dtype}")


def _check_attention(model: nn.Module) -> None:
    """Refuse attention kernels that cannot be differentiated twice (flash-attention-2, flex, …)."""
    config = getattr(model, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    if implementation is not None and implementation not in DIFFERENTIABLE_ATTENTION:
        raise ValueError(
            f"attention implementation {implementation!r} cannot be differentiated twice for meta-learning; "
            "build the model with model.attn_implementation=eager (or sdpa, which runs on the math backend here)"
        )
