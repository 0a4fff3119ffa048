"""Drop-in for AdaGRPO's step log-prob (Bujiazi/GRPO-Series, ``utils/utilities.py``, ``flowsde_prob_func``).

    from fastgrpo.compat.adagrpo import flowsde_prob_func

Same signature and numbers: Flow-GRPO's sde mean in fp32 and the quadratic-only log-prob. Differences: the
log-prob is averaged over all non-batch dims (the anchor hard-codes dims (1, 2), right for packed (B, L, C) FLUX
latents and the same numbers there, but (B, W)-shaped for 4-D latents); at η = 0 it is 0 instead of NaN/−inf.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..ops import group_advantages
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


def compute_relative_adv(rewards: Tensor, adv_clip_max: float) -> Tensor:
    """AdaGRPO's local advantage for one group: clamp((r − mean)/(std + 1e-8), ±adv_clip_max), unbiased std
    (a constant group gives exactly 0)."""
    ids = torch.zeros(rewards.numel(), dtype=torch.int64, device=rewards.device)
    out = group_advantages(rewards.reshape(-1), ids, std="unbiased", eps=1e-8, clip=adv_clip_max)
    return out.advantages.reshape(rewards.shape).to(rewards.dtype)


class _EMA:
    def __init__(self, mean, std, device):
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device)
        # the released function takes σ_ema (already sqrt(max(v, 1e-8))); group_advantages takes v
        self.var = torch.as_tensor(std, dtype=torch.float32, device=device) ** 2
        self.ready = torch.ones((), dtype=torch.bool, device=device)


def compute_ema_adv(rewards: Tensor, ema_mean, ema_std, adv_clip_max: float) -> Tensor:
    """AdaGRPO's global advantage for one group: z = (r − μ_ema)/(σ_ema + 1e-8); positives scaled to sum +1 and
    negatives to −1 (z − mean(z) when either side sums to < 1e-6); clamp ±adv_clip_max."""
    ids = torch.zeros(rewards.numel(), dtype=torch.int64, device=rewards.device)
    out = group_advantages(rewards.reshape(-1), ids, std="unbiased", eps=1e-8, clip=adv_clip_max,
                           ema=_EMA(ema_mean, ema_std, rewards.device), global_clip=adv_clip_max)
    return out.global_.reshape(rewards.shape).to(rewards.dtype)
