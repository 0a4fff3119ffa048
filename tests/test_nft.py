"""DiffusionNFT's math against its velocity-space form in float64, and the old-policy snapshot (fresh random inputs,
fixed seeds). The paper's objective is E[r·‖v⁺ − (ε − x0)‖² + (1 − r)·‖v⁻ − (ε − x0)‖²]; the released code's x0-space
loss equals t²·‖v± − (ε − x0)‖² over a stop-gradient weight w± = t·mean|v± − (ε − x0)|, times the gain c/β."""
import pytest
import torch

from fastgrpo.algorithms.nft import nft_loss, nft_optimality
from fastgrpo.methods.snapshot import soft_update_decay
from fastgrpo.methods.snapshot import WeightSnapshot


def _inputs(seed, B=5, shape=(4, 6, 6), beta=1.0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, *shape, generator=g)
    eps = torch.randn(B, *shape, generator=g)
    t = torch.rand(B, generator=g) * 0.9 + 0.1
    t[0] = 1.0  # σ = 1 (pure noise) is one of the trained σ's
    v_old = eps - x0 + 0.3 * torch.randn(B, *shape, generator=g)
    v = v_old + 0.2 * torch.randn(B, *shape, generator=g)
    r = torch.rand(B, generator=g)
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    return x0, eps, t, v_old, v, r, x_t


def _velocity_form(v, v_old, x0, eps, t, r, beta, c):
    """Float64, in velocity space: e± = v± − (ε − x0); L± = t²·mean(e±²)/(t·mean|e±|)."""
    v, v_old, x0, eps, t, r = (a.double() for a in (v, v_old, x0, eps, t, r))
    tb = t.view(-1, 1, 1, 1)
    total = 0
    for implicit, weight in ((beta * v + (1 - beta) * v_old, r), ((1 + beta) * v_old - beta * v, 1 - r)):
        e = implicit - (eps - x0)
        w = (tb * e).abs().flatten(1).mean(1).detach()
        total = total + weight * (tb ** 2 * e ** 2).flatten(1).mean(1) / w
    return total.mean() / beta * c


@pytest.mark.parametrize("beta", [1.0, 0.1])
def test_loss_equals_the_velocity_form_and_its_gradient(beta):
    x0, eps, t, v_old, v, r, x_t = _inputs(1, beta=beta)
    v = v.requires_grad_(True)
    out = nft_loss(v, v_old, x_t, x0, t, r, beta=beta, adv_clip=5.0)
    v64 = v.detach().double().requires_grad_(True)
    want = _velocity_form(v64, v_old, x0, eps, t, r, beta, 5.0)
    assert torch.allclose(out.loss.double(), want, rtol=1e-5)
    out.loss.backward()
    want.backward()
    scale = v64.grad.abs().max().item()  # float32 against float64: entries near 0 carry absolute rounding
    assert torch.allclose(v.grad.double(), v64.grad, rtol=1e-4, atol=1e-5 * scale)
    # the gradient by hand, with w held fixed (stop-gradient): c/(B·n)·2t·[−r·e⁺/w⁺ + (1−r)·e⁻/w⁻]
    B, n = v.shape[0], v[0].numel()
    tb = t.double().view(-1, 1, 1, 1)
    pos = x_t.double() - tb * (beta * v64 + (1 - beta) * v_old.double()).detach() - x0.double()
    neg = x_t.double() - tb * ((1 + beta) * v_old.double() - beta * v64).detach() - x0.double()
    w_pos, w_neg = (e.abs().flatten(1).mean(1).view(-1, 1, 1, 1) for e in (pos, neg))
    rb = r.double().view(-1, 1, 1, 1)
    by_hand = 5.0 / (B * n) * 2 * tb * (-rb * pos / w_pos + (1 - rb) * neg / w_neg)
    assert torch.allclose(v64.grad, by_hand, rtol=1e-5, atol=1e-6 * scale)  # x_t was rounded to float32


def test_old_policy_gets_no_gradient_and_r_one_pulls_towards_the_target():
    x0, eps, t, v_old, v, _, x_t = _inputs(2)
    v_old = v_old.clone().requires_grad_(True)
    v = v.clone().requires_grad_(True)
    ones = torch.ones(len(t))
    nft_loss(v, v_old, x_t, x0, t, ones, beta=1.0).loss.backward()
    assert v_old.grad is None
    # r = 1, β = 1: L = c·mean(L⁺) with v⁺ = v — the gradient points from the target ε − x0 towards v
    assert (v.grad * (v.detach() - (eps - x0))).sum() > 0
    # at the target itself (v⁺ = ε − x0) the positive error is 0 (the weight's floor keeps it finite)
    out = nft_loss(eps - x0, v_old.detach(), x_t, x0, t, ones, beta=1.0)
    assert torch.allclose(out.positive, torch.zeros_like(out.positive), atol=1e-6)


def test_optimality_is_linear_in_the_advantage_and_saturates():
    a = torch.linspace(-8, 8, 161, dtype=torch.float64)
    r = nft_optimality(a, 5.0)
    inside = a.abs() <= 5
    assert torch.allclose(r[inside], 0.5 + a[inside] / 10)
    assert torch.all(r[a >= 5] == 1) and torch.all(r[a <= -5] == 0)
    assert nft_optimality(torch.tensor([1.0]), 2.0).item() == 0.75
    with pytest.raises(ValueError, match="adv_clip"):
        nft_optimality(a, 0.0)
    with pytest.raises(ValueError, match="beta"):
        nft_loss(*[torch.zeros(1, 2)] * 4, torch.ones(1), torch.ones(1), beta=0.0)


def test_old_policy_decay_schedule():
    assert soft_update_decay(0) == 0.0  # the first update copies θ: on-policy
    assert soft_update_decay(7) == pytest.approx(0.007)
    assert soft_update_decay(500) == 0.5 and soft_update_decay(10_000) == 0.5
    assert soft_update_decay(10, rate=0.01, cap=0.05) == 0.05


def test_snapshot_swaps_in_and_restores_exactly_and_soft_updates():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].requires_grad_(False)  # frozen: not copied
    snap = WeightSnapshot(model)
    assert [n for n, _ in snap.named] == ["1.weight", "1.bias"]
    start = [p.detach().clone() for p in model[1].parameters()]
    with torch.no_grad():
        for p in model[1].parameters():
            p.add_(torch.randn_like(p))
    trained = [p.detach().clone() for p in model[1].parameters()]
    x = torch.randn(5, 4)
    with snap.active():
        assert all(torch.equal(p, s) for p, s in zip(model[1].parameters(), start))
        old_out = model(x)
    assert all(torch.equal(p, s) for p, s in zip(model[1].parameters(), trained))  # bit-exact restore
    assert not torch.equal(old_out, model(x))
    snap.soft_update(0.3)
    for v, s, p in zip(snap.values, start, trained):
        assert torch.allclose(v, 0.3 * s + 0.7 * p, atol=1e-6)
    state = snap.state_dict()
    other = WeightSnapshot(model)
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(other.values, snap.values))
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({"1.weight": state["1.weight"]})
    with pytest.raises(ValueError, match="decay"):
        snap.soft_update(1.5)
