"""Compat shims against the anchors' formulas (tests/anchor_math.py, fp64), RNG use included."""
import types

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

import anchor_math
from fastgrpo.compat import adagrpo, dance_grpo, mix_grpo
from fastgrpo.compat.flow_grpo import sde_step_with_logprob
from helpers import shifted_sigmas

F32 = dict(rtol=1e-5, atol=1e-5)


def _scheduler(steps=10, shift=3.0):
    s = FlowMatchEulerDiscreteScheduler(shift=shift)
    s.set_timesteps(steps)
    return s


@pytest.mark.parametrize("shape", [(3, 4, 6, 5), (3, 20, 8)])
@pytest.mark.parametrize("sde_type", ["sde", "cps"])
def test_flow_grpo_step_matches_anchor_and_rng(shape, sde_type):
    sched = _scheduler()
    idx = torch.tensor([0, 4, 9])
    t = sched.timesteps[idx]
    v, x = torch.randn(shape), torch.randn(shape)
    gen = torch.Generator().manual_seed(42)
    prev, lp, mean, std_dev_t, sqrt_dt = sde_step_with_logprob(sched, v, t, x, 0.7, generator=gen,
                                                               sde_type=sde_type, return_sqrt_dt=True)
    ref_gen = torch.Generator().manual_seed(42)
    noise = torch.randn(shape, generator=ref_gen, dtype=torch.float32)
    assert torch.equal(gen.get_state(), ref_gen.get_state())  # the same draws, the same RNG state after
    sigma, sigma_next = sched.sigmas[idx], sched.sigmas[idx + 1]
    if sde_type == "sde":
        want_prev, want_lp, want_mu, g, want_sqrt = anchor_math.flow_grpo_sde(
            v, x, sigma, sigma_next, 0.7, noise=noise, sigma_1=sched.sigmas[1].item())
    else:
        want_prev, want_lp, want_mu, g = anchor_math.cps(v, x, sigma, sigma_next, 0.7, noise=noise)
        want_sqrt = torch.sqrt(sigma - sigma_next).double().reshape(std_dev_t.shape)
    assert std_dev_t.shape == (3,) + (1,) * (len(shape) - 1) and sqrt_dt.shape == std_dev_t.shape
    torch.testing.assert_close(prev.double(), want_prev, **F32)
    torch.testing.assert_close(mean.double(), want_mu, **F32)
    torch.testing.assert_close(std_dev_t.double(), g.expand_as(std_dev_t).double(), **F32)
    torch.testing.assert_close(sqrt_dt.double(), want_sqrt.expand_as(sqrt_dt), **F32)
    torch.testing.assert_close(lp.double(), want_lp, rtol=1e-4, atol=1e-4)
    # training replay: prev_sample given, gradient into the model output
    v2 = v.clone().requires_grad_(True)
    _, lp2, _, _ = sde_step_with_logprob(sched, v2, t, x, 0.7, prev_sample=prev, sde_type=sde_type)
    torch.testing.assert_close(lp2, lp)
    lp2.sum().backward()
    assert v2.grad.abs().sum() > 0


def test_flow_grpo_timestep_forms_and_bf16_model_output():
    sched = _scheduler()
    v, x = torch.randn(2, 4, 8, 8).bfloat16(), torch.randn(2, 4, 8, 8)
    noise_gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    t = sched.timesteps[3]
    outs = [sde_step_with_logprob(sched, v, tt, x, 0.7, generator=noise_gen())
            for tt in (t, t.reshape(1), t.repeat(2), float(t))]
    for o in outs[1:]:
        torch.testing.assert_close(o[0], outs[0][0])
        torch.testing.assert_close(o[1], outs[0][1])
    noise = torch.randn(2, 4, 8, 8, generator=noise_gen())
    want = anchor_math.flow_grpo_sde(v.float(), x, sched.sigmas[[3, 3]], sched.sigmas[[4, 4]], 0.7, noise=noise)
    torch.testing.assert_close(outs[0][0].double(), want[0], **F32)  # the anchor upcasts: fp32 numbers


def test_flow_grpo_rejects_unknown_sde_type_and_timestep():
    sched = _scheduler()
    v = torch.randn(1, 2, 3)
    with pytest.raises(ValueError, match="sde_type"):
        sde_step_with_logprob(sched, v, sched.timesteps[:1], v, sde_type="ode")
    with pytest.raises(ValueError, match="timestep"):
        sde_step_with_logprob(sched, v, torch.tensor([123.456]), v)


def test_flow_grpo_finite_at_zero_noise_level():
    sched = _scheduler()
    v, x = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    prev, lp, mean, std = sde_step_with_logprob(sched, v, sched.timesteps[[0, 5]], x, 0.0)
    assert torch.isfinite(lp).all() and torch.all(std == 0)
    torch.testing.assert_close(prev, mean)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dance_flux_step_matches_anchor(dtype):
    sigmas = shifted_sigmas(16)
    v, x = torch.randn(2, 64, 16).to(dtype), torch.randn(2, 64, 16)
    torch.manual_seed(5)
    prev, x0, lp = dance_grpo.flux_step(v, x, 0.3, sigmas, 3, None, True, True)
    torch.manual_seed(5)
    noise = torch.randn(2, 64, 16)
    want_prev, want_x0, want_lp = anchor_math.dance(v.float(), x, sigmas[3].item(), sigmas[4].item(), 0.3,
                                                    noise=noise)
    tol = F32 if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)  # the anchor rounds σ·v in bf16
    torch.testing.assert_close(prev.double(), want_prev, **tol)
    torch.testing.assert_close(x0.double(), want_x0, **tol)
    # replay at the stored sample: the same log-prob as the rollout
    _, _, lp2 = dance_grpo.flux_step(v, x, 0.3, sigmas, 3, prev, True, True)
    torch.testing.assert_close(lp2, lp)
    if dtype == torch.float32:
        torch.testing.assert_close(lp.double(), want_lp, rtol=1e-4, atol=1e-4)
    mean, x0_b = dance_grpo.flux_step(v, x, 0.3, sigmas, 3, None, False, True)
    torch.testing.assert_close(mean.double(), (want_prev - 0.3 * (sigmas[3] - sigmas[4]).sqrt() * noise), **tol)
    ode_mean, _ = dance_grpo.flux_step(v, x, 0.3, sigmas, 3, None, False, False)
    torch.testing.assert_close(ode_mean, x + (sigmas[4] - sigmas[3]) * v.float(), **tol)


@pytest.mark.parametrize("determistic", [False, True])
def test_mix_flow_grpo_step_matches_anchor(determistic):
    sigmas = shifted_sigmas(25)
    v, x = torch.randn(2, 64, 16), torch.randn(2, 64, 16)
    gen = torch.Generator().manual_seed(9)
    prev, x0, lp, mean, std = mix_grpo.flow_grpo_step(v, x, 0.7, sigmas, 2, None, generator=gen,
                                                      determistic=determistic)
    noise = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(9))
    s, sn = sigmas[2].repeat(2), sigmas[3].repeat(2)
    euler = x + (sn[0] - s[0]) * v
    want = anchor_math.flow_grpo_sde(v, x, s, sn, 0.7, noise=None if determistic else noise,
                                     x_next=euler if determistic else None)
    torch.testing.assert_close(prev.double(), want[0], **F32)
    torch.testing.assert_close(lp.double(), want[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mean.double(), want[2], **F32)
    torch.testing.assert_close(std.double(), (want[3] * want[4]).reshape(-1)[0], **F32)
    torch.testing.assert_close(x0, x - sigmas[2] * v)
    with pytest.raises(ValueError, match="generator"):
        mix_grpo.flow_grpo_step(v, x, 0.7, sigmas, 2, prev, generator=gen)


def test_mix_dpm_step_flash_schedule_matches_formula():
    """A Flash-style run: window steps feed the history, then DPM-Solver++ 2M to σ = 0, against the formula."""
    sigmas = shifted_sigmas(8)
    args = types.SimpleNamespace(dpm_algorithm_type="dpmsolver++", dpm_solver_order=2, dpm_solver_type="midpoint")
    state = mix_grpo.DPMState(order=2)
    x = torch.randn(2, 4, 5)
    x_ref = x.double()
    hist = []
    for i in range(8):
        v = torch.randn(2, 4, 5)
        x, x0, lp = mix_grpo.dpm_step(args, v, x, i, sigmas[:-1], sigmas, dpm_state=state)
        s, sn = sigmas[i].item(), sigmas[i + 1].item()
        d_a = x_ref - s * v.double()
        second = i >= 1 and i != 7
        x_ref = anchor_math.dpm_pp_2m(x_ref, d_a, s, sn, hist[-1] if second else None,
                                      sigmas[i - 1].item() if second else None)
        hist.append(d_a)
        torch.testing.assert_close(x.double(), x_ref, rtol=1e-4, atol=1e-4)
        assert torch.isfinite(lp).all()
    assert state.lower_order_nums == 2


def test_mix_dpm_step_rejects_unsupported_settings():
    sigmas = shifted_sigmas(4)
    v = torch.randn(1, 2, 3)
    for attr, value in [("dpm_algorithm_type", "dpmsolver"), ("dpm_solver_order", 3), ("dpm_solver_type", "heun")]:
        args = types.SimpleNamespace(**{attr: value})
        with pytest.raises(ValueError, match=attr):
            mix_grpo.dpm_step(args, v, v, 0, sigmas[:-1], sigmas, dpm_state=mix_grpo.DPMState(2))


@pytest.mark.parametrize("sigma_index", [0, 5])
def test_adagrpo_flowsde_prob_func_matches_anchor(sigma_index):
    sigmas = shifted_sigmas(16)
    s, sn = sigmas[sigma_index], sigmas[sigma_index + 1]
    x, v = torch.randn(1, 64, 16), torch.randn(1, 64, 16)
    group = torch.randn(6, 64, 16)
    log_prob_fn, mean_next = adagrpo.flowsde_prob_func(x, v, s, sn, 0.7)
    _, want_lp_full, want_mu, g, sqrt_dt = anchor_math.flow_grpo_sde(v, x, s.reshape(1), sn.reshape(1), 0.7,
                                                                     x_next=x)
    torch.testing.assert_close(mean_next.double(), want_mu, **F32)
    lp = log_prob_fn(group, mean_next)
    want = -((group.double() - want_mu) ** 2).mean((1, 2)) / (2 * (g * sqrt_dt).reshape(()) ** 2)
    assert lp.shape == (6,)
    torch.testing.assert_close(lp.double(), want, rtol=1e-4, atol=1e-4)
    zero_fn, _ = adagrpo.flowsde_prob_func(x, v, s, sn, 0.0)
    assert torch.all(zero_fn(group, mean_next) == 0)
