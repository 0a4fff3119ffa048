"""Options of the SDE-replay method. GRPO-Guard's RatioNorm against Flow-GRPO's log-ratio and its published
consequence (fresh random inputs, fixed seeds): ρ̂ = exp(mean(ε ⊙ (μ_θ − μ_old))) = exp((lp − lp_old + b)·s̄), and
with the loss divided by |Δσ| the per-element gradient with respect to v is (1 + η²/2)·A·ε/(B·n) at every step.
TempFlow-GRPO's noise-aware weight c·s_k against its released constant, and both through the trainer."""
import pytest
import torch

from fastgrpo.algorithms import rationorm_loss, rationorm_ratio
from fastgrpo.ops import flow_step
from fastgrpo.reference.flow_step import step_coefficients
from fastgrpo.train import load_config
from fastgrpo.train.loop import Trainer
from fastgrpo.train.schedule import sigmas

ETA = 0.7


def _step(seed, sigma, sigma_next, B=4, shape=(3, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, *shape, generator=g)
    v_old = torch.randn(B, *shape, generator=g)
    noise = torch.randn(B, *shape, generator=g)
    rollout = flow_step(v_old, x, sigma, sigma_next, ETA, noise=noise, return_mean=True, backend="torch")
    return x, v_old, noise, rollout


def test_ratio_is_flow_grpos_log_ratio_without_its_shift_rescaled():
    x, v_old, _, rollout = _step(0, 0.8, 0.7)
    v = v_old + 0.05 * torch.randn(v_old.shape, generator=torch.Generator().manual_seed(1))
    new = flow_step(v, x, 0.8, 0.7, ETA, x_next=rollout.x_next, return_mean=True, backend="torch")
    ratio = rationorm_ratio(new.mean, rollout.mean, rollout.x_next, new.std)
    s_bar = new.std.mean()
    b = (new.mean - rollout.mean).pow(2).flatten(1).mean(1) / (2 * s_bar ** 2)
    want = torch.exp((new.log_prob - rollout.log_prob + b) * s_bar)
    assert torch.allclose(ratio, want, rtol=1e-4)
    same = flow_step(v_old, x, 0.8, 0.7, ETA, x_next=rollout.x_next, return_mean=True, backend="torch")
    assert torch.equal(rationorm_ratio(same.mean, rollout.mean, rollout.x_next, same.std), torch.ones(4))


def test_every_steps_gradient_has_the_same_scale():
    grid = sigmas(10, 3.0).tolist()
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5])
    for j in (1, 3, 5, 8):  # σ < 1 (step 0 at σ = 1 uses 1 − σ_1 in g)
        x, v_old, noise, rollout = _step(10 + j, grid[j], grid[j + 1])
        v = v_old.clone().requires_grad_(True)
        new = flow_step(v, x, grid[j], grid[j + 1], ETA, x_next=rollout.x_next, return_mean=True, backend="torch")
        ratio = rationorm_ratio(new.mean, rollout.mean, rollout.x_next, new.std)
        rationorm_loss(ratio, adv, 2e-6, grid[j + 1] - grid[j]).loss.backward()
        B, n = v.shape[0], v[0].numel()
        want = (1 + ETA ** 2 / 2) * adv.view(-1, 1, 1, 1) * noise / (B * n)
        assert torch.allclose(v.grad, want, rtol=2e-3, atol=1e-9), j


def test_clip_and_step_division():
    ratio = torch.tensor([1.0, 1.5, 0.5], requires_grad=True)
    out = rationorm_loss(ratio, torch.tensor([1.0, 1.0, -1.0]), 0.1, -0.25)
    # the clipped entries carry no gradient; the kept one −A/(B·|Δ|)
    out.loss.backward()
    assert ratio.grad.tolist() == pytest.approx([-1 / 3 / 0.25, 0.0, 0.0])
    assert out.clipfrac == pytest.approx(2 / 3)


def test_tempflow_constant_is_the_released_one_for_sd35():
    """c = 1/mean(s_k) over steps 0..8 of SD3.5-M's schedule (T = 10, shift 3, η 0.7): the released code hard-codes
    2.25."""
    grid = sigmas(10, 3.0)
    _, _, std, _ = step_coefficients(grid[:9], grid[1:10], 0.7, "flow_sde")
    assert 1 / std.mean().item() == pytest.approx(2.25, rel=0.03)


def test_tempflow_weights_and_guard_ratio_through_the_trainer(tmp_path):
    small = ("sampling.steps=4", "group_size=3", "adagrpo.candidates=4", "adagrpo.keep=2", "eval_every=1000",
             "eval_seeds=1", "checkpoint_every=1000")
    tempflow = Trainer(load_config("tempflow_grpo", small + ("branch.points=0,1,2", f"out_dir={tmp_path / 't'}")))
    batch = tempflow.method.rollout(tempflow.train_prompts.take([0, 1]), seed=2)
    units = tempflow.method.units(batch, seed=2)
    assert len(units) == 6  # 2 prompts × 3 branch points, one stored step each
    std = torch.tensor([s for s in (tempflow.method.step_std([t.sigma[0]], [t.sigma_next[0]]).item()
                                    for t in batch.groups)])
    assert [w for ((_, w),) in units] == pytest.approx((std / std.mean()).tolist())
    metrics = tempflow.step()
    assert metrics["first_ratio_max_dev"] == 0.0 and torch.isfinite(torch.tensor(metrics["loss"]))
    guard = Trainer(load_config("grpo_guard", small + ("window.size=3", f"out_dir={tmp_path / 'g'}")))
    metrics = guard.step()
    assert metrics["first_ratio_max_dev"] == 0.0 and metrics["grad_norm"] > 0  # μ_θ replays μ_old bit for bit


def _pave_reference(W, b, x, v1, sigma, sigma_next, n, eta, x_next):
    """Pave-GRPO's n-way kernel written out in float64 for the linear model f(y, σ) = W·y + σ·b (channels mixed
    by W): Euler sub-steps reusing v1, then the flow_sde mean and the quadratic log-prob of the last one."""
    f = lambda y, s: torch.einsum("oc,bchw->bohw", W, y) + s * b  # noqa: E731
    dt = (sigma_next - sigma) / n
    y, v = x, v1
    for i in range(1, n):
        y = y + dt * v
        v = f(y, sigma + i * dt)
    s_in = sigma + (n - 1) * dt
    g2 = eta ** 2 * s_in / (1 - s_in)
    mu = y + dt * (v + g2 / (2 * s_in) * (y + (1 - s_in) * v))
    return -((x_next - mu) ** 2).flatten(1).mean(1) / (2 * g2 * abs(dt))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_pave_decomposed_kernel_and_its_gradient_through_the_chain(n, monkeypatch):
    from fastgrpo.algorithms.pave import decomposed_log_prob

    monkeypatch.setenv("FASTGRPO_BACKEND", "torch")  # float64 end to end
    g = torch.Generator().manual_seed(20 + n)
    W = (torch.eye(3, dtype=torch.float64) + 0.1 * torch.randn(3, 3, generator=g, dtype=torch.float64))
    b = 0.1 * torch.randn(1, 3, 1, 1, generator=g, dtype=torch.float64)
    x = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64)
    x_next = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    sigma, sigma_next = 0.8, 0.7
    W_ref = W.clone().requires_grad_(True)
    v1_ref = torch.einsum("oc,bchw->bohw", W_ref, x) + sigma * b
    want = _pave_reference(W_ref, b, x, v1_ref, sigma, sigma_next, n, 0.8, x_next)
    W_got = W.clone().requires_grad_(True)
    model = lambda y, s: torch.einsum("oc,bchw->bohw", W_got, y) + s * b  # noqa: E731
    got = decomposed_log_prob(model, x, model(x, sigma), sigma, sigma_next, n, 0.8, x_next)
    assert torch.allclose(got, want, rtol=1e-6)  # the op holds its σ coefficients in float32
    got.sum().backward()
    want.sum().backward()
    assert torch.allclose(W_got.grad, W_ref.grad, rtol=1e-5)  # through v1, every f(y_i) and the y_i
    if n == 1:  # the coarse kernel itself
        coarse = flow_step(model(x, sigma).expand_as(x_next), x.expand_as(x_next), sigma, sigma_next, 0.8,
                           logprob="quadratic", x_next=x_next)
        assert torch.allclose(got, coarse.log_prob)
