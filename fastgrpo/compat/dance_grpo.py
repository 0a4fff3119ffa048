"""Drop-in for DanceGRPO's step (XueZeyue/DanceGRPO, ``fastvideo/train_grpo_flux.py``, ``flux_step``; checked at
commit 15cc71d53cc2e6e18a68ee607d5fb6ba9a99e344, where the log-prob is the full Gaussian since 9ac72b4 of
2025-08-20 — before it, the constants sat in a discarded statement).

    from fastgrpo.compat.dance_grpo import flux_step
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..ops import flow_step
from ._common import add_noise, broadcast_shape, linear_mean, squared_distance, torch_path

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def flux_step(model_output: Tensor, latents: Tensor, eta: float, sigmas: Tensor, index: int,
              prev_sample: Tensor, grpo: bool, sde_solver: bool):
    """DanceGRPO step σ = sigmas[index] → σ' = sigmas[index + 1], Δσ = σ' − σ, std = η·sqrt(−Δσ) (a Python float).

    Mean: with ``sde_solver`` μ = x + Δσ·(v + η²/(2σ)·(x + (1−σ)·v)) (the anchor's score form), else the Euler
    mean x + Δσ·v; x̂0 = x − σ·v. With ``grpo``: x' = μ + std·ε unless ``prev_sample`` is given (ε from
    ``torch.randn_like(μ)``: the global RNG, μ's dtype and device), log p = mean over non-batch dims of
    −(x'−μ)²/(2·std²) − log std − log sqrt(2π); returns ``(prev_sample, pred_original_sample, log_prob)``.
    Otherwise returns ``(prev_sample_mean, pred_original_sample)``.
    Dtypes as the anchor's type promotion gives them: μ, x', x̂0 in the promoted dtype of latents and model
    output (fp32 for the recipes' fp32 latents and bf16 output), log p fp32 (batch,); a given prev_sample comes
    back as given. ``index``: an int or an integer tensor.

    Differences, all deliberate: fp32 math, where the anchor rounds σ·v and Δσ·v in bf16 for a bf16 model output
    (results agree within bf16 rounding). Rejected like the anchor (ValueError): σ' > σ, and with ``grpo`` a zero
    or negative std (η ≤ 0, σ' = σ); with σ on a device these checks would be a host sync and are skipped (the
    anchor syncs for ``math.sqrt``).
    """
    device = latents.device
    sigma, sigma_next = sigmas[index], sigmas[index + 1]
    host = not isinstance(sigma, Tensor) or sigma.device.type == "cpu"
    # the anchor's type promotion: a 0-dim σ leaves the tensors' dtype, a σ with dims (a (1,) index) joins it
    out_dtype = torch.promote_types(latents.dtype, model_output.dtype)
    if isinstance(sigma, Tensor) and sigma.dim() > 0:
        out_dtype = torch.promote_types(out_dtype, sigma.dtype)
    if host:
        sigma, sigma_next = float(sigma), float(sigma_next)
        if sigma_next > sigma:
            raise ValueError(f"sigmas must not increase: sigmas[index + 1] = {sigma_next} > sigmas[index] = {sigma} "
                             "(the anchor: math domain error)")
        std = eta * math.sqrt(sigma - sigma_next)
        if grpo and not std > 0:
            raise ValueError(f"eta * sqrt(sigmas[index] - sigmas[index + 1]) = {std} must be > 0 with grpo=True "
                             f"(eta = {eta}; the anchor takes its log: math domain error)")
    else:
        sigma, sigma_next = sigma.to(device).reshape(-1), sigma_next.to(device).reshape(-1)
        std = eta * torch.sqrt(sigma - sigma_next)
    delta = sigma_next - sigma

    if isinstance(sigma, float):
        x0_hat = torch.add(latents, model_output, alpha=-sigma)
    else:
        x0_hat = torch.addcmul(latents, model_output, _view(sigma, latents.dim()), value=-1)
    x0_hat = x0_hat.to(out_dtype)

    if grpo and sde_solver and not torch_path(device) and host and eta > 0 and latents.dim() >= 2 \
            and model_output.shape == latents.shape and (prev_sample is None or prev_sample.shape == latents.shape):
        noise = None
        if prev_sample is None:
            noise = torch.randn(latents.shape, device=device, dtype=out_dtype)  # = randn_like(μ)
        out = flow_step(model_output, latents, sigma, sigma_next, float(eta), family="dance_sde", logprob="full",
                        noise=noise, x_next=prev_sample, out_dtype=out_dtype)
        return out.x_next, x0_hat, out.log_prob

    if sde_solver:
        h = eta * eta / (2 * sigma)
        a, b = 1 + delta * h, delta * (1 + h * (1 - sigma))
    else:
        a, b = 1.0, delta
    if not host:
        a, b = (_view(t if isinstance(t, Tensor) else torch.as_tensor(t, device=device), latents.dim())
                for t in (a, b))
    mean = linear_mean(latents, model_output, a, b)
    if not grpo:
        return mean.to(out_dtype), x0_hat
    if prev_sample is None:
        noise = torch.randn(mean.shape, device=device, dtype=out_dtype)  # = randn_like(μ) in the anchor's dtype
        x_next = add_noise(mean, noise, std if host else _view(std, latents.dim()))
        prev_sample = x_next.to(out_dtype)
    sq = squared_distance(prev_sample, mean)
    count = math.prod(broadcast_shape(prev_sample.shape, mean.shape)[1:])
    if host:
        log_prob = sq * (-0.5 / (count * std * std)) - (math.log(std) + _LOG_SQRT_2PI)
    else:
        log_prob = sq * (-0.5 / (count * std * std)) - (torch.log(std) + _LOG_SQRT_2PI)
    return prev_sample, x0_hat, log_prob


def _view(t: Tensor, ndim: int) -> Tensor:
    return t.float().reshape(-1, *([1] * (ndim - 1)))
