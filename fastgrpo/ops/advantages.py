"""``group_advantages``: every GRPO advantage scheme for a whole batch, on the device, in one kernel launch.

Math: ``fastgrpo.reference.advantages`` (the PyTorch twin and CPU path). Group ids are any integers (unsorted,
non-contiguous, any group sizes, singletons) mapped to dense ids by a sort — no host sync, no Python loop over
prompts. The only sync is the opt-out finiteness check, which names the offending samples.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._backend import pick_backend
from ..reference.advantages import AGGREGATES, AdvantageOutput, GroupIndex, group_index
from ..reference import advantages as reference

STD_KINDS = ("population", "unbiased")


def keys_to_group_ids(keys, device=None, *, return_keys: bool = False):
    """Group ids (int64, first-appearance order) for hashable keys such as prompt strings, in linear time.

    ``dict.fromkeys`` and ``map`` run the hashing loop in C; the anchors instead compare the whole prompt array
    once per unique prompt (quadratic). With ``return_keys`` also returns the distinct keys in id order."""
    import numpy as np

    keys = list(keys)
    unique = list(dict.fromkeys(keys))
    slot = dict(zip(unique, range(len(unique))))
    ids = torch.from_numpy(np.fromiter(map(slot.__getitem__, keys), dtype=np.int64, count=len(keys)))
    ids = ids.to(device) if device is not None else ids
    return (ids, unique) if return_keys else ids


def _check(rewards: Tensor, group_ids: Tensor, weights: Optional[Tensor], std: str, aggregate: str, pooled: bool,
           ema, check_finite: bool) -> None:
    if not isinstance(rewards, Tensor) or not rewards.is_floating_point() or rewards.dim() not in (1, 2):
        raise ValueError("rewards must be a floating-point tensor of shape (N,) or (N, K)")
    if not isinstance(group_ids, Tensor) or group_ids.is_floating_point() or group_ids.is_complex():
        raise ValueError("group_ids must be an integer tensor (int64 ids: float ids can merge distinct groups)")
    if group_ids.dim() != 1 or group_ids.numel() != rewards.shape[0]:
        raise ValueError(f"group_ids has shape {tuple(group_ids.shape)}, expected ({rewards.shape[0]},) — one id "
                         "per reward row")
    if group_ids.device != rewards.device:
        raise ValueError(f"group_ids is on {group_ids.device}, rewards on {rewards.device}")
    if std not in STD_KINDS:
        raise ValueError(f"std must be one of {STD_KINDS}, got {std!r}")
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    k = rewards.shape[1] if rewards.dim() == 2 else 1
    if weights is not None:
        if pooled:
            raise ValueError("weights apply to K reward models; pooled rewards are (N, T) steps of one reward")
        if weights.dim() != 1 or weights.numel() != k:
            raise ValueError(f"weights has {weights.numel()} entries, expected K={k} (rewards' second dim)")
    if pooled and ema is not None:
        raise ValueError("ema (AdaGRPO fusion) is for per-sample rewards, not pooled per-step gains")
    if check_finite:
        bad = ~torch.isfinite(rewards)
        if bool(bad.any()):  # the one host sync, opt-out: a non-finite reward must not poison its group silently
            rows = torch.nonzero(bad.reshape(rewards.shape[0], -1).any(1)).flatten().tolist()
            raise ValueError(f"rewards are NaN or inf at samples {rows[:20]}{' ...' if len(rows) > 20 else ''}")


def group_advantages(rewards: Tensor, group_ids: Tensor, *, std: str = "population", eps: float = 1e-4,
                     global_std: bool = False, clip: Optional[float] = None, weights: Optional[Tensor] = None,
                     normalize_weights: bool = False, aggregate: str = "zscore_sum", pooled: bool = False,
                     ema=None, fusion_weight: float = 1.0, global_clip: float = 5.0, check_finite: bool = True,
                     backend: Optional[str] = None) -> AdvantageOutput:
    """Group-relative advantages, optionally fused with AdaGRPO's global EMA advantage.

    A_local = (r − mean_g)/(std_g + eps) per group id (0 for constant groups and singletons), aggregated over K
    rewards by ``aggregate`` (``zscore_sum``: Σ w_k·z_k, DanceGRPO/MixGRPO/G²RPO; ``sum_zscore``: z of Σ w_k·r_k,
    Flow-GRPO), clamped to ±``clip``. ``pooled``: rewards (N, T) per-step gains z-scored jointly per group
    (Stepwise-Flow-GRPO). ``ema`` (any object with 0-d tensors ``mean``, ``var``, ``ready``, e.g.
    ``fastgrpo.algorithms.CapabilityTracker``): adds fusion_weight·clamp(calibrated (r − μ_ema)/(σ_ema + 1e-8),
    ±global_clip) — AdaGRPO's cross-level fusion.

    Presets: Flow-GRPO ``std="population", eps=1e-4, clip=5`` (+ ``global_std``); DanceGRPO/MixGRPO/AdaGRPO-local
    ``std="unbiased", eps=1e-8, clip=5``. Returns ``AdvantageOutput`` (advantages, local, global_, num_groups,
    zero_spread_groups, mean_group_std), all device tensors.
    """
    _check(rewards, group_ids, weights, std, aggregate, pooled, ema, check_finite)
    k = rewards.shape[1] if rewards.dim() == 2 else 1
    w = weights.to(device=rewards.device, dtype=torch.float32) if weights is not None else None
    if w is not None and normalize_weights:
        w = w / w.sum()  # MixGRPO normalises its reward weights to sum 1
    index: GroupIndex = group_index(group_ids.to(torch.int64))
    unbiased = std == "unbiased"
    ema_parts = None if ema is None else (ema.mean, ema.var, ema.ready)

    if pick_backend("group_advantages", rewards.device, backend) == "torch":
        mean, var, ready = ema_parts if ema_parts is not None else (None, None, None)
        return reference.group_advantages(rewards, index, unbiased=unbiased, eps=eps, global_std=global_std,
                                          clip=clip, weights=w, aggregate=aggregate, pooled=pooled, ema_mean=mean,
                                          ema_var=var, ema_ready=ready, fusion_weight=fusion_weight,
                                          global_clip=global_clip)

    from fastgrpo.kernels import advantages as kernel
    r = rewards.to(torch.float32).reshape(rewards.shape[0], k).contiguous()
    w = torch.ones(k, device=r.device) if w is None else w.contiguous()
    if aggregate == "sum_zscore" and not pooled and k > 1:
        r, w = (r @ w).unsqueeze(1), torch.ones(1, device=r.device)  # Flow-GRPO: weighted sum first
    batch_std = None
    if global_std:
        correction = 1 if unbiased else 0
        batch_std = (r.reshape(-1).std(correction=correction).expand(r.shape[1]) if pooled
                     else r.std(0, correction=correction)).contiguous()
    ema_vec = None
    if ema_parts is not None:
        ema_vec = torch.stack([ema_parts[0].float().reshape(()), ema_parts[1].float().reshape(()),
                               ema_parts[2].float().reshape(())])
    adv, local, glob, stats = kernel.group_advantages_fwd(r, w, index, batch_std, ema_vec, eps, clip, fusion_weight,
                                                          global_clip, unbiased, pooled)
    if rewards.dim() == 1 and pooled:
        adv, local = adv.squeeze(1), local.squeeze(1)
    return AdvantageOutput(adv, local, glob if ema is not None else None, stats[0].to(torch.int64),
                           stats[1].to(torch.int64), stats[2] / stats[0].clamp(min=1))
