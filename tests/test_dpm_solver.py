"""DPM-Solver++ 2M: kernel vs reference, reference vs the formula, and exactness on a straight flow path."""
import pytest
import torch

import anchor_math
from fastgrpo.ops import dpm_solver_2m_step
from helpers import shifted_sigmas


@pytest.mark.parametrize("shape", [(1, 16, 9, 7), (5, 37, 3), (2, 3, 4, 5, 6)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("has_prev", [False, True])
def test_kernel_matches_reference(shape, dtype, has_prev):
    sig = shifted_sigmas(10)
    B = shape[0]
    i = torch.randint(1, 10, (B,))
    i[-1] = 9  # the final step (σ' = 0) in the batch
    v, x = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    prev = dict(x0_prev=torch.randn(shape), sigma_prev=sig[i - 1]) if has_prev else {}
    got = dpm_solver_2m_step(v, x, sig[i], sig[i + 1], backend="triton", **prev)
    want = dpm_solver_2m_step(v, x, sig[i], sig[i + 1], backend="torch", **prev)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[0][-1], got[1][-1])  # final step: x' = x̂0


def test_reference_matches_formula():
    sig = shifted_sigmas(10)
    x, v, d_b = torch.randn(1, 3, 4), torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    for k in (1, 4, 8):
        s, sn, sp = sig[k].item(), sig[k + 1].item(), sig[k - 1].item()
        want = anchor_math.dpm_pp_2m(x, x - s * v, s, sn, d_b, sp)
        for backend in ("torch", "triton"):
            got, _ = dpm_solver_2m_step(v, x, s, sn, d_b, sp, backend=backend)
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_exact_on_a_straight_path(backend):
    """x_σ = (1−σ)·x0 + σ·x1 has constant v = x1 − x0 and constant x̂0: every order is exact."""
    x0, x1 = torch.randn(2, 8, 6), torch.randn(2, 8, 6)
    sig = shifted_sigmas(7).tolist()
    x = x1.clone()
    x0_prev = sigma_prev = None
    for i in range(7):
        x, x0_hat = dpm_solver_2m_step(x1 - x0, x, sig[i], sig[i + 1], x0_prev, sigma_prev, backend=backend)
        x0_prev, sigma_prev = x0_hat, sig[i]
        torch.testing.assert_close(x, (1 - sig[i + 1]) * x0 + sig[i + 1] * x1, rtol=1e-5, atol=1e-5)


def test_second_order_beats_first_on_a_curved_path():
    """With a σ-dependent denoiser x̂0(σ) = a + σ²·b (v = (x − x̂0)/σ), the 2M update's error against a converged
    fine-grid solution is far below first order's."""
    a, b = torch.randn(1, 64, dtype=torch.float64), torch.randn(1, 64, dtype=torch.float64)

    def solve(sigmas, second_order):
        x = torch.randn(1, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        x0_prev = sp = None
        for s, sn in zip(sigmas[:-1], sigmas[1:]):
            v = (x - (a + s * s * b)) / s
            x, x0_hat = dpm_solver_2m_step(v, x, s, sn, x0_prev, sp, backend="torch", out_dtype=torch.float64)
            if second_order:
                x0_prev, sp = x0_hat, s
        return x

    coarse = shifted_sigmas(12).double()[:11]  # stop before σ = 0, where the last step collapses to x̂0
    fine = torch.cat([torch.linspace(coarse[i], coarse[i + 1], 401, dtype=torch.float64)[:-1] for i in range(10)]
                     + [coarse[-1:]])
    exact = solve(fine.tolist(), second_order=True)
    err1 = (solve(coarse.tolist(), False) - exact).abs().max().item()
    err2 = (solve(coarse.tolist(), True) - exact).abs().max().item()
    assert err2 < 0.3 * err1, (err1, err2)


def test_bad_input():
    v = torch.randn(2, 3)
    with pytest.raises(ValueError, match="x0_prev and sigma_prev"):
        dpm_solver_2m_step(v, v, 0.5, 0.4, x0_prev=v)
    with pytest.raises(ValueError, match="sigma_next"):
        dpm_solver_2m_step(v, v, 0.5, 0.6)
    with pytest.raises(ValueError, match="x0_prev"):
        dpm_solver_2m_step(v, v, 0.5, 0.4, x0_prev=torch.randn(2, 4), sigma_prev=0.6)


def test_sample_dpm_is_the_2m_recursion_on_a_curved_path():
    """The rollout's DPM-Solver++ 2M sampler (AdaGRPO's anchors, the forward-process methods' rollouts) against
    the anchor's fp64 recursion on a σ-dependent denoiser, where the second-order history (the previous x̂0 and σ)
    matters."""
    from fastgrpo.train.rollout import sample_dpm

    g = torch.Generator().manual_seed(21)
    a, b = torch.randn(2, 64, generator=g, dtype=torch.float64), torch.randn(2, 64, generator=g, dtype=torch.float64)

    def velocity(x, sigma):  # the denoiser x̂0 = a + σ²b + σ·tanh(x)/2 depends on x: the path matters
        return (x - (a + sigma**2 * b + 0.5 * sigma * torch.tanh(x))) / sigma

    def model(x, sigma, text):
        return velocity(x.double(), sigma.double().view(-1, 1)).float()

    sig = shifted_sigmas(6)
    noise = torch.randn(2, 64, generator=g)
    got = sample_dpm(model, noise, sig, None, None, guidance=1.0)
    x, x0_prev, sigma_prev = noise.double(), None, None
    for s, sn in zip(sig.tolist()[:-1], sig.tolist()[1:]):
        x0 = x - s * velocity(x, s)
        x, x0_prev, sigma_prev = anchor_math.dpm_pp_2m(x, x0, s, sn, x0_prev, sigma_prev), x0, s
    torch.testing.assert_close(got.double(), x, rtol=1e-4, atol=1e-4)
    first_order = noise.double()
    for s, sn in zip(sig.tolist()[:-1], sig.tolist()[1:]):
        first_order = anchor_math.dpm_pp_2m(first_order, first_order - s * velocity(first_order, s), s, sn)
    assert (first_order - x).abs().max() > 1e-2  # the history changes the result: the check can tell them apart
