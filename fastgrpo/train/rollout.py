"""Rollouts of the flow model with fastgrpo's ops: SDE inside the window (fused step + log-prob, in-kernel noise
from a seed), Euler outside it, or DPM-Solver++ 2M after the window (Flash). Only the window steps are stored for
training.

Flash's tail starts without history (its first step first order, as DPM-Solver++ 2M starts): the x̂0 of the
window's last step belongs to the ODE path through the sample *before* that step's noise, so a second-order step
extrapolating from it folds the SDE noise into the slope. Measured against a 50-step Euler finish of the same
trajectories (benchmarks/study_flash_tail.py; T = 10, 4 tail steps): a within-group reward correlation of
0.938–0.990 started fresh vs 0.933–0.973 seeded with the window's x̂0; on a straight path a fresh tail is exact."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..ops import dpm_solver_2m_step, flow_step
from ..world import TextEmbeddings


@dataclass
class Trajectory:
    latents: Tensor
    """(G, ...) final latents."""
    x: list[Tensor]
    """Per window step: the input sample (G, ...)."""
    x_next: list[Tensor]
    log_prob: list[Tensor]
    """Per window step: (G,) log-prob of the stored x_next (the PPO 'old' log-prob)."""
    sigma: list[float]
    sigma_next: list[float]
    mean: list[Tensor] = field(default_factory=list)
    """Per window step: the rollout's mean μ_old (only with ``keep_mean``: GRPO-Guard's RatioNorm needs it)."""
    shared_input: bool = False
    """All G samples share each stored input x (G²RPO's branches): one model call serves the group."""


def guided_velocity(model, x: Tensor, sigma: float, text: TextEmbeddings, empty: TextEmbeddings | None,
                    guidance: float) -> Tensor:
    """v, with classifier-free guidance v_u + g·(v_c − v_u) when ``guidance`` > 1 (one batched forward).

    ``model(x, sigma (B,), text) -> v``: a backbone's velocity bound to a transformer (``Backbone.denoiser``); its
    ``guidance_at(σ, g)``, when it has one, may change the scale per step (Wan2.2 A14B's low-noise expert)."""
    s = torch.full((x.shape[0],), sigma, device=x.device)
    at = getattr(model, "guidance_at", None)
    guidance = guidance if at is None else at(sigma, guidance)
    if guidance <= 1.0 or empty is None:
        return model(x, s, text)
    both = TextEmbeddings(torch.cat([text.hidden, empty.hidden]), torch.cat([text.pooled, empty.pooled]))
    v = model(torch.cat([x, x]), torch.cat([s, s]), both)
    v_c, v_u = v.chunk(2)
    return v_u + guidance * (v_c - v_u)


@torch.no_grad()
def sample(model, noise: Tensor, sigmas: Tensor, text: TextEmbeddings, empty: TextEmbeddings | None, *,
           guidance: float, eta: float, family: str, logprob: str = "full", window: tuple[int, int] = (0, 0),
           seed: int = 0, flash: bool = False, keep_mean: bool = False) -> Trajectory:
    """Integrate from ``noise`` along ``sigmas`` (T'+1 values). Steps in [window) are SDE and stored (with their
    means μ when ``keep_mean``)."""
    x = noise
    start, end = window
    traj = Trajectory(x, [], [], [], [], [])
    x0_prev = sigma_prev = None  # DPM history: the tail's own steps only
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        s, sn = sig[i], sig[i + 1]
        v = guided_velocity(model, x, s, text, empty, guidance)
        if start <= i < end:
            out = flow_step(v, x, s, sn, eta, family=family, logprob=logprob, seed=seed * 1009 + i,
                            return_mean=keep_mean)
            if keep_mean:
                traj.mean.append(out.mean)
            traj.x.append(x)
            traj.x_next.append(out.x_next)
            traj.log_prob.append(out.log_prob)
            traj.sigma.append(s)
            traj.sigma_next.append(sn)
            x = out.x_next
        elif flash and i >= end and end > 0:
            x, x0_prev = dpm_solver_2m_step(v, x, s, sn, x0_prev, sigma_prev)
            sigma_prev = s
        else:
            x = x + (sn - s) * v
    traj.latents = x
    return traj


@torch.no_grad()
def sample_dpm(model, noise: Tensor, sigmas: Tensor, text: TextEmbeddings, empty: TextEmbeddings | None, *,
               guidance: float) -> Tensor:
    """Deterministic DPM-Solver++ 2M from ``noise`` along ``sigmas`` (a cheap ODE sample: AdaGRPO's anchors with
    ``adagrpo.anchor_steps``)."""
    x, x0_prev, sigma_prev = noise, None, None
    sig = sigmas.tolist()
    for s, sn in zip(sig[:-1], sig[1:]):
        v = guided_velocity(model, x, s, text, empty, guidance)
        x, x0_prev = dpm_solver_2m_step(v, x, s, sn, x0_prev, sigma_prev)
        sigma_prev = s
    return x
