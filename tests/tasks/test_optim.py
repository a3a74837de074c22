"""The one optimiser set-up: BERT's weight-decay rule, warm-up then linear decay, fused AdamW where torch has it."""

from __future__ import annotations

import torch

from maskpolicy.tasks.training import optim


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))


def test_biases_and_norms_are_not_decayed_and_the_rate_warms_up_then_decays_to_zero():
    setup = optim.adamw_with_warmup(model().named_parameters(), 1e-3, 0.01, warmup_fraction=0.25, total_steps=8)
    optimizer, schedule = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    decayed, exempt = optimizer.param_groups
    assert [tuple(p.shape) for p in decayed["params"]] == [(3, 4)] and decayed["weight_decay"] == 0.01
    assert [tuple(p.shape) for p in exempt["params"]] == [(3,), (3,), (3,)] and exempt["weight_decay"] == 0.0
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == [0.0, 5e-4, 1e-3, 1e-3 * 5 / 6, 1e-3 * 4 / 6, 1e-3 * 3 / 6, 1e-3 * 2 / 6, 1e-3 / 6]


def test_on_the_cpu_adamw_is_fused_and_updates_as_the_default_one_does_to_float_rounding():
    fused_model, default_model = model(), model()
    start = [p.detach().clone() for p in fused_model.parameters()]
    fused = optim.adamw([{"params": list(fused_model.parameters())}], 1e-2)
    default = torch.optim.AdamW(default_model.parameters(), lr=1e-2)
    assert fused.defaults["fused"] and not default.defaults["fused"]
    batch = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    for _ in range(5):
        for network, optimizer in ((fused_model, fused), (default_model, default)):
            network(batch).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b, before in zip(fused_model.parameters(), default_model.parameters(), start, strict=True):
        # float rounding, which Adam's normalisation amplifies on near-zero gradients: ≤ 2.4e-6 here (1-2 threads)
        assert torch.allclose(a, b, rtol=0, atol=1e-5) and not torch.equal(a, before)


def test_parameters_without_a_fused_kernel_get_the_default_adamw(monkeypatch):
    calls = []
    real = torch.optim.AdamW

    def refusing(params, lr, fused=None):
        calls.append(fused)
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, lr=lr)

    monkeypatch.setattr(torch.optim, "AdamW", refusing)
    optimizer = optim.adamw([{"params": list(model().parameters())}], 1e-3)
    assert calls == [True, None] and not optimizer.defaults["fused"]
