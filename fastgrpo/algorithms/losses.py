"""Policy losses of the GRPO recipes (Flow-GRPO, DanceGRPO, MixGRPO, AdaGRPO, TempFlow-GRPO), as plain
differentiable functions of per-sample vectors.

Every function is free of host syncs and data-dependent control flow, so it runs inside ``torch.compile`` and
CUDA-graph capture; each returns the loss with ``clipfrac`` and ``approx_kl`` as device tensors.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor


class LossOutput(NamedTuple):
    loss: Tensor
    clipfrac: Tensor
    """Fraction of entries whose ratio left the clip range."""
    approx_kl: Tensor
    """0.5·mean((lp − lp_old)²), Flow-GRPO's estimate."""


def _stats(log_prob: Tensor, old_log_prob: Tensor, low: float, high: float):
    delta = log_prob - old_log_prob
    ratio = torch.exp(delta)
    clipped = ((ratio < 1.0 - low) | (ratio > 1.0 + high)).float().mean()
    return ratio, clipped.detach(), (0.5 * delta.detach().pow(2)).mean()


def ppo_clip_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor,
                  clip_range: Union[float, tuple[float, float]] = 1e-4, *, adv_clip: Optional[float] = None,
                  weights: Optional[Tensor] = None) -> LossOutput:
    """PPO clipped surrogate: ρ = exp(lp − lp_old), L = mean(max(−A·ρ, −A·clip(ρ, 1−ε_low, 1+ε_high))).

    ``clip_range``: ε or (ε_low, ε_high). ``adv_clip``: clamp A to ±adv_clip first. ``weights``: per-entry factors
    on the surrogate (TempFlow-GRPO's c·s_t, see ``tempflow_weights``), broadcast like ``log_prob``.
    """
    low, high = (clip_range, clip_range) if isinstance(clip_range, (int, float)) else clip_range
    if low < 0 or high < 0:
        raise ValueError(f"clip_range must be non-negative, got {clip_range}")
    adv = advantages if adv_clip is None else advantages.clamp(-adv_clip, adv_clip)
    adv = adv.detach()
    ratio, clipfrac, approx_kl = _stats(log_prob, old_log_prob, low, high)
    surrogate = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1.0 - low, 1.0 + high))
    if weights is not None:
        surrogate = surrogate * weights
    return LossOutput(surrogate.mean(), clipfrac, approx_kl)


def kl_penalty(kl: Tensor, beta: float) -> Tensor:
    """β·mean(kl) for the per-sample KL term of ``flow_step(..., mu_ref=...)`` (Flow-GRPO: mean((μ−μ_ref)²)/(2g²);
    TempFlow: ``kl_divisor="step_std"``; Flow-CPS: ``"none"``). It carries the gradient (no ``no_grad``)."""
    return beta * kl.mean()


def mixgrpo_kl(log_prob: Tensor, old_log_prob: Tensor) -> Tensor:
    """MixGRPO's KL term 0.5·mean((lp − lp_old)²) (its coefficient is 0 in the released configs)."""
    return 0.5 * (log_prob - old_log_prob).pow(2).mean()


def tempflow_weights(step_std: Tensor, c: Optional[float] = None) -> Tensor:
    """TempFlow-GRPO's per-step weights c·s_t (s_t: the step's noise std, sqrt(−Δ) included). Without ``c``,
    c = 1/mean(s_t) over the given steps (the released code hard-codes 2.25 for SD3.5-M η 0.7, 1.73 for FLUX η 0.9)."""
    if c is None:
        return step_std / step_std.mean()
    return c * step_std


def adagrpo_loss(log_prob: Tensor, advantages: Tensor, old_log_prob: Optional[Tensor] = None) -> LossOutput:
    """AdaGRPO's released loss, unclipped: L = mean(−A·exp(lp − sg(lp))) (value −mean(A), gradient −A·∇lp).

    ``old_log_prob`` only feeds the ``clipfrac``/``approx_kl`` diagnostics (clip range 1e-4)."""
    ratio = torch.exp(log_prob - log_prob.detach())
    loss = (-advantages.detach() * ratio).mean()
    reference = old_log_prob if old_log_prob is not None else log_prob.detach()
    _, clipfrac, approx_kl = _stats(log_prob.detach(), reference, 1e-4, 1e-4)
    return LossOutput(loss, clipfrac, approx_kl)


def rationorm_ratio(mean: Tensor, mean_old: Tensor, x_next: Tensor, std: Tensor) -> Tensor:
    """GRPO-Guard's normalised ratio (Wang et al., arXiv 2510.22319; yifan123/flow_grpo commit 2e2f712):
    ρ̂ = exp(mean(ε ⊙ (μ_θ − μ_old))) with ε = (x' − μ_old)/s̄ the rollout's standard-normal draw, s̄ the batch
    mean of the step's std (every sample of a step shares σ). It equals exp((lp − lp_old + b)·s̄),
    b = mean((μ_θ − μ_old)²)/(2s̄²): Flow-GRPO's log-ratio without its always-negative, step-dependent shift, and
    rescaled by s̄. ``mean`` carries the gradient; exactly 1 when μ_θ = μ_old."""
    s_bar = std.detach().float().mean()
    eps = (x_next.float() - mean_old.float()) / s_bar
    return torch.exp((eps * (mean.float() - mean_old.float())).flatten(1).mean(1))


def rationorm_loss(ratio: Tensor, advantages: Tensor, clip_range: float, step_size: float) -> LossOutput:
    """GRPO-Guard's step loss: the PPO-clip surrogate of the normalised ratio divided by the step's |Δσ| (its
    "gradient reweighting"), so every step's gradient with respect to v has the same scale (1 + η²/2)·|A·ε|."""
    adv = advantages.detach()
    surrogate = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range))
    clipped = ((ratio.detach() < 1.0 - clip_range) | (ratio.detach() > 1.0 + clip_range)).float().mean()
    approx_kl = 0.5 * torch.log(ratio.detach()).pow(2).mean()
    return LossOutput(surrogate.mean() / abs(step_size), clipped, approx_kl)

