"""Direct Group Preference Optimization (Luo et al., "Reinforcing Diffusion Models by Direct Group Preference
Optimization", arXiv 2510.08425; released code Luo-Yihong/DGPO, ``scripts/train_sd3_dgpo.py``, ``config/dgpo.py``).

A DPO-style objective between the better and worse halves of a group: with ℓ_i the flow-matching error of sample i
at a noise ε and timestep t shared by the group, and ℓ_ref,i the reference model's, the implicit group reward is
R_θ(G±) = −(β_dpo/G)·Σ_{i∈G±} |A_i|·(ℓ_i − ℓ_ref,i), and DGPO maximises log σ(R_θ(G⁺) − R_θ(G⁻)). The released code
implements its gradient through the group score

    S_g = (β_dpo/G)·Σ_{i∈g} A_i·sg(ℓ_i − ℓ_ref,i),        L = mean_i( sg(σ(S_{g(i)}))·A_i·ℓ_i ),

whose gradient is that of −log σ(−S_g) up to a constant: a sample with A > 0 lowers its error, A < 0 raises it, and
the whole group's push fades as the group's preference is already learned (σ(S_g) → 0). The score is a sum over the
*group*, never per sample. Optional clip against an EMA copy of the weights ("old"): ρ_i = exp(ℓ_old,i − ℓ_i); ℓ_i's
gradient is dropped where (A_i > 0 and ρ_i > 1 + ε) or (A_i < 0 and ρ_i < 1 − ε).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor


class DGPOLoss(NamedTuple):
    loss: Tensor
    group_score: Tensor
    """(B,) S_{g(i)} of each sample's group (detached)."""
    clipfrac: Tensor
    """Fraction of samples whose gradient the clip dropped."""


def dgpo_loss(fm_error: Tensor, ref_error: Tensor, advantages: Tensor, group_ids: Tensor, *, num_groups: int,
              beta_dpo: float, group_size: int, old_error: Optional[Tensor] = None, clip: float = 0.0) -> DGPOLoss:
    """The loss above from per-sample flow-matching errors (B,) — ``fm_error`` carries the gradient — and dense
    group ids (B,) in [0, num_groups). ``clip`` > 0 needs ``old_error``. No host sync."""
    adv = advantages.detach().to(fm_error.dtype)
    gap = (fm_error.detach() - ref_error.detach().to(fm_error.dtype)) * adv
    score = torch.zeros(num_groups, dtype=fm_error.dtype, device=fm_error.device).index_add_(0, group_ids, gap)
    score = score * (beta_dpo / group_size)
    per_sample = score[group_ids]
    error = fm_error
    dropped = torch.zeros_like(adv, dtype=torch.bool)
    if clip > 0:
        if old_error is None:
            raise ValueError("clip > 0 needs old_error (the EMA copy's flow-matching errors)")
        ratio = torch.exp(old_error.detach().to(fm_error.dtype) - fm_error.detach())
        dropped = ((adv > 0) & (ratio > 1 + clip)) | ((adv < 0) & (ratio < 1 - clip))
        error = torch.where(dropped, fm_error.detach(), fm_error)
    loss = (torch.sigmoid(per_sample).detach() * adv * error).mean()
    return DGPOLoss(loss, per_sample.detach(), dropped.float().mean())
