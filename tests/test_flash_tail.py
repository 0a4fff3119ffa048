"""Flash's DPM-Solver++ tail against velocity fields whose ODE solution is known: it must land where a fine Euler
finish (and the exact solution) of the same trajectory lands."""
import math

import pytest
import torch

from fastgrpo.train.config import WindowConfig
from fastgrpo.train.rollout import sample
from fastgrpo.train.schedule import flash_sigmas, flash_steps, shifted, sigmas

T, SHIFT, RATIO, END = 10, 3.0, 0.4, 4  # the default job; a window [0, 4)
SHAPE = (8, 4, 4, 4)


def _finish(model, grid, flash):
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    return sample(model, noise, grid, None, None, guidance=1.0, eta=0.7, family="flow_sde", window=(0, END), seed=3,
                  flash=flash).latents


def _fine(base, steps=400):
    return torch.cat([base[:END], shifted(torch.linspace(1 - END / T, 0, steps + 1, dtype=torch.float64), SHIFT)
                      .float()])


def _window_end(model, base):
    """x at σ_END after the SDE window (the same noise and in-window seeds as every finish)."""
    return _finish(model, base[:END + 1], False)


def test_the_default_tail_is_longer_than_mixgrpos_single_jump():
    assert flash_steps(END, T, RATIO, 1) == 1  # MixGRPO's grid at T = 10, r = 0.4: one step to σ = 0
    assert flash_steps(END, T, RATIO, WindowConfig.model_fields["flash_min_steps"].default) == 4
    assert flash_steps(8, T, RATIO, 4) == 2  # never more steps than the schedule has left
    assert flash_steps(4, 25, RATIO, 4) == 7  # MixGRPO's own count where it is larger
    grid = flash_sigmas(sigmas(T, SHIFT), END, T, SHIFT, RATIO)
    assert len(grid) == END + 4 + 1 and grid[END] == sigmas(T, SHIFT)[END] and grid[-1] == 0


@pytest.mark.parametrize("min_steps", [1, 2, 4, 6])
def test_straight_path_tail_is_exact(min_steps):
    """v(x, σ) = x1 − x0 (a fixed pair): from x_e at σ_e the ODE lands on x_e − σ_e·(x1 − x0) for any step count."""
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(SHAPE[1:], generator=g), torch.randn(SHAPE[1:], generator=g)
    model = lambda x, sigma, text: (x1 - x0).expand_as(x)  # noqa: E731
    base = sigmas(T, SHIFT)
    exact = _window_end(model, base) - base[END] * (x1 - x0)
    flash = _finish(model, flash_sigmas(base, END, T, SHIFT, RATIO, min_steps), True)
    torch.testing.assert_close(flash, exact, atol=1e-5, rtol=0)
    torch.testing.assert_close(_finish(model, _fine(base), False), exact, atol=1e-5, rtol=0)


def test_curved_path_default_tail_matches_a_fine_euler_finish():
    """Data N(μ, s²) per element, x_σ = (1 − σ)·x0 + σ·ε: the marginal field is
    v(x, σ) = −μ + (sd'(σ)/sd(σ))·(x − (1 − σ)μ), sd(σ) = sqrt((1 − σ)²s² + σ²), and the ODE from x_e at σ_e lands on
    μ + s·(x_e − (1 − σ_e)μ)/sd(σ_e) (the z-score is kept). Tolerance, mean |error| / s against that landing point:
    a 2000-step Euler finish ≤ 0.002; the default tail (4 DPM-Solver++ steps) ≤ 0.08 — no worse than the 6-step
    Euler finish it replaces and at most a quarter of MixGRPO's single jump's error (measured: 0.061, 0.107, 0.578)."""
    mu, s = 1.0, 1.5

    def sd(sigma):
        return math.sqrt((1 - sigma) ** 2 * s ** 2 + sigma ** 2)

    def model(x, sigma, text):
        sg = float(sigma[0])
        slope = (sg - (1 - sg) * s ** 2) / sd(sg) ** 2
        return -mu + slope * (x - (1 - sg) * mu)

    base = sigmas(T, SHIFT)
    sigma_e = float(base[END])
    exact = mu + s * (_window_end(model, base) - (1 - sigma_e) * mu) / sd(sigma_e)
    error = lambda x: (x - exact).abs().mean().item() / s  # noqa: E731
    default = error(_finish(model, flash_sigmas(base, END, T, SHIFT, RATIO), True))
    assert error(_finish(model, _fine(base, 2000), False)) <= 0.002
    assert default <= 0.08
    assert default <= error(_finish(model, base, False))
    assert default <= error(_finish(model, flash_sigmas(base, END, T, SHIFT, RATIO, 1), True)) / 4
