"""fp64 oracle for ``fastgrpo.compat.mix_grpo``: our own transcription of the math of MixGRPO's
``fastvideo/utils/sampling_utils.py`` (flow_grpo_step, dpm_step with its first-, second- and third-order
DPM-Solver(++) updates, DPMState) and of the window rules of ``fastvideo/utils/grpo_states.py``, checked against
Tencent-Hunyuan/MixGRPO at commit e5cdd6a427778d8c8b2e7a48ce16972141adbe7c (2026-12-06).

Written in the anchor's form (log-SNR λ, D0/D1/D2, e^{±h}), per sample and in fp64 — not in the shim's
coefficient form — so the two are independent. NaN where the anchor's math is NaN (std 0).
"""
from __future__ import annotations

import math

import numpy as np
import torch

F64 = torch.float64


def _t(value) -> torch.Tensor:
    return torch.as_tensor(value, dtype=F64)


def gaussian_log_prob(x_next, mean, std):
    """Mean over non-batch dims of −(x'−μ)²/(2s²) − log s − log √(2π) (the anchor's full Gaussian)."""
    x_next, mean, std = x_next.double(), mean.double(), _t(std)
    lp = -((x_next - mean) ** 2) / (2 * std**2) - torch.log(std) - math.log(math.sqrt(2 * math.pi))
    return lp.mean(tuple(range(1, lp.dim())))


def flow_grpo_step(v, x, eta, sigmas, index, noise=None, prev_sample=None, determistic=False):
    """Returns (x', x̂0, μ, s) in fp64; x' = μ + s·ε, the given ``prev_sample``, or Euler (``determistic``)."""
    v, x = v.double(), x.double()
    sigmas = [float(s) for s in sigmas]
    s, s_next = _t(sigmas[index]), _t(sigmas[index + 1])
    dt = s_next - s
    denominator = 1 - (sigmas[1] if float(s) == 1.0 else s)
    g = torch.sqrt(s / denominator) * eta
    mean = x * (1 + g**2 / (2 * s) * dt) + v * (1 + g**2 * (1 - s) / (2 * s)) * dt
    std = g * torch.sqrt(-dt)
    if prev_sample is None:
        prev_sample = mean + std * noise.double()
    if determistic:
        prev_sample = x + dt * v
    return prev_sample, x - s * v, mean, std


def _lam(sigma):
    sigma = _t(sigma)
    return torch.log(1 - sigma) - torch.log(sigma)


def dpm_update(algorithm, solver_type, order, history, sigmas, i, x):
    """One multistep update from x at σ_i to σ_{i+1}; ``history`` newest first (m0, m1, m2).

    Returns (ODE sample, SDE mean, SDE noise std σ_t·dt_sqrt), fp64.
    """
    x = x.double()
    m = [h.double() for h in history]
    s_t, s_0 = _t(sigmas[i + 1]), _t(sigmas[i])
    a_t, a_0 = 1 - s_t, 1 - s_0
    h = _lam(s_t) - _lam(s_0)
    D0 = m[0]
    if order >= 2:
        r0 = (_lam(s_0) - _lam(sigmas[i - 1])) / h
        D1 = (1.0 / r0) * (m[0] - m[1])
    if order == 3:
        r1 = (_lam(sigmas[i - 1]) - _lam(sigmas[i - 2])) / h
        D1_0, D1_1 = (1.0 / r0) * (m[0] - m[1]), (1.0 / r1) * (m[1] - m[2])
        D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
        D2 = (1.0 / (r0 + r1)) * (D1_0 - D1_1)
    em, em2, ep, ep2 = torch.exp(-h), torch.exp(-2 * h), torch.exp(h), torch.exp(2 * h)
    if algorithm == "dpmsolver++":
        ode = (s_t / s_0) * x - a_t * (em - 1) * D0
        mean = (s_t / s_0 * em) * x + a_t * (1 - em2) * D0
        if order == 2 and solver_type == "midpoint":
            ode = ode - 0.5 * a_t * (em - 1) * D1
            mean = mean + 0.5 * a_t * (1 - em2) * D1
        elif order >= 2:
            ode = ode + a_t * ((em - 1) / h + 1) * D1
            mean = mean + a_t * ((1 - em2) / (-2 * h) + 1) * D1
        if order == 3:
            ode = ode - a_t * ((em - 1 + h) / h**2 - 0.5) * D2
            mean = mean + a_t * ((1 - em2 - 2 * h) / (2 * h) ** 2 - 0.5) * D2
        return ode, mean, s_t * torch.sqrt(1 - em2)
    assert algorithm == "dpmsolver" and order <= 2
    ode = (a_t / a_0) * x - s_t * (ep - 1) * D0
    mean = (a_t / a_0) * x - 2 * s_t * (ep - 1) * D0
    if order == 2 and solver_type == "midpoint":
        ode = ode - 0.5 * s_t * (ep - 1) * D1
        mean = mean - s_t * (ep - 1) * D1
    elif order == 2:
        ode = ode - s_t * ((ep - 1) / h - 1) * D1
        mean = mean - 2 * s_t * ((ep - 1) / h - 1) * D1
    return ode, mean, s_t * torch.sqrt(ep2 - 1)


class DPMRun:
    """The anchor's dpm_step across a schedule: x̂0 history (fp64), the lower-order warm-up and its order rules."""

    def __init__(self, algorithm, solver_order, solver_type, sigmas, n_timesteps, state=True, store_dtype=None):
        self.store_dtype = store_dtype  # the anchor keeps x̂0 in the promoted dtype of sample and model output
        self.algorithm, self.solver_order, self.solver_type = algorithm, solver_order, solver_type
        self.sigmas = [float(s) for s in sigmas]
        self.n = n_timesteps
        self.state = state
        self.history = []
        self.lower_order_nums = 0

    def order_at(self, i):
        final = i == self.n - 1
        second = i == self.n - 2 and self.n < 15
        if not self.state or self.solver_order == 1 or self.lower_order_nums < 1 or final:
            return 1
        if self.solver_order == 2 or self.lower_order_nums < 2 or second:
            return 2
        return 3

    def push(self, x0):
        """A history entry made outside dpm_step (MixGRPO-Flash's window steps)."""
        self.history.insert(0, x0.double())
        self.lower_order_nums = min(self.lower_order_nums + 1, self.solver_order)

    def step(self, v, x, i, sde=False, noise=None):
        """Returns (x', x̂0, SDE mean, std), fp64."""
        x0 = x.double() - _t(self.sigmas[i]) * v.double()
        if self.store_dtype is not None:
            x0 = x0.to(self.store_dtype).double()
        order = self.order_at(i)
        history = [x0] + self.history
        ode, mean, std = dpm_update(self.algorithm, self.solver_type, order, history[:order], self.sigmas, i, x)
        if self.state:
            self.push(x0)
        x_next = mean + std * noise.double() if sde else ode
        return x_next, x0, mean, std


def window_sequence(iterations, *, iters_per_group, group_size, max_timesteps, cur_timestep=0,
                    sample_strategy="progressive", prog_overlap=False, prog_overlap_step=1,
                    max_iters_per_group=None, min_iters_per_group=None, roll_back=False,
                    exp_decay_thre_timestep=13, exp_decay_k=0.1, seeds=None):
    """MixGRPO's train loop: read the window, then update — for ``iterations`` iterations.

    Returns one (window steps, l ≥ max_timesteps, iteration counter) per iteration, the window read before the
    update as the anchor's train script does.
    """
    if sample_strategy == "decay":
        max_iters_per_group = iters_per_group if max_iters_per_group is None else max_iters_per_group
        min_iters_per_group = max(1, iters_per_group // 4) if min_iters_per_group is None else min_iters_per_group
    start, l, counter = cur_timestep, cur_timestep, 0
    out = []
    for it in range(iterations):
        window = list(range(l, min(l + group_size, max_timesteps)))
        complete = l >= max_timesteps if sample_strategy in ("progressive", "decay") else False
        out.append((window, complete, counter))
        if sample_strategy == "random":
            seed = None if seeds is None else seeds[it]
            l = int(np.random.default_rng(seed).integers(0, max_timesteps - group_size + 1))
            continue
        if sample_strategy == "progressive":
            tau = iters_per_group
        elif sample_strategy == "decay":
            p = l / max_timesteps
            tau = max(min_iters_per_group, int(max_iters_per_group * (1 - p) + min_iters_per_group * p))
        else:
            tau = math.ceil(iters_per_group * math.exp(-exp_decay_k * max(0, l - exp_decay_thre_timestep)))
        counter += 1
        if counter >= tau:
            counter = 0
            l += prog_overlap_step if prog_overlap else group_size
        if l > max_timesteps:
            if roll_back:
                l, counter = start, 0
            else:
                l = max_timesteps
    return out
