"""DiffusionNFT's objective (Zheng et al., "DiffusionNFT: Online Diffusion Reinforcement with Forward Process",
arXiv 2509.16117; released code NVlabs/DiffusionNFT, ``scripts/train_nft_sd3.py``).

Notation: σ = t runs from 1 (noise) to 0 (data); a clean rollout sample x0 is noised afresh, x_t = (1−t)·x0 + t·ε,
and the flow-matching target is ε − x0. The rollout ("old") policy v_old is frozen for the step; β is the guidance
strength. The implicit positive and negative policies are

    v⁺ = β·v_θ + (1−β)·v_old,        v⁻ = (1+β)·v_old − β·v_θ          (v_old detached).

The paper trains E[r·‖v⁺ − (ε − x0)‖² + (1−r)·‖v⁻ − (ε − x0)‖²] with r ∈ [0, 1] the "optimality probability" of the
sample. The released code moves the loss to x0 space with a self-normalising, stop-gradient weight: for each sign,
x̂0± = x_t − t·v±, w± = sg(mean_{C,H,W} |x̂0± − x0|) (in float64, at least 1e-5), L± = mean_{C,H,W}(x̂0± − x0)² / w±,
which is t²·‖v± − (ε − x0)‖²/w± — the velocity loss with a per-sample adaptive weight. The policy loss is

    L = adv_clip/β · mean_batch[ r·L⁺ + (1−r)·L⁻ ],

the 1/β cancelling the β that v± carry and adv_clip (5) a constant gain. r comes from the group advantage A
(per-prompt mean, global std): r = clamp(½ + clamp(A, ±adv_clip)/(2·adv_clip), 0, 1), linear in A for |A| ≤ adv_clip.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class NFTLoss(NamedTuple):
    loss: Tensor
    """The batch loss, adv_clip/β·mean(r·L⁺ + (1−r)·L⁻)."""
    positive: Tensor
    """(B,) L⁺ per sample (detached)."""
    negative: Tensor
    """(B,) L⁻ per sample (detached)."""


def nft_optimality(advantages: Tensor, adv_clip: float = 5.0) -> Tensor:
    """r = clamp(½ + clamp(A, ±adv_clip)/(2·adv_clip), 0, 1): the released code's ``clamp(A)/adv_clip/2 + ½``."""
    if not adv_clip > 0:
        raise ValueError(f"adv_clip must be > 0, got {adv_clip}")
    return (advantages.clamp(-adv_clip, adv_clip) / adv_clip / 2 + 0.5).clamp(0.0, 1.0)


def _per_sample(x: Tensor) -> Tensor:
    return x.flatten(1).mean(1)


def nft_loss(v: Tensor, v_old: Tensor, x_t: Tensor, x0: Tensor, t: Tensor, r: Tensor, *, beta: float,
             adv_clip: float = 5.0) -> NFTLoss:
    """The x0-space NFT loss above. ``v`` carries the gradient; ``v_old`` is detached here; ``t`` and ``r`` are
    per sample (B,). Computed in float32 (the weights in float64), whatever the dtype of ``v``."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    shape = (-1,) + (1,) * (x0.dim() - 1)
    t_b = t.reshape(shape).to(torch.float32)
    v, v_old = v.float(), v_old.detach().float()
    x_t, x0 = x_t.float(), x0.float()
    parts = []
    for implicit in (beta * v + (1 - beta) * v_old, (1 + beta) * v_old - beta * v):
        error = x_t - t_b * implicit - x0
        weight = _per_sample(error.detach().double().abs()).clamp(min=1e-5).to(torch.float32)
        parts.append(_per_sample(error.pow(2)) / weight)
    positive, negative = parts
    r = r.detach().to(torch.float32)
    loss = (r * positive + (1 - r) * negative).mean() / beta * adv_clip
    return NFTLoss(loss, positive.detach(), negative.detach())
