"""Reference group advantages (plain PyTorch): every group-advantage scheme of the recipes in one function, no
host sync.

Group z-score (Flow-GRPO, DanceGRPO, MixGRPO):  A = (r − mean_g)/(std_g + ε), groups by id; population or unbiased
std; Flow-GRPO's ``global_std`` uses the std of the whole batch instead of std_g. A group whose rewards are all equal
(or a singleton) gets exactly 0, never (r − mean)/ε rounding noise.
Multi-reward (K rewards, weights w): ``zscore_sum`` (DanceGRPO/MixGRPO, and G²RPO's sum over granularities):
Σ_k w_k·z_k; ``sum_zscore`` (Flow-GRPO): z-score of Σ_k w_k·r_k. Then clamp to ±``clip``.
Pooled (Stepwise-Flow-GRPO): rewards (N, T) per-step gains, normalised jointly over the group's N_g×T entries.
AdaGRPO cross-level fusion (2606.06828): z = (r − μ_ema)/(σ_ema + 1e-8), σ_ema = sqrt(max(v_ema, 1e-8)); per group,
if the positive z's or the |negative| z's sum to < 1e-6, z ← z − mean_g(z), else positives are divided by their sum
and negatives by the sum of their magnitudes (+1 / −1); A_global = clamp(z, ±global_clip);
A = A_local + fusion_weight·A_global. r is the weighted reward sum; before the EMA has seen a batch A_global = 0.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

AGGREGATES = ("zscore_sum", "sum_zscore")


class GroupIndex(NamedTuple):
    """Dense group ids for arbitrary integer ids, built without a host sync (sort + cumsum + scatter).

    ids[i] ∈ [0, G) (G ≤ N, as a device scalar); order sorts samples by group; starts/counts per dense id (slots ≥ G
    have count 0)."""

    ids: Tensor
    order: Tensor
    starts: Tensor
    counts: Tensor
    num_groups: Tensor


def group_index(group_ids: Tensor) -> GroupIndex:
    n = group_ids.numel()
    sorted_ids, order = torch.sort(group_ids.reshape(-1), stable=True)
    new = torch.ones(n, dtype=torch.bool, device=group_ids.device)
    new[1:] = sorted_ids[1:] != sorted_ids[:-1]
    dense_sorted = torch.cumsum(new, 0) - 1
    ids = torch.empty_like(dense_sorted).scatter_(0, order, dense_sorted)
    positions = torch.arange(n, device=group_ids.device)
    starts = torch.full((n,), n, dtype=torch.int64, device=group_ids.device)
    starts.scatter_reduce_(0, dense_sorted, positions, "amin")
    counts = torch.zeros(n, dtype=torch.int64, device=group_ids.device).index_add_(0, dense_sorted,
                                                                                 torch.ones_like(dense_sorted))
    return GroupIndex(ids, order, starts, counts, dense_sorted[-1] + 1 if n else torch.zeros((), dtype=torch.int64))


class AdvantageOutput(NamedTuple):
    advantages: Tensor
    """(N,) — or (N, T) pooled — A = A_local (+ fusion_weight·A_global)."""
    local: Tensor
    """The group (local) part, clamped."""
    global_: Optional[Tensor]
    """AdaGRPO's calibrated global part (N,), when an EMA state is given."""
    num_groups: Tensor
    zero_spread_groups: Tensor
    """Groups whose rewards are all equal (incl. singletons): their local advantage is 0."""
    mean_group_std: Tensor


def _segment(values: Tensor, ids: Tensor, slots: int, reduce: str) -> Tensor:
    shape = (slots,) + tuple(values.shape[1:])
    index = ids.view(-1, *([1] * (values.dim() - 1))).expand_as(values)
    if reduce == "sum":
        return torch.zeros(shape, dtype=values.dtype, device=values.device).index_add_(0, ids, values)
    init = float("inf") if reduce == "amin" else float("-inf")
    return torch.full(shape, init, dtype=values.dtype, device=values.device).scatter_reduce_(0, index, values, reduce)


def _zscore(x: Tensor, ids: Tensor, slots: int, counts: Tensor, ddof: int, eps: float,
            batch_std: Optional[Tensor]):
    """Per-column group z-score of x (N, C); returns z, per-group std (slots, C) and 'spread' (slots, C)."""
    cnt = counts.to(x.dtype).unsqueeze(1)
    mean = _segment(x, ids, slots, "sum") / cnt.clamp(min=1)
    dev = x - mean[ids]
    std = (_segment(dev * dev, ids, slots, "sum") / (cnt - ddof).clamp(min=1)).sqrt()
    spread = _segment(x, ids, slots, "amax") > _segment(x, ids, slots, "amin")
    scale = batch_std.expand_as(std) if batch_std is not None else std
    denom = scale[ids] + eps
    # a spread whose std underflows (denormal rewards with eps = 0) counts as no spread: 0, never inf/NaN
    live = spread[ids] & (denom > 0)
    z = torch.where(live, dev / torch.where(live, denom, torch.ones_like(denom)), torch.zeros_like(dev))
    return z, std, spread


def group_advantages(rewards: Tensor, index: GroupIndex, *, unbiased: bool = False, eps: float = 1e-4,
                     global_std: bool = False, clip: Optional[float] = None, weights: Optional[Tensor] = None,
                     aggregate: str = "zscore_sum", pooled: bool = False, ema_mean: Optional[Tensor] = None,
                     ema_var: Optional[Tensor] = None, ema_ready: Optional[Tensor] = None,
                     fusion_weight: float = 1.0, global_clip: float = 5.0) -> AdvantageOutput:
    """``rewards``: (N,) or (N, K) — or (N, T) with ``pooled`` — computed in fp32 (fp64 stays fp64)."""
    ct = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    r = rewards.to(ct)
    r = r.unsqueeze(1) if r.dim() == 1 else r
    n, k = r.shape
    ids, counts = index.ids, index.counts
    ddof = 1 if unbiased else 0
    w = torch.ones(k, dtype=ct, device=r.device) if weights is None else weights.to(ct)

    if pooled:  # one z-score over the group's N_g×T entries
        flat_ids = ids.repeat_interleave(k)
        flat = r.reshape(-1, 1)
        batch = flat.std(0, correction=ddof, keepdim=True) if global_std else None
        z, std, spread = _zscore(flat, flat_ids, n, counts * k, ddof, eps, batch)
        local = z.reshape(n, k)
        reward_sum = None
    elif aggregate == "sum_zscore":
        reward_sum = r @ w
        batch = reward_sum.std(correction=ddof).reshape(1, 1) if global_std else None
        z, std, spread = _zscore(reward_sum.unsqueeze(1), ids, n, counts, ddof, eps, batch)
        local = z.squeeze(1)
    elif aggregate == "zscore_sum":
        batch = r.std(0, correction=ddof, keepdim=True) if global_std else None
        z, std, spread = _zscore(r, ids, n, counts, ddof, eps, batch)
        local = z @ w
        reward_sum = r @ w
    else:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if clip is not None:
        local = local.clamp(-clip, clip)

    real = counts > 0
    num_groups = real.sum()
    zero_spread = (real & ~spread.any(1)).sum()
    mean_std = (std.mean(1) * real).sum() / num_groups.clamp(min=1)

    global_adv = None
    advantages = local
    if ema_mean is not None:
        sigma = torch.sqrt(torch.clamp(ema_var.to(ct), min=1e-8))
        zg = torch.where(ema_ready, (reward_sum - ema_mean.to(ct)) / (sigma + 1e-8), torch.zeros_like(reward_sum))
        pos = _segment(zg.clamp(min=0).unsqueeze(1), ids, n, "sum").squeeze(1)
        neg = _segment((-zg).clamp(min=0).unsqueeze(1), ids, n, "sum").squeeze(1)
        mean_z = _segment(zg.unsqueeze(1), ids, n, "sum").squeeze(1) / counts.clamp(min=1).to(ct)
        degenerate = ((pos < 1e-6) | (neg < 1e-6))[ids]
        calibrated = torch.where(zg > 0, zg / torch.where(pos > 0, pos, 1.0)[ids],
                                 torch.where(zg < 0, zg / torch.where(neg > 0, neg, 1.0)[ids], torch.zeros_like(zg)))
        global_adv = torch.where(degenerate, zg - mean_z[ids], calibrated).clamp(-global_clip, global_clip)
        advantages = local + fusion_weight * global_adv
    return AdvantageOutput(advantages, local, global_adv, num_groups, zero_spread, mean_std)
