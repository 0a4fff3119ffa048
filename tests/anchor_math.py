"""The anchors' step formulas written out per the papers and METHODS §1, in fp64 and per sample — the oracle the
compat shims are tested against (independent of fastgrpo's op and reference)."""
from __future__ import annotations

import math

import torch


def flow_grpo_sde(v, x, sigma, sigma_next, eta, noise=None, x_next=None, sigma_1=None):
    """Flow-GRPO `sde`: returns x', log p (B,), μ, g (std_dev_t), sqrt(−Δ), all fp64."""
    v, x = v.double(), x.double()
    shape = (-1,) + (1,) * (x.dim() - 1)
    s, sn = sigma.double().reshape(shape), sigma_next.double().reshape(shape)
    sigma_1 = sn if sigma_1 is None else sigma_1
    g = eta * torch.sqrt(s / (1 - torch.where(s == 1, sigma_1, s)))
    dt = sn - s
    mu = x * (1 + g**2 / (2 * s) * dt) + v * (1 + g**2 * (1 - s) / (2 * s)) * dt
    std = g * torch.sqrt(-dt)
    if x_next is None:
        x_next = mu + std * noise.double()
    x_next = x_next.double()
    lp = -((x_next - mu) ** 2) / (2 * std**2) - torch.log(std) - math.log(math.sqrt(2 * math.pi))
    return x_next, lp.mean(tuple(range(1, x.dim()))), mu, g, torch.sqrt(-dt)


def cps(v, x, sigma, sigma_next, eta, noise=None, x_next=None):
    v, x = v.double(), x.double()
    shape = (-1,) + (1,) * (x.dim() - 1)
    s, sn = sigma.double().reshape(shape), sigma_next.double().reshape(shape)
    std = sn * math.sin(eta * math.pi / 2)
    x0, x1 = x - s * v, x + v * (1 - s)
    mu = x0 * (1 - sn) + x1 * torch.sqrt(sn**2 - std**2)
    if x_next is None:
        x_next = mu + std * noise.double()
    x_next = x_next.double()
    return x_next, (-((x_next - mu) ** 2)).mean(tuple(range(1, x.dim()))), mu, std


def dance(v, x, sigma, sigma_next, eta, noise=None, x_next=None):
    """DanceGRPO `flux_step` with sde_solver: quadratic log-prob only (the anchor's constants are discarded)."""
    v, x = v.double(), x.double()
    dsigma = sigma_next - sigma
    std = eta * math.sqrt(-dsigma)
    score = -(x + (1 - sigma) * v) / sigma
    mu = x + dsigma * v - 0.5 * eta**2 * score * dsigma
    if x_next is None:
        x_next = mu + std * noise.double()
    x_next = x_next.double()
    lp = (-((x_next - mu) ** 2) / (2 * std**2)).mean(tuple(range(1, x.dim())))
    return x_next, x - sigma * v, lp


def dpm_pp_2m(x, d_a, sigma, sigma_next, d_b=None, sigma_prev=None):
    """DPM-Solver++ 2M midpoint in flow form (METHODS §1), fp64 scalars."""
    x, d_a = x.double(), d_a.double()
    if sigma_next == 0:
        return d_a
    lam = lambda s: -math.inf if s == 1 else math.log((1 - s) / s)  # noqa: E731
    h = lam(sigma_next) - lam(sigma)
    D = d_a
    if d_b is not None:
        r = (lam(sigma) - lam(sigma_prev)) / h
        D = d_a + (d_a - d_b.double()) / (2 * r)
    return (sigma_next / sigma) * x - (1 - sigma_next) * math.expm1(-h) * D
