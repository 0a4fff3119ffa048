"""Drop-in for AdaGRPO's step log-prob and advantages (Bujiazi/GRPO-Series, checked at commit
c4028f945f5a13e1e9c7d0674265149311359ae1): ``flowsde_prob_func`` and ``compute_relative_adv`` from
``utils/utilities.py``, ``compute_ema_adv`` from ``src/method_adagrpo.py``.

    from fastgrpo.compat.adagrpo import compute_ema_adv, compute_relative_adv, flowsde_prob_func
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import ArgumentIndexError, ArgumentTypeError, broadcast_shape, linear_mean, squared_distance


def flowsde_prob_func(image_latents: Tensor, pred_velocity: Tensor, sigma_input, sigma_target, eta):
    """Flow-GRPO's sde mean for one step σ = ``sigma_input`` → σ' = ``sigma_target``, Δ = σ' − σ:
    g = η·sqrt(σ/(1 − σ̃)) with σ̃ = σ' where σ = 1, else σ; μ = x(1 + g²Δ/(2σ)) + v(1 + g²(1−σ)/(2σ))Δ (fp32).

    Returns ``(log_prob_fn, mean_next)``: mean_next fp32, shaped like the broadcast of the latents and velocity;
    ``log_prob_fn(latents, mean_next_latents)`` = −mean over dims (1, 2) of (latents − mean_next_latents)²,
    divided by 2·g²·|Δ| — the quadratic term only, latents detached, broadcasting as the anchor: (G, L, C)
    latents against a (1, L, C) mean give (G,); 4-D (G, C, H, W) latents give (G, W), as the anchor's fixed
    dims (1, 2) do. Gradients flow into the mean (and through it into the velocity and latents).

    Differences, all deliberate: where the divisor is 0 (η = 0) the log-prob is 0 (the anchor: −inf or NaN); the
    σ's may also be Python numbers (the anchor needs tensors). Latents of fewer than 3 dims raise a ValueError
    that is also the anchor's IndexError. The mean takes two passes over the latents and the log-prob one pass
    and a norm (the anchor: about ten).
    """
    sigma = sigma_input if isinstance(sigma_input, Tensor) else torch.as_tensor(float(sigma_input))
    sigma_next = sigma_target if isinstance(sigma_target, Tensor) else torch.as_tensor(float(sigma_target))
    device = image_latents.device
    if sigma.device.type == "cpu" and sigma_next.device.type == "cpu" and sigma.numel() == 1 \
            and sigma_next.numel() == 1:
        a, b, divisor = _host_scalars(float(sigma), float(sigma_next), float(eta))
    else:  # device σ's: the same algebra as tensors, no host sync
        sigma, sigma_next = sigma.to(device, torch.float32), sigma_next.to(device, torch.float32)
        one_minus = 1 - torch.where(sigma == 1, sigma_next, sigma)
        h = eta * eta / (2 * one_minus)
        dt = sigma_next - sigma
        shape = sigma.shape if sigma.dim() else ()
        a = (1 + h * dt).reshape(*shape, *([1] * (image_latents.dim() - len(shape))))
        b = ((1 + h * (1 - sigma)) * dt).reshape(a.shape)
        divisor = 2 * (eta * eta * sigma / one_minus) * dt.abs()
    mean_next = linear_mean(image_latents, pred_velocity, a, b)

    def log_prob_fn(latents: Tensor, mean_next_latents: Tensor) -> Tensor:
        if max(latents.dim(), mean_next_latents.dim()) < 3:
            raise ArgumentIndexError("latents must have at least 3 dims: the log-prob averages over dims (1, 2), "
                                     f"as the anchor (got shapes {tuple(latents.shape)} and "
                                     f"{tuple(mean_next_latents.shape)})")
        sq = squared_distance(latents, mean_next_latents, dims=(1, 2))
        shape = broadcast_shape(latents.shape, mean_next_latents.shape)
        count = shape[1] * shape[2]
        if isinstance(divisor, float):
            return sq * (-1.0 / (count * divisor)) if divisor > 0 else torch.zeros_like(sq)
        positive = divisor > 0
        scale = -1.0 / (count * torch.where(positive, divisor, torch.ones_like(divisor)))
        return torch.where(positive, sq * scale, torch.zeros_like(sq))

    return log_prob_fn, mean_next


def _host_scalars(sigma: float, sigma_next: float, eta: float):
    """(a, b, 2·g²·|Δ|) in fp64 on the host."""
    one_minus = 1.0 - (sigma_next if sigma == 1.0 else sigma)
    dt = sigma_next - sigma
    if one_minus == 0.0:  # σ̃ = 1: the anchor divides by zero
        return math.nan, math.nan, math.nan
    h = eta * eta / (2.0 * one_minus)
    return 1.0 + h * dt, (1.0 + h * (1.0 - sigma)) * dt, 2.0 * (eta * eta * sigma / one_minus) * abs(dt)


def compute_relative_adv(rewards: Tensor, adv_clip_max: float) -> Tensor:
    """AdaGRPO's local advantage for one group: clamp((r − mean)/(std + 1e-8), ±adv_clip_max) over every element
    of ``rewards``, unbiased std, in the rewards' dtype — the anchor's reductions, so the same numbers.

    Difference, deliberate: a single reward gives 0 (the anchor: NaN, its unbiased std of one value)."""
    if rewards.numel() < 2:
        return torch.zeros_like(rewards)
    return ((rewards - rewards.mean()) / (rewards.std() + 1e-8)).clamp(-adv_clip_max, adv_clip_max)


def compute_ema_adv(rewards: Tensor, ema_mean, ema_std, adv_clip_max: float) -> Tensor:
    """AdaGRPO's global advantage for one group: z = (r − μ_ema)/(σ_ema + 1e-8) (σ_ema as given, e.g. the
    released script's sqrt(max(v_ema, 1e-8))); if the positive z's or the |negative| z's sum to < 1e-6,
    z ← z − mean(z), else positives are divided by their sum and negatives by the sum of their magnitudes;
    clamp ±adv_clip_max. Same dtype and shape as ``rewards``.

    Differences, deliberate: no host sync (the anchor branches on the sums in Python). ``ema_mean`` or ``ema_std``
    None raises a ValueError that is also the anchor's TypeError.
    """
    for name, value in (("ema_mean", ema_mean), ("ema_std", ema_std)):
        if value is None:
            raise ArgumentTypeError(f"{name} is None: compute_ema_adv needs the EMA of the rewards (the anchor "
                                    "raises a TypeError)")
    z = (rewards - ema_mean) / (ema_std + 1e-8)
    positive, negative = z > 0, z < 0
    zero = torch.zeros_like(z)
    pos_sum = torch.where(positive, z, zero).sum()
    neg_sum = torch.where(negative, -z, zero).sum()
    one_sided = (pos_sum < 1e-6) | (neg_sum < 1e-6)
    scaled = torch.where(positive, z / pos_sum, torch.where(negative, z / neg_sum, z))
    return torch.where(one_sided, z - z.mean(), scaled).clamp(-adv_clip_max, adv_clip_max)
