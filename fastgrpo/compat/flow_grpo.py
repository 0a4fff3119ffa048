"""Drop-in for Flow-GRPO's step (yifan123/flow_grpo, ``flow_grpo/diffusers_patch/sd3_sde_with_logprob.py``).

    from fastgrpo.compat.flow_grpo import sde_step_with_logprob

Same signature, tuple and numbers (fp32 math, both ``sde`` and ``cps``), through the fused ``flow_step`` op.
Differences, all deliberate: σ is looked up for the whole batch on the device (the anchor calls
``index_for_timestep(t).item()`` per sample — a host sync each); ``timestep`` may be a scalar, (1,) or (B,);
the log-prob is finite (0) at ``noise_level=0`` where the anchor's is NaN; an unknown ``sde_type`` raises a
ValueError (the anchor an UnboundLocalError). On device tensors a timestep missing from the schedule is not
detected (that check would be a sync); on CPU it raises like the anchor.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..ops import flow_step
from ._common import per_sample_view, randn_like_anchor

_FAMILY = {"sde": ("flow_sde", "full"), "cps": ("cps", "cps")}


def step_indices(scheduler, timestep, batch: int, device: torch.device) -> Tensor:
    """Vectorised ``FlowMatchEulerDiscreteScheduler.index_for_timestep``: the first exact match, or the second
    when the timestep appears more than once (diffusers' rule for the very first step). No host sync."""
    schedule = scheduler.timesteps.to(device)
    t = torch.as_tensor(timestep, device=device, dtype=schedule.dtype).reshape(-1)
    matches = schedule[None, :] == t[:, None]
    if device.type == "cpu" and not bool(matches.any(1).all()):
        raise ValueError(f"timestep {t.tolist()} is not in the scheduler's timesteps")
    rank = matches.cumsum(1)
    first = (rank == 1).int().argmax(1)
    second = (rank == 2).int().argmax(1)
    index = torch.where(rank[:, -1] > 1, second, first)
    return index.expand(batch) if index.numel() == 1 else index


def sde_step_with_logprob(self, model_output: Tensor, timestep, sample: Tensor, noise_level: float = 0.7,
                          prev_sample: Optional[Tensor] = None, generator=None, sde_type: str = "sde",
                          return_sqrt_dt: bool = False):
    """One SD3 flow step with its log-prob. ``self``: a diffusers ``FlowMatchEulerDiscreteScheduler``.

    sde: g = η·sqrt(σ/(1−σ)) (1 − σ_1 at σ = 1), μ = x(1 + g²Δ/(2σ)) + v(1 + g²(1−σ)/(2σ))Δ, x' = μ + g·sqrt(−Δ)·ε,
         log p = mean(−(x'−μ)²/(2g²(−Δ)) − log(g·sqrt(−Δ)) − log sqrt(2π)); returns std_dev_t = g.
    cps: s = σ'·sin(η·π/2), μ = (1−σ')x̂0 + sqrt(σ'²−s²)x̂1, x' = μ + s·ε, log p = mean(−(x'−μ)²); std_dev_t = s.
    Returns ``(prev_sample, log_prob, prev_sample_mean, std_dev_t[, sqrt(−Δ)])``, σ-shaped values as (B, 1, ...).
    """
    if sde_type not in _FAMILY:
        raise ValueError(f"sde_type must be 'sde' or 'cps', got {sde_type!r}")
    family, logprob = _FAMILY[sde_type]
    device, batch, nd = sample.device, sample.shape[0], sample.dim()
    index = step_indices(self, timestep, batch, device)
    sigmas = self.sigmas.to(device)
    sigma, sigma_next = sigmas[index], sigmas[index + 1]
    noise = None
    if prev_sample is None:
        # the anchor upcasts model_output to fp32 first, so its noise is fp32
        noise = randn_like_anchor(model_output.shape, generator, model_output.device, torch.float32)
    else:
        prev_sample = prev_sample.float()
    out = flow_step(model_output, sample, sigma, sigma_next, float(noise_level), family=family, logprob=logprob,
                    noise=noise, x_next=prev_sample, return_mean=True)
    sqrt_dt = torch.sqrt(sigma - sigma_next)
    std_dev_t = out.std / sqrt_dt if sde_type == "sde" else out.std
    result = (out.x_next, out.log_prob, out.mean, per_sample_view(std_dev_t, nd))
    if return_sqrt_dt:
        result += (per_sample_view(sqrt_dt, nd),)
    return result


class PerPromptStatTracker:
    """Drop-in for Flow-GRPO's ``flow_grpo/stat_tracking.py`` ``PerPromptStatTracker``, built on
    ``fastgrpo.ops.group_advantages`` (fp64 on the host, like the anchor's numpy).

    ``update(prompts, rewards, type)`` returns a numpy array of advantages:
    ``grpo``: (r − mean_p)/(std_p + 1e-4), population std over all rewards seen for the prompt since ``clear()``
    (or over the whole update's rewards with ``global_std``); ``rwr``: the raw reward; ``sft``: 1 for the group's
    maximum (ties too), else 0; ``dpo``: +1 at the first argmax, −1 at the first argmin (when they coincide, −1 at
    the group's first sample and +1 at its second, as the anchor).
    Differences: rewards accumulate per prompt across ``update`` calls until ``clear()`` — the anchor intends this
    but raises AttributeError when a prompt repeats before ``clear()``; a singleton group under ``dpo`` gets 0
    (the anchor raises IndexError); a group with equal rewards gets exactly 0 under ``grpo``. Prompts are mapped
    to group ids with one dict pass (the anchor compares the whole prompt array once per unique prompt: quadratic).
    """

    def __init__(self, global_std: bool = False):
        self.global_std = global_std
        # one record per update since clear(): (distinct prompts, their ids per sample, rewards); the per-prompt
        # view is built only when a prompt repeats, so the usual update-then-clear costs no per-prompt work
        self._batches: list[tuple[dict, "np.ndarray", "np.ndarray"]] = []
        self.history_prompts: set[int] = set()

    def update(self, prompts, rewards, type: str = "grpo"):  # noqa: A002 — the anchor's argument name
        import numpy as np

        from ..ops import group_advantages, keys_to_group_ids

        if type not in ("grpo", "rwr", "sft", "dpo"):
            raise ValueError(f"type must be one of 'grpo', 'rwr', 'sft', 'dpo', got {type!r}")
        rewards = np.asarray(rewards, dtype=np.float64)
        prompts = list(prompts)
        if len(prompts) != rewards.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {rewards.shape[0]} rewards")
        ids_t, unique = keys_to_group_ids(prompts, return_keys=True)
        ids = ids_t.numpy()
        past = self._past(unique)
        self._batches.append((dict(zip(unique, range(len(unique)))), ids, rewards))
        self.history_prompts.update(map(hash, unique))
        if type == "rwr":
            return rewards.copy()
        if type in ("sft", "dpo"):
            return _rank_advantages(torch.from_numpy(rewards), ids_t, type).numpy()
        all_rewards, all_ids = rewards, ids
        if past:
            all_rewards = np.concatenate([rewards] + [h for _, h in past])
            all_ids = np.concatenate([ids] + [np.full(len(h), i, dtype=np.int64) for i, h in past])
        all_rewards = torch.from_numpy(all_rewards.reshape(len(all_ids), -1))
        all_ids = torch.from_numpy(all_ids)
        n = len(prompts)
        if self.global_std:  # the std of this update's rewards replaces the per-prompt std (per column)
            centred = all_rewards - _group_mean(all_rewards, all_ids)
            adv = centred[:n] / (all_rewards[:n].std(0, correction=0) + 1e-4)
        else:  # one column at a time: a 2-D reward array keeps its columns apart, as the anchor's axis=0 stats
            adv = torch.stack([group_advantages(all_rewards[:, c], all_ids, std="population", eps=1e-4,
                                                backend="torch").advantages[:n]
                               for c in range(all_rewards.shape[1])], 1)
        return adv.numpy().reshape(rewards.shape)

    def _past(self, unique):
        """(id in this update, earlier rewards) for this update's prompts seen before since ``clear()``."""
        import numpy as np

        past = []
        for i, prompt in enumerate(unique):
            chunks = [r[ids == slot[prompt]] for slot, ids, r in self._batches if prompt in slot]
            if chunks:
                past.append((i, np.concatenate(chunks)))
        return past if self._batches else []

    @property
    def stats(self) -> dict:
        """Prompt → rewards stored since ``clear()`` (the anchor's attribute, built on demand)."""
        import numpy as np

        out: dict = {}
        for slot, ids, r in self._batches:
            for prompt, i in slot.items():
                out.setdefault(prompt, []).append(r[ids == i])
        return {p: np.concatenate(chunks) for p, chunks in out.items()}

    def get_stats(self):
        """``(average rewards stored per prompt, number of distinct prompts ever seen)``, as the anchor."""
        import numpy as np

        counts: dict = {}
        for slot, ids, _ in self._batches:
            per_id = np.bincount(ids, minlength=len(slot))
            for prompt, i in slot.items():
                counts[prompt] = counts.get(prompt, 0) + int(per_id[i])
        avg_group_size = sum(counts.values()) / len(counts) if counts else 0
        return avg_group_size, len(self.history_prompts)

    def clear(self) -> None:
        self._batches = []


def _group_mean(values: Tensor, ids: Tensor) -> Tensor:
    """(N, C) values → each row's group mean (N, C)."""
    n = ids.numel()
    sums = torch.zeros((n, values.shape[1]), dtype=values.dtype).index_add_(0, ids, values)
    counts = torch.zeros(n, dtype=values.dtype).index_add_(0, ids, torch.ones(n, dtype=values.dtype))
    return (sums / counts.clamp(min=1).unsqueeze(1))[ids]


def _rank_advantages(rewards: Tensor, ids: Tensor, kind: str) -> Tensor:
    """``sft``/``dpo`` advantages per group, vectorised (first argmax / argmin as torch.argmax/argmin pick)."""
    n = ids.numel()
    order = torch.arange(n)
    gmax = torch.full((n,), float("-inf"), dtype=rewards.dtype).scatter_reduce_(0, ids, rewards, "amax")
    if kind == "sft":
        return (rewards == gmax[ids]).to(rewards.dtype)
    gmin = torch.full((n,), float("inf"), dtype=rewards.dtype).scatter_reduce_(0, ids, rewards, "amin")
    big = torch.full((n,), n, dtype=torch.int64)
    first_max = big.clone().scatter_reduce_(0, ids, torch.where(rewards == gmax[ids], order, n), "amin")
    first_min = big.clone().scatter_reduce_(0, ids, torch.where(rewards == gmin[ids], order, n), "amin")
    first = big.clone().scatter_reduce_(0, ids, order, "amin")
    second = big.clone().scatter_reduce_(0, ids, torch.where(order == first[ids], n, order), "amin")
    tie = first_max == first_min
    plus = torch.where(tie, second, first_max)
    minus = torch.where(tie, first, first_min)
    adv = torch.zeros_like(rewards)
    adv = torch.where(order == plus[ids], torch.ones_like(adv), adv)
    adv = torch.where(order == minus[ids], -torch.ones_like(adv), adv)
    counts = torch.zeros(n, dtype=torch.int64).index_add_(0, ids, torch.ones_like(ids))
    return torch.where(counts[ids] > 1, adv, torch.zeros_like(adv))
