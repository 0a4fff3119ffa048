"""``fastgrpo demo``: sample with every step family on an analytic flow and check what GRPO relies on.

The data distribution is Gaussian, x0 ~ N(m, c²I), so the ideal velocity is known in closed form:
x_σ = (1−σ)·x0 + σ·ε, E[x0 | x_σ] = m + (1−σ)c²/((1−σ)²c² + σ²)·(x_σ − (1−σ)m), v = (x_σ − E[x0 | x_σ])/σ.
``ode``, ``flow_sde`` and ``dance_sde`` keep the flow's marginals as the step count grows, so they end near
N(m, c²) (Euler's coarse steps shrink the spread a little); ``cps`` and ``ddim_sde`` replace a fixed fraction of
the noise at every step (DDIM-η-like, σ'-scaled rather than sqrt(−Δ)-scaled), so their final spread stays below c.
The demo prints the final mean and std, the mean log-prob of the rollout, and the replay check: the log-probs
recomputed from the stored samples give a PPO ratio of exactly 1.
"""
from __future__ import annotations

import time

import torch

from ._backend import pick_backend
from .ops import flow_step
from .reference.flow_step import FAMILIES


def _velocity(x: torch.Tensor, sigma: float, m: float, c: float) -> torch.Tensor:
    a = 1.0 - sigma
    x0 = m + a * c * c / (a * a * c * c + sigma * sigma) * (x - a * m)
    return (x - x0) / sigma


def run(batch: int = 32, latent=(16, 32, 32), steps: int = 40, shift: float = 3.0, eta: float = 0.7,
        m: float = 0.5, c: float = 0.8, device: str | None = None) -> list[dict]:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    sigmas = (shift * t / (1 + (shift - 1) * t)).tolist()
    rows = []
    path = pick_backend("flow_step", device)
    for family in FAMILIES:
        logprob = "cps" if family == "cps" else "full"
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn((batch, *latent), generator=gen).to(device)
        lp_sum = torch.zeros(batch, device=device)
        worst = 0.0
        elapsed = 0.0
        for i in range(steps):
            s, sn = sigmas[i], sigmas[i + 1]
            v = _velocity(x, s, m, c)
            noise = torch.randn(x.shape, generator=gen).to(device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = flow_step(v, x, s, sn, eta, family=family, logprob=logprob, noise=noise)
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed += time.perf_counter() - start
            replay = flow_step(v, x, s, sn, eta, family=family, logprob=logprob, x_next=out.x_next)
            worst = max(worst, (torch.exp(replay.log_prob - out.log_prob) - 1).abs().max().item())
            lp_sum += out.log_prob
            x = out.x_next
        rows.append(dict(family=family, final_mean=x.mean().item(), final_std=x.std().item(),
                         mean_log_prob=(lp_sum / steps).mean().item(), max_ratio_error=worst,
                         ms_per_step=1e3 * elapsed / steps))
    print(f"fastgrpo demo: {batch}×{tuple(latent)} latents, {steps} steps (shift {shift}, η {eta}), "
          f"flow_step on the {path} path ({device.type}); target N({m}, {c}²)")
    print(f"{'family':<10} {'mean':>8} {'std':>8} {'mean log p':>11} {'|ratio−1|':>10} {'ms/step':>9}")
    for r in rows:
        print(f"{r['family']:<10} {r['final_mean']:>8.4f} {r['final_std']:>8.4f} {r['mean_log_prob']:>11.4f} "
              f"{r['max_ratio_error']:>10.1e} {r['ms_per_step']:>9.3f}")
    return rows
