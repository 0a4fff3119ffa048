"""flow_step: Triton kernel (interpreted on CPU) against the PyTorch reference, and the reference against the math."""
import math
import zlib

import pytest
import torch

from fastgrpo import reference
from fastgrpo.ops import flow_step
from fastgrpo.reference.flow_step import FAMILIES, LOGPROBS, step_coefficients

from helpers import random_step

SHAPES = [(1, 16, 9, 7), (17, 37, 5), (2, 3, 4, 5, 6)]  # batch 1 and 17; ranks 3/4/5; sizes off the block
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-5), torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}


def _close(a, b, **tol):
    torch.testing.assert_close(a.float(), b.float(), **tol)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("logprob", LOGPROBS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["noise", "x_next"])
def test_kernel_matches_reference(family, logprob, dtype, shape, mode):
    # a fixed seed per case: hash() of a str differs between processes (PYTHONHASHSEED)
    v, x, s, sn = random_step(shape, dtype, seed=zlib.crc32(repr((family, logprob, shape, mode)).encode()) % 1000)
    extra = torch.randn(shape).to(dtype)
    kw = dict(family=family, logprob=logprob, return_mean=True, **{mode: extra})
    got = flow_step(v, x, s, sn, 0.7, backend="triton", **kw)
    want = flow_step(v, x, s, sn, 0.7, backend="torch", **kw)
    # the inputs are the same bf16 numbers on both paths and both compute in fp32: fp32 tolerances hold
    _close(got.x_next, want.x_next, **TOL[torch.float32])
    _close(got.mean, want.mean, **TOL[torch.float32])
    _close(got.std, want.std, **TOL[torch.float32])
    _close(got.log_prob, want.log_prob, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(got.log_prob).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_mean_is_the_kernel_algebra(family):
    """μ in the papers' form (reference) equals a·x + b·v (the kernel's algebra), in fp64."""
    v, x, s, sn = random_step((6, 5, 4), torch.float64, seed=1)
    out = reference.flow_step(v, x, s.double(), sn.double(), 0.8, family=family, noise=torch.randn_like(v),
                              return_mean=True)
    a, b, std, _ = step_coefficients(s.double(), sn.double(), 0.8, family)
    mu = a.double().view(-1, 1, 1) * x + b.double().view(-1, 1, 1) * v
    torch.testing.assert_close(out.mean, mu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.std, std.double(), rtol=1e-5, atol=1e-6)


def test_reference_against_written_out_flow_grpo_formula():
    """Flow-GRPO's sde step written out per element in fp64 (its paper, arXiv 2505.05470), σ < 1 and σ = 1."""
    torch.manual_seed(3)
    eta = 0.7
    for sigma, sigma_next in [(0.8, 0.65), (1.0, 0.9)]:
        v, x, x_next = (torch.randn(1, 3, 4, dtype=torch.float64) for _ in range(3))
        denom = 1 - (sigma_next if sigma == 1 else sigma)
        g = eta * math.sqrt(sigma / denom)
        dt = sigma_next - sigma
        mu = x * (1 + g**2 / (2 * sigma) * dt) + v * (1 + g**2 * (1 - sigma) / (2 * sigma)) * dt
        std = g * math.sqrt(-dt)
        lp = (-(x_next - mu) ** 2 / (2 * std**2) - math.log(std) - math.log(math.sqrt(2 * math.pi))).mean()
        out = reference.flow_step(v, x, torch.tensor([sigma], dtype=torch.float64),
                                  torch.tensor([sigma_next], dtype=torch.float64), eta, x_next=x_next,
                                  return_mean=True)
        torch.testing.assert_close(out.mean, mu)
        torch.testing.assert_close(out.log_prob, lp.reshape(1))
        for backend in ("triton", "torch"):
            got = flow_step(v.float(), x.float(), sigma, sigma_next, eta, x_next=x_next.float(), backend=backend)
            torch.testing.assert_close(got.log_prob.double(), lp.reshape(1), rtol=1e-5, atol=1e-5)
        # the KL to a reference mean: Flow-GRPO's divides by 2g² (g without √−Δ), TempFlow-GRPO's by 2·std²
        # (std = g·√−Δ), Flow-CPS's by nothing
        mu_ref = torch.randn(1, 3, 4, dtype=torch.float64)
        msq = ((mu - mu_ref) ** 2).mean()
        for divisor, kl in {"flow_grpo": msq / (2 * g**2), "step_std": msq / (2 * std**2), "none": msq}.items():
            out = reference.flow_step(v, x, torch.tensor([sigma], dtype=torch.float64),
                                      torch.tensor([sigma_next], dtype=torch.float64), eta, x_next=x_next,
                                      mu_ref=mu_ref, kl_divisor=divisor)
            torch.testing.assert_close(out.kl, kl.reshape(1))
            for backend in ("triton", "torch"):
                got = flow_step(v.float(), x.float(), sigma, sigma_next, eta, x_next=x_next.float(),
                                mu_ref=mu_ref.float(), kl_divisor=divisor, backend=backend)
                torch.testing.assert_close(got.kl.double(), kl.reshape(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eta", [0.3, 0.8])
def test_reference_against_written_out_ddim_sde_formula(eta):
    """Stepwise-Flow-GRPO's DDIM-like SDE step written out in fp64: s = η·σ'·√(1 − σ), x̂0 = x − σv,
    x̂1 = x + (1 − σ)v, μ = (1 − σ')·x̂0 + √(σ'² − s²)·x̂1, a Gaussian log-prob with std s."""
    torch.manual_seed(4)
    for sigma, sigma_next in [(0.8, 0.65), (0.5, 0.3), (1.0, 0.9)]:
        v, x, x_next = (torch.randn(1, 3, 4, dtype=torch.float64) for _ in range(3))
        std = eta * sigma_next * math.sqrt(1 - sigma)
        mu = (1 - sigma_next) * (x - sigma * v) + math.sqrt(sigma_next**2 - std**2) * (x + (1 - sigma) * v)
        out = reference.flow_step(v, x, torch.tensor([sigma], dtype=torch.float64),
                                  torch.tensor([sigma_next], dtype=torch.float64), eta, family="ddim_sde",
                                  x_next=x_next, return_mean=True)
        torch.testing.assert_close(out.mean, mu)
        if std == 0:  # σ = 1: a deterministic step, no density (log-prob 0 by convention)
            assert out.log_prob.item() == 0.0
            continue
        lp = (-(x_next - mu) ** 2 / (2 * std**2) - math.log(std) - math.log(math.sqrt(2 * math.pi))).mean()
        torch.testing.assert_close(out.log_prob, lp.reshape(1))
        for backend in ("triton", "torch"):
            got = flow_step(v.float(), x.float(), sigma, sigma_next, eta, family="ddim_sde", x_next=x_next.float(),
                            return_mean=True, backend=backend)
            torch.testing.assert_close(got.mean.double(), mu, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got.std.double(), torch.tensor([std], dtype=torch.float64), rtol=1e-6, atol=0)
            torch.testing.assert_close(got.log_prob.double(), lp.reshape(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["flow_sde", "cps", "dance_sde", "ddim_sde"])
def test_seeded_noise_statistics_and_reproducibility(family):
    v, x, s, sn = random_step((3, 4, 64, 40), seed=5, include_first=False, include_last=False)
    out = flow_step(v, x, s, sn, 0.7, family=family, seed=1234, backend="triton", return_mean=True)
    eps = (out.x_next - out.mean) / out.std.view(-1, 1, 1, 1)
    n = eps.numel()
    assert abs(eps.mean().item()) < 4 / math.sqrt(n)           # 4 standard errors
    assert abs(eps.var().item() - 1) < 4 * math.sqrt(2 / n)
    assert abs((eps[:, :, :, 1:] * eps[:, :, :, :-1]).mean().item()) < 4 / math.sqrt(n)  # neighbours independent
    again = flow_step(v, x, s, sn, 0.7, family=family, seed=1234, backend="triton")
    assert torch.equal(again.x_next, out.x_next)
    other = flow_step(v, x, s, sn, 0.7, family=family, seed=1235, backend="triton")
    assert not torch.equal(other.x_next, out.x_next)
    # the log-prob of a seeded rollout equals its replay through the reference
    replay = flow_step(v, x, s, sn, 0.7, family=family, x_next=out.x_next, backend="torch")
    torch.testing.assert_close(out.log_prob, replay.log_prob, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_replay_log_prob_is_bit_identical(backend, out_dtype):
    """Rollout stores x' in out_dtype; the training replay with that stored x' gives exactly the same log-prob."""
    v, x, s, sn = random_step((5, 4, 8, 8), seed=7)
    roll = flow_step(v, x, s, sn, 0.7, noise=torch.randn_like(v), out_dtype=out_dtype, backend=backend)
    assert roll.x_next.dtype == out_dtype
    replay = flow_step(v, x, s, sn, 0.7, x_next=roll.x_next, backend=backend)
    assert torch.equal(roll.log_prob, replay.log_prob)


def _grads(fn, v, x, mu_ref, weights):
    v = v.detach().clone().requires_grad_(True)
    x = x.detach().clone().requires_grad_(True)
    out = fn(v, x)
    loss = (weights[0] * out.log_prob).sum() + (weights[1] * out.kl).sum() + (out.mean * weights[2]).sum()
    loss.backward()
    return v.grad, x.grad


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("logprob", LOGPROBS)
@pytest.mark.parametrize("kl_divisor", ["flow_grpo", "step_std", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_matches_autograd_through_reference(family, logprob, kl_divisor, dtype):
    shape = (3, 5, 7, 3)
    v, x, s, sn = random_step(shape, dtype, seed=11)
    x_next, mu_ref = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    w = (torch.randn(3), torch.randn(3), torch.randn(shape) * 1e-2)

    def run(backend):
        return lambda v_, x_: flow_step(v_, x_, s, sn, 0.7, family=family, logprob=logprob, x_next=x_next,
                                        mu_ref=mu_ref, kl_divisor=kl_divisor, return_mean=True, backend=backend)

    gv, gx = _grads(run("triton"), v, x, mu_ref, w)
    rv, rx = _grads(run("torch"), v, x, mu_ref, w)
    assert gv.dtype == dtype and gx.dtype == dtype
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-3)
    _close(gv, rv, **tol)
    _close(gx, rx, **tol)


def test_grad_x_skipped_when_not_needed(monkeypatch):
    """The backward launch writes grad x only when x needs it (autograd would drop an unneeded one silently, so
    the launcher itself is watched)."""
    from fastgrpo.kernels import flow_step as kernels

    launches, launch = [], kernels.flow_step_bwd

    def watched(*args):
        grad_v, grad_x = launch(*args)
        launches.append((args[-1], grad_x.numel()))
        return grad_v, grad_x

    monkeypatch.setattr(kernels, "flow_step_bwd", watched)
    v, x, s, sn = random_step((2, 3, 4), seed=2)
    x_next = torch.randn_like(x)
    v.requires_grad_(True)
    flow_step(v, x, s, sn, 0.7, x_next=x_next, backend="triton").log_prob.sum().backward()
    assert launches == [(False, 0)] and v.grad.abs().sum() > 0
    x.requires_grad_(True)
    flow_step(v, x, s, sn, 0.7, x_next=x_next, backend="triton").log_prob.sum().backward()
    assert launches[-1] == (True, x.numel()) and x.grad.abs().sum() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_gradcheck_fp64(family):
    v, x, s, sn = random_step((2, 3, 4), torch.float64, seed=4, include_first=False, include_last=False)
    x_next, mu_ref = torch.randn_like(v), torch.randn_like(v)
    v.requires_grad_(True)
    x.requires_grad_(True)

    def f(v_, x_):
        out = reference.flow_step(v_, x_, s.double(), sn.double(), 0.6, family=family, x_next=x_next,
                                  mu_ref=mu_ref)
        return out.log_prob, out.kl

    assert torch.autograd.gradcheck(f, (v, x))


def test_kernel_gradient_against_finite_differences_fp64_reference():
    """The kernel's analytic gradient vs central differences of the fp64 reference log-prob."""
    v, x, s, sn = random_step((2, 3, 5), seed=9, include_first=False)
    x_next = torch.randn_like(v)
    v.requires_grad_(True)
    flow_step(v, x, s, sn, 0.7, x_next=x_next, backend="triton").log_prob.sum().backward()
    vd = v.detach().double()
    fd = torch.zeros_like(vd)
    h = 1e-6
    for i in range(vd.numel()):
        e = torch.zeros_like(vd).view(-1)
        e[i] = h
        e = e.view_as(vd)
        lp = [reference.flow_step(vd + sgn * e, x.double(), s.double(), sn.double(), 0.7,
                                  x_next=x_next.double()).log_prob.sum() for sgn in (1, -1)]
        fd.view(-1)[i] = (lp[0] - lp[1]) / (2 * h)
    torch.testing.assert_close(v.grad.double(), fd, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_edges_are_finite(backend):
    """σ = 1 (no division by zero), σ' = 0, η = 0 (every family is Euler, log-prob finite, not NaN)."""
    v, x, _, _ = random_step((3, 4, 6), seed=12)
    s = torch.tensor([1.0, 0.5, 0.2])
    sn = torch.tensor([0.95, 0.3, 0.0])
    for family in FAMILIES:
        for eta in (0.0, 0.7):
            vv = v.clone().requires_grad_(True)
            out = flow_step(vv, x, s, sn, eta, family=family, noise=torch.randn_like(v), return_mean=True,
                            mu_ref=torch.randn_like(v), backend=backend)
            (out.log_prob.sum() + out.kl.sum()).backward()
            for t in (out.x_next, out.log_prob, out.mean, out.std, out.kl, vv.grad):
                assert torch.isfinite(t).all(), (family, eta)
            if eta == 0.0:
                torch.testing.assert_close(out.x_next, x + (sn - s).view(-1, 1, 1) * v, rtol=1e-5, atol=1e-5)
                assert torch.all(out.std == 0)
                if family != "cps":
                    assert torch.all(out.log_prob == 0)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_non_contiguous_inputs(backend):
    big_v, big_x, s, sn = random_step((6, 8, 5, 7), seed=13)
    v = big_v[1::2]                       # batch-strided view, used in place
    x = big_x.permute(0, 1, 3, 2)[1::2].transpose(2, 3)  # same values, odd strides (copied)
    noise = torch.randn(3, 7, 5, 8).permute(0, 3, 2, 1)
    got = flow_step(v, x, s[1::2], sn[1::2], 0.7, noise=noise, backend=backend, return_mean=True)
    want = reference.flow_step(v.contiguous(), x.contiguous(), s[1::2], sn[1::2], 0.7, noise=noise.contiguous(),
                               return_mean=True)
    _close(got.x_next, want.x_next, **TOL[torch.float32])
    _close(got.log_prob, want.log_prob, rtol=1e-4, atol=1e-4)


def test_scalar_and_broadcast_sigmas():
    v, x, _, _ = random_step((4, 3, 5), seed=14)
    noise = torch.randn_like(v)
    a = flow_step(v, x, 0.6, 0.5, 0.7, noise=noise, backend="triton")
    b = flow_step(v, x, torch.tensor(0.6), torch.tensor([0.5]), 0.7, noise=noise, backend="triton")
    c = flow_step(v, x, torch.full((4,), 0.6), torch.full((4,), 0.5), 0.7, noise=noise, backend="torch")
    _close(a.x_next, c.x_next, **TOL[torch.float32])
    assert torch.equal(a.x_next, b.x_next)


def test_kl_term_has_gradient_and_stays_finite_for_large_beta():
    v, x, s, sn = random_step((2, 3, 8), seed=15, include_first=False)
    mu_ref = flow_step(v, x, s, sn, 0.7, noise=torch.randn_like(v), return_mean=True, backend="torch").mean
    v2 = (v + 0.1 * torch.randn_like(v)).requires_grad_(True)
    for beta in (0.0, 0.04, 1.0, 100.0):
        v2.grad = None
        out = flow_step(v2, x, s, sn, 0.7, x_next=torch.randn_like(v), mu_ref=mu_ref, backend="triton")
        (out.log_prob.mean() + beta * out.kl.mean()).backward()
        assert torch.isfinite(v2.grad).all()
        if beta > 0:
            assert out.kl.min() > 0 and v2.grad.abs().sum() > 0


def test_bad_input_names_the_argument():
    v, x, s, sn = random_step((2, 3, 4), seed=16)
    # each message begins with the argument's name (anchored: "sigma" must not pass on a sigma_next message)
    cases = [
        (dict(x=x[:1]), r"^x has shape"),
        (dict(noise=torch.randn(2, 3, 5)), r"^noise has shape"),
        (dict(x_next=torch.randn(2, 4, 4)), r"^x_next has shape"),
        (dict(sigma_next=torch.tensor([0.9, 0.9]), sigma=torch.tensor([0.5, 0.5])), r"^sigma_next must satisfy"),
        (dict(sigma=torch.tensor([1.5, 0.5])), r"^sigma must lie in"),
        (dict(eta=-0.1), r"^eta must be >= 0"),
        (dict(family="sde"), r"^family must be one of"),
        (dict(logprob="gauss"), r"^logprob must be one of"),
        (dict(kl_divisor="g"), r"^kl_divisor must be one of"),
        (dict(noise=torch.randn_like(v), seed=3), r"^give at most one of noise, seed and x_next"),
        (dict(sigma=torch.ones(3) * 0.5), r"^sigma must have 1 or batch=2 elements"),
        (dict(v=torch.randn(2)), r"^v must have a batch dim"),
        (dict(out_dtype=torch.int32), r"^out_dtype must be a floating-point"),
    ]
    for override, name in cases:
        kw = dict(v=v, x=x, sigma=s, sigma_next=sn, eta=0.7)
        kw.update(override)
        args = [kw.pop(k) for k in ("v", "x", "sigma", "sigma_next", "eta")]
        with pytest.raises(ValueError, match=name):
            flow_step(*args, **kw)


def test_nan_check_is_opt_in():
    v, x, s, sn = random_step((2, 3, 4), seed=17)
    v[0, 0, 0] = float("nan")
    flow_step(v, x, s, sn, 0.7, backend="torch")  # no check, no sync
    with pytest.raises(ValueError, match="v contains NaN"):
        flow_step(v, x, s, sn, 0.7, check=True)


def test_multi_block_rows_reduce_in_one_launch():
    """Rows longer than one block: the last program of each row sums the partials; counters are left at zero."""
    from fastgrpo.kernels.flow_step import _COUNTERS

    v, x, s, sn = random_step((2, 3, 70, 50), seed=18)  # 10,500 elements per sample: 3 blocks
    x_next, mu_ref = torch.randn_like(v), torch.randn_like(v)
    got = flow_step(v, x, s, sn, 0.7, x_next=x_next, mu_ref=mu_ref, backend="triton")
    want = flow_step(v, x, s, sn, 0.7, x_next=x_next, mu_ref=mu_ref, backend="torch")
    _close(got.log_prob, want.log_prob, rtol=1e-5, atol=1e-5)
    _close(got.kl, want.kl, rtol=1e-5, atol=1e-5)
    assert torch.all(_COUNTERS[v.device] == 0)
    again = flow_step(v, x, s, sn, 0.7, x_next=x_next, mu_ref=mu_ref, backend="triton")
    assert torch.equal(again.log_prob, got.log_prob) and torch.equal(again.kl, got.kl)
