"""Advantage Weighted Matching (Xue et al., "Advantage Weighted Matching: Aligning RL with Pretraining in Diffusion
Models", arXiv 2509.25050; released code scxue/advantage_weighted_matching, ``scripts/train_sd3_awm.py``).

Flow-GRPO's policy gradient is denoising score matching against a noisy target (the next SDE sample instead of the
clean x0); AWM weights the *pretraining* flow-matching loss of the rollout's clean samples by their advantage. With
x_t = (1 − t)·x0 + t·ε, the per-sample flow-matching error ℓ = mean_{C,H,W}(v_θ(x_t, t) − (ε − x0))² enters through
a robust power transform ("ghuber", p = 0.25) and a t weight, as a log-likelihood surrogate

    lp = −t·((ℓ + δ)^p − δ^p)/p,   δ = 1e-10,        ρ = exp(lp − sg(lp))  (≡ 1 in value),

and the PPO-form loss L = mean(max(−Â·ρ, −Â·clip(ρ, 1 ± κ))) with Â = clamp(A, ±c)/c ∈ [−1, 1]. Its value is −mean(Â);
its gradient is Â·t·(ℓ + δ)^(p−1)·∇ℓ per sample (over the batch size): low-error samples weigh more, and the
transform bounds how hard a negative-advantage sample is pushed up the loss. The clip never binds (ρ ≡ 1 on-policy).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

GHUBER_FLOOR = 1e-10


class AWMLoss(NamedTuple):
    loss: Tensor
    log_prob: Tensor
    """(B,) lp (detached)."""


def ghuber(error: Tensor, p: float = 0.25, floor: float = GHUBER_FLOOR) -> Tensor:
    """((ℓ + δ)^p − δ^p)/p: 0 at ℓ = 0, increasing, concave for p < 1 (ℓ itself at p = 1)."""
    if not 0 < p <= 1:
        raise ValueError(f"p must be in (0, 1], got {p}")
    return ((error + floor) ** p - floor ** p) / p


def awm_loss(fm_error: Tensor, t: Tensor, advantages: Tensor, *, p: float = 0.25, adv_clip: float = 5.0,
             ratio_clip: float = 1.0) -> AWMLoss:
    """The AWM policy loss above from per-sample flow-matching errors ``fm_error`` (B,) (carrying the gradient),
    timesteps ``t`` (B,) and raw advantages (B,)."""
    if not adv_clip > 0:
        raise ValueError(f"adv_clip must be > 0, got {adv_clip}")
    lp = -t.to(fm_error.dtype) * ghuber(fm_error, p)
    ratio = torch.exp(lp - lp.detach())
    adv = advantages.detach().clamp(-adv_clip, adv_clip) / adv_clip
    surrogate = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - ratio_clip, 1 + ratio_clip))
    return AWMLoss(surrogate.mean(), lp.detach())


def stratified_indices(steps: int, count: int, fraction: float, include_init: bool, generator) -> list[int]:
    """One schedule index from each of ``count`` equal strata of [start, int(steps·fraction)] (start 0 with
    ``include_init``, else 1 — the released ``discrete`` / ``discrete_wo_init``): index k = floor(b_k + U·(b_{k+1} −
    b_k)), b = linspace(start, int(steps·fraction), count + 1), U uniform in [0, 1)."""
    start, end = (0 if include_init else 1), int(steps * fraction)
    if end - start < 1:
        raise ValueError(f"no timesteps between {start} and int({steps}·{fraction}) = {end}")
    bounds = torch.linspace(start, end, count + 1, dtype=torch.float64)
    u = torch.rand(count, generator=generator, dtype=torch.float64)
    return (bounds[:-1] + u * (bounds[1:] - bounds[:-1])).floor().long().clamp(max=end - 1).tolist()
