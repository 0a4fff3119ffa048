"""Pave-GRPO's decomposed kernels (arXiv 2606.01636; released code Bujiazi/GRPO-Series, ``src/method_pavegrpo.py``).

On G²RPO-style branches — one ODE trunk, at step k G one-step ``flow_sde`` branches x'_g ~ N(μ(x_k, v1), s²) from
the shared x_k, each finished by the ODE and scored — the coarse step σ_k → σ_{k+1} is also explained by finer
kernels: for each n ∈ S the interval is split into n sub-intervals uniform in σ, dt = Δ/n; n − 1 Euler sub-steps
y_1 = x_k + dt·v1 (v1 = f(x_k, σ_k), the coarse step's own velocity, reused), y_{i+1} = y_i + dt·f(y_i, σ_k + i·dt),
then a ``flow_sde`` Gaussian for the last sub-interval from σ_in = σ_k + (n−1)·dt to σ_{k+1} with velocity
v_n = f(y_{n−1}, σ_in): mean μ_n = y + dt·(v_n + g(σ_in)²/(2σ_in)·x̂1), std g(σ_in)·sqrt|dt|. The same observed x'_g
is scored under each kernel with the quadratic log-prob lp_n = −mean((x' − μ_n)²)/(2·g(σ_in)²·|dt|), and the step's
loss is L_k = mean_g(−A_g·e^{lp0 − sg(lp0)}) + (1/|S|)·Σ_{n∈S} mean_g(−A_g·e^{lp_n − sg(lp_n)}). Gradients flow
through v1, every f(y_i) and the y_i themselves (the chain is not detached): Σ_{n∈S}(n − 1) extra forwards per step.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor

from ..ops import flow_step


def decomposed_log_prob(model: Callable[[Tensor, float], Tensor], x: Tensor, v1: Tensor, sigma: float,
                        sigma_next: float, n: int, eta: float, x_next: Tensor) -> Tensor:
    """lp_n (B,) of the observed ``x_next`` under the n-way decomposed kernel above; ``model(y, σ) -> v`` runs the
    sub-step forwards (with grad). ``x`` and ``v1`` may hold one row shared by the B samples of ``x_next``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    dt = (sigma_next - sigma) / n
    y, v = x, v1
    for i in range(1, n):
        y = y + dt * v
        v = model(y, sigma + i * dt)
    sigma_in = sigma + (n - 1) * dt
    out = flow_step(v.expand_as(x_next), y.expand_as(x_next), sigma_in, sigma_next, eta, family="flow_sde",
                    logprob="quadratic", x_next=x_next)
    return out.log_prob
