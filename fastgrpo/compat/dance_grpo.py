"""Drop-in for DanceGRPO's step (XueZeyue/DanceGRPO, ``fastvideo/train_grpo_flux.py``, ``flux_step``).

    from fastgrpo.compat.dance_grpo import flux_step

Same signature and tuples. The anchor's log-prob is the quadratic term only (its normalising constants sit in a
discarded statement), and so is this one. Differences: fp32 math throughout, where the anchor rounds σ·v and Δσ·v
in bf16 when the model output is bf16 (so results agree within bf16 rounding); at η = 0 the log-prob is 0 where
the anchor raises ``ValueError: math domain error``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..ops import flow_step
from ..reference.flow_step import step_coefficients
from ._common import per_sample_view, schedule_value


def flux_step(model_output: Tensor, latents: Tensor, eta: float, sigmas: Tensor, index: int,
              prev_sample, grpo: bool, sde_solver: bool):
    """DanceGRPO step σ = sigmas[index] → σ' = sigmas[index+1], Δσ = σ' − σ, std = η·sqrt(−Δσ).

    μ = x + Δσ·(v + η²/(2σ)·(x + (1−σ)·v)) with ``sde_solver`` (else the Euler mean x + Δσ·v); x̂0 = x − σ·v.
    grpo: x' = μ + std·ε (ε from ``torch.randn_like``, global RNG, also without ``sde_solver``, as the anchor),
    log p = mean(−(x'−μ)²/(2·std²)); returns ``(prev_sample, pred_original_sample, log_prob)``.
    Otherwise returns ``(prev_sample_mean, pred_original_sample)``.
    """
    device, nd = latents.device, latents.dim()
    sigma = schedule_value(sigmas, index, device)
    sigma_next = schedule_value(sigmas, index + 1, device)
    dtype = torch.promote_types(latents.dtype, model_output.dtype)
    x0_hat = latents.to(dtype) - sigma * model_output.to(dtype)
    if grpo and sde_solver:
        noise = None
        if prev_sample is None:
            noise = torch.randn(latents.shape, device=device, dtype=dtype)  # = randn_like(prev_sample_mean)
        out = flow_step(model_output, latents, sigma, sigma_next, float(eta), family="dance_sde",
                        logprob="quadratic", noise=noise, x_next=prev_sample, out_dtype=dtype)
        return out.x_next, x0_hat, out.log_prob

    # the Euler mean (sde_solver=False) or a mean without sampling (grpo=False): small, rarely used paths
    family = "dance_sde" if sde_solver else "ode"
    s_t = torch.as_tensor(sigma, dtype=torch.float32, device=device).reshape(1)
    sn_t = torch.as_tensor(sigma_next, dtype=torch.float32, device=device).reshape(1)
    a, b, _, _ = step_coefficients(s_t, sn_t, float(eta), family)
    mean = per_sample_view(a, nd) * latents.float() + per_sample_view(b, nd) * model_output.float()
    if not grpo:
        return mean.to(dtype), x0_hat
    std = float(eta) * torch.sqrt(s_t - sn_t)
    if prev_sample is None:
        prev_sample = mean + per_sample_view(std, nd) * torch.randn(latents.shape, device=device, dtype=dtype)
    return prev_sample, x0_hat, _quadratic_log_prob(prev_sample, mean, std)


def _quadratic_log_prob(x_next: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    dims = tuple(range(1, mean.dim()))
    sq = (x_next.detach().float() - mean).pow(2).mean(dims)
    return torch.where(std > 0, -sq / (2 * torch.where(std > 0, std, 1.0) ** 2), torch.zeros_like(sq))
