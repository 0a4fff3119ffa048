"""Drop-in for AdaGRPO's step log-prob (Bujiazi/GRPO-Series, ``utils/utilities.py``, ``flowsde_prob_func``).

    from fastgrpo.compat.adagrpo import flowsde_prob_func

Same signature and numbers: Flow-GRPO's sde mean in fp32 and the quadratic-only log-prob. Differences: the
log-prob is averaged over all non-batch dims (the anchor hard-codes dims (1, 2), right for packed (B, L, C) FLUX
latents and the same numbers there, but (B, W)-shaped for 4-D latents); at η = 0 it is 0 instead of NaN/−inf.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..reference.flow_step import step_coefficients


def flowsde_prob_func(image_latents: Tensor, pred_velocity: Tensor, sigma_input, sigma_target, eta: float):
    """μ = x + Δ(v + g²/(2σ)·(x + (1−σ)v)), g = η·sqrt(σ/(1−σ)) (1 − σ_target at σ = 1), Δ = σ_target − σ.

    Returns ``(log_prob_fn, mean_next)`` where ``log_prob_fn(latents, mean_next_latents)`` is
    −mean((latents − mean_next_latents)²)/(2·g²·|Δ|) per sample (latents detached; broadcasting as the anchor:
    (G, ...) latents against a (1, ...) mean give (G,)).
    """
    device = image_latents.device
    sigma = torch.as_tensor(sigma_input, dtype=torch.float32, device=device).reshape(1)
    sigma_next = torch.as_tensor(sigma_target, dtype=torch.float32, device=device).reshape(1)
    a, b, std, _ = step_coefficients(sigma, sigma_next, float(eta), "flow_sde")
    shape = (1,) * image_latents.dim()
    mean_next = a.reshape(shape) * image_latents.float() + b.reshape(shape) * pred_velocity.float()
    variance = (std * std).reshape(())  # 2·g²·|Δ| = 2·s²

    def log_prob_fn(latents: Tensor, mean_next_latents: Tensor) -> Tensor:
        sq = (latents.detach().float() - mean_next_latents).pow(2)
        sq = sq.mean(dim=tuple(range(1, sq.dim())))
        return torch.where(variance > 0, -sq / (2 * torch.where(variance > 0, variance, 1.0)), torch.zeros_like(sq))

    return log_prob_fn, mean_next
