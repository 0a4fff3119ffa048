"""Triton kernel: group advantages for a whole batch in one launch (math: ``fastgrpo/reference/advantages.py``).

One program per dense group slot (grid N; slots beyond the number of groups have no members and do nothing).
Members are reached through the sort order of the group ids (``GroupIndex``), so groups may be of any size and
ids need not be contiguous. Each program makes three passes over its members (sum/min/max and the AdaGRPO global
sums; squared deviations; outputs), so mean and variance are two-pass exact, and no floating-point atomics touch
an advantage: results are deterministic. Only the batch statistics (group count, zero-spread groups, Σ std) use
atomics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _members(r_ptr, order_ptr, start, m0, cnt, kk, kmask, K, BLOCK_M: tl.constexpr):
    """The next BLOCK_M members of a group (through the sort order) and their (BLOCK_M, BLOCK_K) reward tile."""
    mm = m0 + tl.arange(0, BLOCK_M)
    mmask = mm < cnt
    idx = tl.load(order_ptr + start + mm, mask=mmask, other=0)
    tmask = mmask[:, None] & kmask[None, :]
    tile = tl.load(r_ptr + idx[:, None] * K + kk[None, :], mask=tmask, other=0.0)
    return idx, mmask, tmask, tile


@triton.jit
def _group_adv_kernel(r_ptr, w_ptr, order_ptr, starts_ptr, counts_ptr, batch_std_ptr, ema_ptr,
                      adv_ptr, local_ptr, global_ptr, stats_ptr,
                      K, eps, clip, fusion_weight, global_clip,
                      UNBIASED: tl.constexpr, GLOBAL_STD: tl.constexpr, POOLED: tl.constexpr,
                      HAS_CLIP: tl.constexpr, FUSE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    g = tl.program_id(0)
    cnt = tl.load(counts_ptr + g)
    if cnt > 0:
        start = tl.load(starts_ptr + g)
        kk = tl.arange(0, BLOCK_K)
        kmask = kk < K
        w = tl.load(w_ptr + kk, mask=kmask, other=0.0)
        if FUSE:
            ema_mean = tl.load(ema_ptr)
            ema_sigma = tl.sqrt(tl.maximum(tl.load(ema_ptr + 1), 1e-8))
            ema_ready = tl.load(ema_ptr + 2) > 0.0

        # pass 1: column sums, min, max; AdaGRPO's global z sums
        col_sum = tl.zeros((BLOCK_K,), dtype=tl.float32)
        col_min = tl.full((BLOCK_K,), float("inf"), dtype=tl.float32)
        col_max = tl.full((BLOCK_K,), float("-inf"), dtype=tl.float32)
        pos = 0.0
        neg = 0.0
        zsum = 0.0
        for m0 in range(0, cnt, BLOCK_M):
            idx, mmask, tmask, tile = _members(r_ptr, order_ptr, start, m0, cnt, kk, kmask, K, BLOCK_M)
            col_sum += tl.sum(tile, axis=0)
            col_min = tl.minimum(col_min, tl.min(tl.where(tmask, tile, float("inf")), axis=0))
            col_max = tl.maximum(col_max, tl.max(tl.where(tmask, tile, float("-inf")), axis=0))
            if FUSE:
                zg = tl.where(ema_ready, (tl.sum(tile * w[None, :], axis=1) - ema_mean) / (ema_sigma + 1e-8), 0.0)
                zg = tl.where(mmask, zg, 0.0)
                pos += tl.sum(tl.maximum(zg, 0.0), axis=0)
                neg += tl.sum(tl.maximum(-zg, 0.0), axis=0)
                zsum += tl.sum(zg, axis=0)

        if POOLED:  # one mean / spread over all N_g×T entries, broadcast to the columns
            n_eff = (cnt * K).to(tl.float32)
            mean = tl.zeros((BLOCK_K,), dtype=tl.float32) + tl.sum(col_sum, axis=0) / n_eff
            spread = (tl.zeros((BLOCK_K,), dtype=tl.float32)
                      + tl.max(tl.where(kmask, col_max, float("-inf")), axis=0)) > \
                     tl.min(tl.where(kmask, col_min, float("inf")), axis=0)
        else:
            n_eff = cnt.to(tl.float32)
            mean = col_sum / n_eff
            spread = col_max > col_min

        # pass 2: squared deviations (two-pass variance)
        col_ss = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for m0 in range(0, cnt, BLOCK_M):
            idx, mmask, tmask, tile = _members(r_ptr, order_ptr, start, m0, cnt, kk, kmask, K, BLOCK_M)
            dev = tl.where(tmask, tile - mean[None, :], 0.0)
            col_ss += tl.sum(dev * dev, axis=0)
        if POOLED:
            col_ss = tl.zeros((BLOCK_K,), dtype=tl.float32) + tl.sum(col_ss, axis=0)
        denom = tl.maximum(n_eff - UNBIASED, 1.0)
        std = tl.sqrt(col_ss / denom)
        if GLOBAL_STD:
            scale = tl.load(batch_std_ptr + kk, mask=kmask, other=1.0)
        else:
            scale = std

        # pass 3: outputs
        for m0 in range(0, cnt, BLOCK_M):
            idx, mmask, tmask, tile = _members(r_ptr, order_ptr, start, m0, cnt, kk, kmask, K, BLOCK_M)
            live = spread[None, :] & tmask & ((scale[None, :] + eps) > 0.0)
            z = tl.where(live, (tile - mean[None, :]) / tl.where(live, scale[None, :] + eps, 1.0), 0.0)
            if POOLED:
                local = z
                if HAS_CLIP:
                    local = tl.minimum(tl.maximum(local, -clip), clip)
                tl.store(local_ptr + idx[:, None] * K + kk[None, :], local, mask=tmask)
                tl.store(adv_ptr + idx[:, None] * K + kk[None, :], local, mask=tmask)
            else:
                local = tl.sum(z * w[None, :], axis=1)
                if HAS_CLIP:
                    local = tl.minimum(tl.maximum(local, -clip), clip)
                tl.store(local_ptr + idx, local, mask=mmask)
                adv = local
                if FUSE:
                    zg = tl.where(ema_ready, (tl.sum(tile * w[None, :], axis=1) - ema_mean) / (ema_sigma + 1e-8),
                                  0.0)
                    degenerate = (pos < 1e-6) | (neg < 1e-6)
                    cal = tl.where(zg > 0.0, zg / tl.where(pos > 0.0, pos, 1.0),
                                   tl.where(zg < 0.0, zg / tl.where(neg > 0.0, neg, 1.0), 0.0))
                    glob = tl.where(degenerate, zg - zsum / n_eff, cal)
                    glob = tl.minimum(tl.maximum(glob, -global_clip), global_clip)
                    tl.store(global_ptr + idx, glob, mask=mmask)
                    adv = local + fusion_weight * glob
                tl.store(adv_ptr + idx, adv, mask=mmask)

        tl.atomic_add(stats_ptr, 1.0)
        tl.atomic_add(stats_ptr + 1, tl.where(tl.max(tl.where(kmask, spread.to(tl.int32), 0), axis=0) > 0,
                                              0.0, 1.0))
        tl.atomic_add(stats_ptr + 2, tl.sum(tl.where(kmask, std, 0.0), axis=0) / K)


def group_advantages_fwd(rewards, weights, index, batch_std, ema, eps, clip, fusion_weight, global_clip, unbiased,
                         pooled):
    """rewards: (N, K) fp32 contiguous; weights (K,) fp32; ema: (3,) fp32 [mean, var, ready] or None."""
    n, k = rewards.shape
    dev = rewards.device
    out_shape = (n, k) if pooled else (n,)
    adv = torch.empty(out_shape, device=dev, dtype=torch.float32)
    local = torch.empty(out_shape, device=dev, dtype=torch.float32)
    glob = torch.empty((n,) if ema is not None else (0,), device=dev, dtype=torch.float32)
    stats = torch.zeros(3, device=dev, dtype=torch.float32)
    if n:
        _group_adv_kernel[(n,)](
            rewards, weights, index.order, index.starts, index.counts,
            batch_std if batch_std is not None else weights, ema if ema is not None else weights,
            adv, local, glob if ema is not None else adv, stats,
            k, float(eps), float(clip if clip is not None else 0.0), float(fusion_weight), float(global_clip),
            UNBIASED=int(unbiased), GLOBAL_STD=batch_std is not None, POOLED=pooled, HAS_CLIP=clip is not None,
            FUSE=ema is not None, BLOCK_M=64, BLOCK_K=max(1, triton.next_power_of_2(k)), num_warps=1,
        )
    return adv, local, glob, stats
