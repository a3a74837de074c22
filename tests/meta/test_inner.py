"""Hypergradients through K inner SGD steps: engines agree, match finite differences, leave the model alone."""

from __future__ import annotations

import copy

import higher
import pytest
import torch
from torch import Tensor, nn
from transformers import BertConfig, BertForMaskedLM

from maskpolicy.meta.learning.inner import ENGINES, InnerBatch, MetaStep, hypergradient, weighted_inner_loss

VOCAB, ROWS, LENGTH, FEATURES, MASK_ID = 50, 3, 10, 4, 4
LR = 0.5

# torch's forward-AD decompositions (loaded on the first JVP of first-order mode) still call torch.jit.script.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def tiny_bert(attn_implementation: str = "eager", seed: int = 0) -> BertForMaskedLM:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, hidden_dropout_prob=0, attention_probs_dropout_prob=0,
        attn_implementation=attn_implementation,
    )
    return BertForMaskedLM(config)


def toy_policy(seed: int = 1) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(FEATURES, 1)


def masked_batch(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(corrupted ids, attention mask, labels, token features ``Float[B, L, FEATURES]``), ~30% labelled."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (ROWS, LENGTH), generator=generator)
    chosen = torch.rand(ROWS, LENGTH, generator=generator) < 0.3
    chosen[:, 1] = True
    attention_mask = torch.ones_like(ids)
    attention_mask[0, -2:] = 0
    chosen &= attention_mask.bool()
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    corrupted = torch.where(chosen, torch.full_like(ids, MASK_ID), ids)
    return corrupted, attention_mask, labels, torch.randn(ROWS, LENGTH, FEATURES, generator=generator)


def inner_batches(policy: nn.Module, k: int) -> list[InnerBatch]:
    """K batches whose weights = sigmoid(policy(features)), so they carry the policy's graph."""
    batches = []
    for seed in range(k):
        ids, attention_mask, labels, features = masked_batch(seed)
        weights = torch.sigmoid(policy(features.to(policy.weight.dtype)).squeeze(-1))
        batches.append(InnerBatch(ids, attention_mask, labels, weights))
    return batches


def outer_batch() -> dict[str, Tensor]:
    ids, attention_mask, labels, _ = masked_batch(100)
    return {"input_ids": ids, "attention_mask": attention_mask, "labels": labels}


def flat(step: MetaStep) -> Tensor:
    return torch.cat([g.flatten() for g in step.policy_grads])


def run(model, policy, k: int, **options) -> MetaStep:
    return hypergradient(model, list(policy.parameters()), inner_batches(policy, k), outer_batch(), inner_lr=LR,
                         **options)


def relative(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def reference_outer_loss(model: nn.Module, policy: nn.Module, k: int) -> float:
    """Outer loss after K plain in-place SGD steps on a deep copy: an independent forward for finite differences."""
    clone = copy.deepcopy(model)
    params = [p for p in clone.parameters() if p.requires_grad]
    with torch.no_grad():
        batches = inner_batches(policy, k)
    for batch in batches:
        loss = weighted_inner_loss(clone(**batch.inputs()).logits, batch)
        grads = torch.autograd.grad(loss, params, materialize_grads=True)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= LR * g
    with torch.no_grad():
        return float(clone(**outer_batch()).loss)


@pytest.mark.parametrize("k", [1, 2])
def test_engines_agree(k):
    model, policy = tiny_bert(), toy_policy()
    by_engine = {engine: run(model, policy, k, engine=engine) for engine in ENGINES}
    first, second = by_engine["higher"], by_engine["torch_func"]
    assert relative(flat(second), flat(first)) < 1e-5
    assert second.outer_loss == pytest.approx(first.outer_loss, rel=1e-6)
    assert len(first.inner_losses) == k
    assert second.inner_losses == pytest.approx(first.inner_losses, rel=1e-6)
    assert [g.shape for g in first.policy_grads] == [p.shape for p in policy.parameters()]


@pytest.mark.parametrize("engine", ENGINES)
def test_matches_finite_differences_in_float64(engine):
    model, policy = tiny_bert().double(), toy_policy().double()
    k = 2
    gradient = flat(run(model, policy, k, engine=engine))
    assert gradient.norm() > 0
    generator = torch.Generator().manual_seed(7)
    base = nn.utils.parameters_to_vector(policy.parameters()).detach()
    eps = 1e-5
    for _ in range(2):
        direction = torch.randn(base.shape, generator=generator, dtype=base.dtype)
        losses = []
        for sign in (1, -1):
            nn.utils.vector_to_parameters(base + sign * eps * direction, policy.parameters())
            losses.append(reference_outer_loss(model, policy, k))
        nn.utils.vector_to_parameters(base, policy.parameters())
        numeric = (losses[0] - losses[1]) / (2 * eps)
        analytic = float(gradient @ direction)
        assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("engine", ENGINES)
def test_first_order_equals_full_for_one_step(engine):
    model, policy = tiny_bert(), toy_policy()
    full = flat(run(model, policy, 1, engine=engine))
    first = flat(run(model, policy, 1, engine=engine, first_order=True))
    assert relative(first, full) < 1e-5


def test_first_order_for_two_steps_drops_hessian_terms_but_points_the_same_way():
    model, policy = tiny_bert(), toy_policy()
    full = flat(run(model, policy, 2))
    by_engine = [flat(run(model, policy, 2, engine=engine, first_order=True)) for engine in ENGINES]
    assert relative(by_engine[1], by_engine[0]) < 1e-5
    assert relative(by_engine[0], full) > 1e-3
    assert torch.cosine_similarity(by_engine[0], full, dim=0) > 0


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("first_order", [False, True])
def test_model_is_left_untouched(engine, first_order):
    model, policy = tiny_bert(), toy_policy()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    run(model, policy, 2, engine=engine, first_order=first_order)
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is None for p in policy.parameters())
    assert model.bert.embeddings.word_embeddings.weight is model.cls.predictions.decoder.weight


def test_frozen_parameters_stay_constants():
    model, policy = tiny_bert(), toy_policy()
    model.bert.embeddings.requires_grad_(False)
    steps = [run(model, policy, 2, engine=engine) for engine in ENGINES]
    assert relative(flat(steps[1]), flat(steps[0])) < 1e-5
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("engine", ENGINES)
def test_sdpa_model_runs_on_the_math_backend_and_matches_eager(engine):
    eager, policy = tiny_bert("eager"), toy_policy()
    sdpa = tiny_bert("sdpa")
    sdpa.load_state_dict(eager.state_dict())
    assert sdpa.config._attn_implementation == "sdpa"
    expected = flat(run(eager, policy, 2, engine=engine))
    for first_order in (False, True):
        got = flat(run(sdpa, policy, 2, engine=engine, first_order=first_order))
        reference = expected if not first_order else flat(run(eager, policy, 2, engine=engine, first_order=True))
        assert relative(got, reference) < 1e-5


def test_sdpa_trap_without_the_math_backend_raises_or_is_right():
    """The reason for the math backend: a fused SDPA kernel has no double backward (on CPU it raises)."""
    eager, policy = tiny_bert("eager"), toy_policy()
    sdpa = tiny_bert("sdpa")
    sdpa.load_state_dict(eager.state_dict())
    expected = flat(run(eager, policy, 1, engine="higher"))
    batch = inner_batches(policy, 1)[0]
    optimizer = torch.optim.SGD(sdpa.parameters(), lr=LR)
    with higher.innerloop_ctx(sdpa, optimizer) as (fmodel, diffopt):
        diffopt.step(weighted_inner_loss(fmodel(**batch.inputs()).logits, batch))
        loss = fmodel(**outer_batch()).loss
        try:
            grads = torch.autograd.grad(loss, list(policy.parameters()))
        except RuntimeError as error:
            assert "not implemented" in str(error)
            return
    assert relative(torch.cat([g.flatten() for g in grads]), expected) < 1e-5


def test_attention_without_double_backward_is_refused():
    model, policy = tiny_bert(), toy_policy()
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="model.attn_implementation=eager"):
        run(model, policy, 1)


def test_bad_inputs():
    model, policy = tiny_bert(), toy_policy()
    params, batches, outer = list(policy.parameters()), inner_batches(policy, 1), outer_batch()
    with pytest.raises(ValueError, match="'higher', 'torch_func'"):
        hypergradient(model, params, batches, outer, engine="jax")
    with pytest.raises(ValueError, match="K ≥ 1"):
        hypergradient(model, params, [], outer)
    for lr in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="inner_lr"):
            hypergradient(model, params, batches, outer, inner_lr=lr)
    short = InnerBatch(batches[0].input_ids, batches[0].attention_mask, batches[0].labels, batches[0].weights[:, :-1])
    with pytest.raises(ValueError, match="weights shape"):
        hypergradient(model, params, [short], outer)
    detached = InnerBatch(batches[0].input_ids, batches[0].attention_mask, batches[0].labels,
                          batches[0].weights.detach())
    with pytest.raises(ValueError, match="autograd graph"):
        hypergradient(model, params, [detached], outer)
    with pytest.raises(ValueError, match="labels"):
        hypergradient(model, params, batches, {k: v for k, v in outer.items() if k != "labels"})
    with pytest.raises(ValueError, match="policy_params"):
        hypergradient(model, [], batches, outer)
