"""The anchors' functions written out again, in fp64 (numpy fp64 for the tracker): the oracle the compat shims are
tested against, independent of fastgrpo's ops, reference and shims. Each function names the anchor file and the
commit it was checked against, line by line; shapes and broadcasting follow the anchor's code, dtypes are fp64
(the tests assert the anchors' dtypes separately).

Checked against:
- Flow-GRPO yifan123/flow_grpo@54809b5fcf4d3930d2a17fa553928704bd0b719e,
  flow_grpo/diffusers_patch/sd3_sde_with_logprob.py (sde_step_with_logprob: sde and cps);
  @94e23ee5405ab7241fc1f75d30cac8147e2b1f53 flow_grpo/stat_tracking.py (PerPromptStatTracker);
- DanceGRPO XueZeyue/DanceGRPO@15cc71d53cc2e6e18a68ee607d5fb6ba9a99e344, fastvideo/train_grpo_flux.py (flux_step);
- AdaGRPO Bujiazi/GRPO-Series@c4028f945f5a13e1e9c7d0674265149311359ae1, utils/utilities.py (flowsde_std,
  flowsde_prob_func, compute_relative_adv) and src/method_adagrpo.py (compute_ema_adv);
- ``dpm_pp_2m``: DPM-Solver++ 2M (arXiv 2211.01095) in flow form (used by tests/test_dpm_solver.py).
"""
from __future__ import annotations

import math

import numpy as np
import torch

LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


def index_for_timestep(timesteps, t) -> int:
    """diffusers' FlowMatchEulerDiscreteScheduler.index_for_timestep: the first exact match, the second when the
    value appears more than once; none raises an IndexError."""
    hits = [i for i, value in enumerate(torch.as_tensor(timesteps).tolist()) if value == float(t)]
    return hits[1] if len(hits) > 1 else hits[0]


def flow_grpo_step(sigmas, timesteps, v, t, x, noise_level, noise=None, prev_sample=None, sde_type="sde"):
    """Flow-GRPO ``sde_step_with_logprob`` (sd3_sde_with_logprob.py @54809b5): σ per element of ``t`` (n of them),
    viewed (n, 1, …); ``sigma_max = sigmas[1]`` replaces σ in 1 − σ where σ = 1.
    Returns (prev_sample, log_prob (B,), prev_sample_mean, std_dev_t (n, 1, …), sqrt(−dt) (n, 1, …))."""
    v, x = v.double(), x.double()
    view = (-1,) + (1,) * (x.dim() - 1)
    index = [index_for_timestep(timesteps, ti) for ti in t]
    sigmas = torch.as_tensor(sigmas).double()
    sigma, sigma_prev = sigmas[index].view(view), sigmas[[i + 1 for i in index]].view(view)
    dt = sigma_prev - sigma
    if sde_type == "sde":
        std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigmas[1], sigma))) * noise_level
        mean = x * (1 + std_dev_t**2 / (2 * sigma) * dt) + v * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
        std = std_dev_t * torch.sqrt(-dt)
    else:
        std_dev_t = sigma_prev * math.sin(noise_level * math.pi / 2)
        x0, x1 = x - sigma * v, x + v * (1 - sigma)
        mean = x0 * (1 - sigma_prev) + x1 * torch.sqrt(sigma_prev**2 - std_dev_t**2)
        std = std_dev_t
    if prev_sample is None:
        prev_sample = mean + std * noise.double()
    prev_sample = prev_sample.double()
    if sde_type == "sde":
        elem = -((prev_sample - mean) ** 2) / (2 * std**2) - torch.log(std) - LOG_SQRT_2PI
    else:
        elem = -((prev_sample - mean) ** 2)
    return prev_sample, elem.mean(tuple(range(1, elem.dim()))), mean, std_dev_t, torch.sqrt(-dt)


def dance_flux_step(v, x, eta, sigmas, index, noise=None, prev_sample=None, grpo=True, sde_solver=True,
                    round_products=None):
    """DanceGRPO ``flux_step`` (train_grpo_flux.py @15cc71d), fp64. ``round_products``: a dtype to round σ·v and
    Δσ·v to, as the anchor's type promotion does for a bf16 model output (0-dim σ times a bf16 tensor stays bf16).
    Returns (prev_sample, pred_original_sample, log_prob) with ``grpo``, else (prev_sample_mean, pred_original)."""
    v, x = v.double(), x.double()
    sigma, sigma_next = float(sigmas[index]), float(sigmas[index + 1])

    def product(scalar):
        p = scalar * v
        return p.to(round_products).double() if round_products is not None else p

    dsigma = sigma_next - sigma
    mean = x + product(dsigma)
    x0 = x - product(sigma)
    std = eta * math.sqrt(sigma - sigma_next)
    if sde_solver:
        score = -(x - x0 * (1 - sigma)) / sigma**2
        mean = mean + (-0.5 * eta**2 * score) * dsigma
    if not grpo:
        return mean, x0
    if prev_sample is None:
        prev_sample = mean + noise.double() * std
    prev_sample = prev_sample.double()
    elem = -((prev_sample - mean) ** 2) / (2 * std**2) - math.log(std) - LOG_SQRT_2PI
    return prev_sample, x0, elem.mean(tuple(range(1, elem.dim())))


def adagrpo_flowsde(image_latents, pred_velocity, sigma_input, sigma_target, eta):
    """AdaGRPO ``flowsde_prob_func`` (utils/utilities.py @c4028f9): σ' stands in for σ in 1 − σ where σ = 1;
    the log-prob is the quadratic term averaged over dims (1, 2) only. Returns (log_prob_fn, mean_next)."""
    sigma, sigma_next = float(sigma_input), float(sigma_target)
    std = math.sqrt(sigma / (1 - (sigma_next if sigma == 1 else sigma))) * eta
    dt = sigma_next - sigma
    mean = (image_latents.double() * (1 + std**2 / (2 * sigma) * dt)
            + pred_velocity.double() * (1 + std**2 * (1 - sigma) / (2 * sigma)) * dt)
    denom = 2 * std**2 * abs(dt)

    def log_prob_fn(latents, mean_next_latents):
        return -((latents.double() - mean_next_latents.double()) ** 2).mean(dim=(1, 2)) / denom

    return log_prob_fn, mean


def relative_adv(rewards, adv_clip_max):
    """AdaGRPO ``compute_relative_adv`` (utils/utilities.py @c4028f9): over all elements, unbiased std + 1e-8."""
    r = rewards.double()
    return ((r - r.mean()) / (r.std() + 1e-8)).clamp(-adv_clip_max, adv_clip_max)


def ema_adv(rewards, ema_mean, ema_std, adv_clip_max):
    """AdaGRPO ``compute_ema_adv`` (src/method_adagrpo.py @c4028f9)."""
    z = (rewards.double() - float(ema_mean)) / (float(ema_std) + 1e-8)
    pos, neg = z > 0, z < 0
    sum_pos, sum_neg = z[pos].sum(), z[neg].abs().sum()
    if sum_pos < 1e-6 or sum_neg < 1e-6:
        z = z - z.mean()
    else:
        z = torch.where(pos, z / sum_pos, torch.where(neg, z / sum_neg, z))
    return z.clamp(-adv_clip_max, adv_clip_max)


def tracker_update(history: dict, prompts, rewards, dists=None, type="grpo", global_std=False):
    """Flow-GRPO ``PerPromptStatTracker.update`` (stat_tracking.py @94e23ee5) as it intends: ``history`` (prompt →
    list of reward rows since clear()) is extended first, then each prompt's advantages use mean / population std
    over its history (axis 0); ε = 1e-4. Types grpo, rwr, sft, dpo, gardo; anything else leaves zeros."""
    prompts = np.array(prompts)
    rewards = np.array(rewards, dtype=np.float64)
    out = np.zeros_like(rewards)
    if dists is not None and type == "gardo":
        dists = np.array(dists, dtype=np.float64)
        dists = dists / np.linalg.norm(dists, ord=2, axis=1, keepdims=True)
    for p in np.unique(prompts):
        history.setdefault(p, []).extend(rewards[prompts == p])
    for p in np.unique(prompts):
        mask = prompts == p
        seen = np.stack(history[p])
        mine = rewards[mask]
        mean = seen.mean(axis=0, keepdims=True)
        std = (np.std(rewards, axis=0, keepdims=True) if global_std else np.std(seen, axis=0, keepdims=True)) + 1e-4
        if type == "grpo":
            out[mask] = (mine - mean) / std
        elif type == "rwr":
            out[mask] = mine
        elif type == "sft":
            out[mask] = (mine == mine.max()).astype(np.float64)
        elif type == "dpo":
            hi, lo = int(np.argmax(mine)), int(np.argmin(mine))
            if hi == lo:
                hi, lo = 1, 0
            result = np.zeros_like(mine)
            result[hi], result[lo] = 1.0, -1.0
            out[mask] = result
        elif type == "gardo":
            f = dists[mask]
            distance = 1 - np.clip(f @ f.T, -1, 1)
            nearest = np.array([np.min(np.delete(distance[i], i)) for i in range(len(f))])
            weight = np.repeat(nearest[:, None], mine.shape[-1], axis=1)
            weight = np.where(mine - mean < 0, np.ones_like(weight), weight / np.mean(weight))
            out[mask] = (mine - mean) * weight
    return out


def dpm_pp_2m(x, d_a, sigma, sigma_next, d_b=None, sigma_prev=None):
    """DPM-Solver++ 2M midpoint in flow form (arXiv 2211.01095), fp64 scalars."""
    x, d_a = x.double(), d_a.double()
    if sigma_next == 0:
        return d_a
    lam = lambda s: -math.inf if s == 1 else math.log((1 - s) / s)  # noqa: E731
    h = lam(sigma_next) - lam(sigma)
    D = d_a
    if d_b is not None:
        r = (lam(sigma) - lam(sigma_prev)) / h
        D = d_a + (d_a - d_b.double()) / (2 * r)
    return (sigma_next / sigma) * x - (1 - sigma_next) * math.expm1(-h) * D
