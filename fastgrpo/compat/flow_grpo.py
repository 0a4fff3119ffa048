"""Drop-in for Flow-GRPO's step (yifan123/flow_grpo, ``flow_grpo/diffusers_patch/sd3_sde_with_logprob.py``).

    from fastgrpo.compat.flow_grpo import sde_step_with_logprob

Same signature, tuple and numbers (fp32 math, both ``sde`` and ``cps``), through the fused ``flow_step`` op.
Differences, all deliberate: σ is looked up for the whole batch on the device (the anchor calls
``index_for_timestep(t).item()`` per sample — a host sync each); ``timestep`` may be a scalar, (1,) or (B,);
the log-prob is finite (0) at ``noise_level=0`` where the anchor's is NaN; an unknown ``sde_type`` raises a
ValueError (the anchor an UnboundLocalError). On device tensors a timestep missing from the schedule is not
detected (that check would be a sync); on CPU it raises like the anchor.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..ops import flow_step
from ._common import per_sample_view, randn_like_anchor

_FAMILY = {"sde": ("flow_sde", "full"), "cps": ("cps", "cps")}


def step_indices(scheduler, timestep, batch: int, device: torch.device) -> Tensor:
    """Vectorised ``FlowMatchEulerDiscreteScheduler.index_for_timestep``: the first exact match, or the second
    when the timestep appears more than once (diffusers' rule for the very first step). No host sync."""
    schedule = scheduler.timesteps.to(device)
    t = torch.as_tensor(timestep, device=device, dtype=schedule.dtype).reshape(-1)
    matches = schedule[None, :] == t[:, None]
    if device.type == "cpu" and not bool(matches.any(1).all()):
        raise ValueError(f"timestep {t.tolist()} is not in the scheduler's timesteps")
    rank = matches.cumsum(1)
    first = (rank == 1).int().argmax(1)
    second = (rank == 2).int().argmax(1)
    index = torch.where(rank[:, -1] > 1, second, first)
    return index.expand(batch) if index.numel() == 1 else index


def sde_step_with_logprob(self, model_output: Tensor, timestep, sample: Tensor, noise_level: float = 0.7,
                          prev_sample: Optional[Tensor] = None, generator=None, sde_type: str = "sde",
                          return_sqrt_dt: bool = False):
    """One SD3 flow step with its log-prob. ``self``: a diffusers ``FlowMatchEulerDiscreteScheduler``.

    sde: g = η·sqrt(σ/(1−σ)) (1 − σ_1 at σ = 1), μ = x(1 + g²Δ/(2σ)) + v(1 + g²(1−σ)/(2σ))Δ, x' = μ + g·sqrt(−Δ)·ε,
         log p = mean(−(x'−μ)²/(2g²(−Δ)) − log(g·sqrt(−Δ)) − log sqrt(2π)); returns std_dev_t = g.
    cps: s = σ'·sin(η·π/2), μ = (1−σ')x̂0 + sqrt(σ'²−s²)x̂1, x' = μ + s·ε, log p = mean(−(x'−μ)²); std_dev_t = s.
    Returns ``(prev_sample, log_prob, prev_sample_mean, std_dev_t[, sqrt(−Δ)])``, σ-shaped values as (B, 1, ...).
    """
    if sde_type not in _FAMILY:
        raise ValueError(f"sde_type must be 'sde' or 'cps', got {sde_type!r}")
    family, logprob = _FAMILY[sde_type]
    device, batch, nd = sample.device, sample.shape[0], sample.dim()
    index = step_indices(self, timestep, batch, device)
    sigmas = self.sigmas.to(device)
    sigma, sigma_next = sigmas[index], sigmas[index + 1]
    noise = None
    if prev_sample is None:
        # the anchor upcasts model_output to fp32 first, so its noise is fp32
        noise = randn_like_anchor(model_output.shape, generator, model_output.device, torch.float32)
    else:
        prev_sample = prev_sample.float()
    out = flow_step(model_output, sample, sigma, sigma_next, float(noise_level), family=family, logprob=logprob,
                    noise=noise, x_next=prev_sample, return_mean=True)
    sqrt_dt = torch.sqrt(sigma - sigma_next)
    std_dev_t = out.std / sqrt_dt if sde_type == "sde" else out.std
    result = (out.x_next, out.log_prob, out.mean, per_sample_view(std_dev_t, nd))
    if return_sqrt_dt:
        result += (per_sample_view(sqrt_dt, nd),)
    return result
