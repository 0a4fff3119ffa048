"""Drop-in for Flow-GRPO (yifan123/flow_grpo): ``sde_step_with_logprob``
(``flow_grpo/diffusers_patch/sd3_sde_with_logprob.py``, checked at commit 54809b5fcf4d3930d2a17fa553928704bd0b719e)
and ``PerPromptStatTracker`` (``flow_grpo/stat_tracking.py``, checked at commit
94e23ee5405ab7241fc1f75d30cac8147e2b1f53).

    from fastgrpo.compat.flow_grpo import PerPromptStatTracker, sde_step_with_logprob

Same signatures, defaults, tuples, shapes and dtypes. Where the numbers differ, deliberately, each docstring says so.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
from torch import Tensor

from ..ops import flow_step
from ._common import (ArgumentIndexError, add_noise, broadcast_shape, linear_mean, randn_like_anchor, squared_distance,
                      torch_path)

_FAMILY = {"sde": ("flow_sde", "full"), "cps": ("cps", "cps")}
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def step_indices(scheduler, timestep, device: torch.device):
    """``FlowMatchEulerDiscreteScheduler.index_for_timestep`` for every element of ``timestep``: the first exact
    match, or the second when the timestep appears more than once (diffusers' rule for the very first step).

    Returns ``(index, found)``: with a host schedule and host timesteps a list of ints and None (a missing timestep
    raises like the anchor, an IndexError — here also a ValueError); otherwise (n,) device tensors (index, found
    mask) and no host sync: a missing timestep gets σ = NaN instead of an exception."""
    schedule = scheduler.timesteps
    values = _host_values(timestep) if schedule.device.type == "cpu" else None
    if values is not None:
        positions: dict = {}
        for i, value in enumerate(schedule.tolist()):
            positions.setdefault(value, []).append(i)
        index = []
        for value in values:
            found = positions.get(value)
            if not found:
                raise ArgumentIndexError(f"timestep {value} is not in the scheduler's timesteps")
            index.append(found[1] if len(found) > 1 else found[0])
        return index, None
    schedule = schedule.to(device)
    t = timestep if isinstance(timestep, Tensor) else torch.stack(
        [torch.as_tensor(v, device=device).reshape(()) for v in timestep]) if isinstance(timestep, (list, tuple)) \
        else torch.as_tensor(timestep, device=device)
    t = t.to(device).reshape(-1)
    matches = schedule[None, :] == t[:, None]  # compared in the promoted dtype, as the anchor's ``==``
    rank = matches.cumsum(1)
    first = (rank == 1).int().argmax(1)
    second = (rank == 2).int().argmax(1)
    return torch.where(rank[:, -1] > 1, second, first), rank[:, -1] > 0


def _host_values(timestep):
    """The timesteps as Python numbers when they are on the host (exact: a number compares equal to an fp32
    schedule value exactly when the anchor's promoted ``==`` does), else None."""
    if isinstance(timestep, Tensor):
        return timestep.reshape(-1).tolist() if timestep.device.type == "cpu" else None
    if isinstance(timestep, (list, tuple)):
        if any(isinstance(t, Tensor) and t.device.type != "cpu" for t in timestep):
            return None
        return [t.item() if isinstance(t, Tensor) else t for t in timestep]
    return [timestep]


def sde_step_with_logprob(self, model_output: Tensor, timestep, sample: Tensor, noise_level: float = 0.7,
                          prev_sample: Optional[Tensor] = None, generator=None, sde_type: Optional[str] = "sde",
                          return_sqrt_dt: Optional[bool] = False):
    """One SD3 flow step with its log-prob. ``self``: a diffusers ``FlowMatchEulerDiscreteScheduler``.

    σ, σ' = sigmas[i], sigmas[i + 1] with i = ``index_for_timestep`` of each element of ``timestep`` (n of them),
    Δ = σ' − σ. fp32 math (bf16 model outputs are read as fp32).
    sde: g = η·sqrt(σ/(1 − σ̃)), σ̃ = σ_1 (= sigmas[1]) where σ = 1, else σ;
         μ = x(1 + g²Δ/(2σ)) + v(1 + g²(1−σ)/(2σ))Δ, x' = μ + g·sqrt(−Δ)·ε,
         log p = mean(−(x'−μ)²/(2g²(−Δ)) − log(g·sqrt(−Δ)) − log sqrt(2π)); std_dev_t = g.
    cps: s = σ'·sin(ηπ/2), μ = (1−σ')x̂0 + sqrt(σ'²−s²)x̂1, x' = μ + s·ε, log p = mean(−(x'−μ)²); std_dev_t = s.
    ε: diffusers' ``randn_tensor`` (fp32, the model output's shape and device) with ``generator``.

    Returns ``(prev_sample, log_prob, prev_sample_mean, std_dev_t[, sqrt(−Δ)])``: prev_sample and the mean fp32
    with the broadcast batch, log_prob fp32 (batch,), std_dev_t and sqrt(−Δ) fp32 (n, 1, …) on the scheduler's
    device — (1, 1, 1, 1) for Flow-GRPO's rollout timestep ``t.unsqueeze(0)``. A given prev_sample comes back as
    ``prev_sample.float()``.

    Differences, all deliberate: log_prob is finite where the anchor's is NaN (0 at ``noise_level=0``; with a
    negative noise level, the density of |s|; 1 − σ' where the anchor divides by 1 − σ_1 = 0); the step's scalars
    are evaluated in fp64 on the host (the anchor: fp32 tensors; a few fp32 ulps apart); ``timestep`` may also be a
    scalar (the anchor iterates over it: TypeError), giving n = 1; an unknown ``sde_type`` raises a ValueError
    (the anchor an UnboundLocalError); a timestep missing from the schedule raises, on the host, an IndexError
    that is also a ValueError, and gives NaN results on a device (the anchor's check is a host sync per sample);
    on the fused CUDA path the sampled prev_sample carries no gradient (the anchor's does, through the mean;
    rollouts run under no_grad). σ is looked up once per distinct timestep (the anchor calls
    ``index_for_timestep(t)`` and ``.item()`` per sample); the mean, sample and log-prob run fused on CUDA
    (Triton) and in four passes plus a norm on the PyTorch path.
    """
    if sde_type not in _FAMILY:
        raise ValueError(f"sde_type must be 'sde' or 'cps', got {sde_type!r}")
    eta = float(noise_level)
    nd = sample.dim()
    device = sample.device
    sigmas = self.sigmas
    batch = sample.shape[0] if nd else 1
    view = (-1,) + (1,) * (nd - 1)
    index, found = step_indices(self, timestep, sigmas.device)
    n = len(index) if found is None else index.numel()
    if found is None:  # host lookups: the step's scalars in fp64 Python floats, once per distinct index
        table = sigmas.tolist()
        per_index = {i: _host_scalars(table[i], table[i + 1], table[1], eta, sde_type) for i in set(index)}
        a, b, s, g, r = (list(c) for c in zip(*(per_index[i] for i in index)))
        std_dev_t = torch.tensor(g, dtype=sigmas.dtype, device=sigmas.device).reshape(view)
        sqrt_dt = torch.tensor(r, dtype=sigmas.dtype, device=sigmas.device).reshape(view)
        uniform = len(per_index) == 1 and n <= batch
        sigma = [table[i] for i in index]
        sigma_next = [table[i + 1] for i in index]
        if uniform:
            a, b, s, sigma, sigma_next = a[0], b[0], s[0], sigma[0], sigma_next[0]
    else:
        sigma, sigma_next = sigmas[index], sigmas[index + 1]
        nan = torch.full_like(sigma, float("nan"))
        sigma, sigma_next = torch.where(found, sigma, nan), torch.where(found, sigma_next, nan)
        a, b, s, std_dev_t, sqrt_dt = _step_scalars(sigma, sigma_next, sigmas[1], eta, sde_type)
        std_dev_t, sqrt_dt = std_dev_t.reshape(view), sqrt_dt.reshape(view)
    if prev_sample is not None:
        prev_sample = prev_sample.float()

    if (not torch_path(device) and n in (1, batch) and eta >= 0 and nd >= 2 and model_output.shape == sample.shape
            and (prev_sample is None or prev_sample.shape == sample.shape)):
        family, logprob = _FAMILY[sde_type]
        noise = None
        if prev_sample is None:
            noise = randn_like_anchor(model_output.shape, generator, model_output.device, torch.float32)
        v = model_output if model_output.dtype != torch.float64 else model_output.float()
        x = sample if sample.dtype != torch.float64 else sample.float()
        out = flow_step(v, x, _on(sigma, device), _on(sigma_next, device), eta, family=family, logprob=logprob,
                        noise=noise, x_next=prev_sample, return_mean=True)
        x_next, log_prob, mean = out.x_next, out.log_prob, out.mean
    else:
        a, b, s_applied = (c if isinstance(c, float) else _on(c, device).reshape(view) for c in (a, b, s))
        mean = linear_mean(sample, model_output, a, b)
        x_next = prev_sample
        if x_next is None:
            noise = randn_like_anchor(model_output.shape, generator, model_output.device, torch.float32)
            x_next = add_noise(mean, noise, s_applied)
        sq = squared_distance(x_next, mean)
        count = math.prod(broadcast_shape(x_next.shape, mean.shape)[1:])
        log_prob = _log_prob(sq, count, s, sde_type)

    result = (x_next, log_prob, mean, std_dev_t)
    return result + (sqrt_dt,) if return_sqrt_dt else result


def _host_scalars(sigma: float, sigma_next: float, sigma_1: float, eta: float, sde_type: str):
    """(a, b, s, std_dev_t, sqrt(−Δ)) of one step in fp64, μ = a·x + b·v, s the std of the noise applied."""
    dt = sigma_next - sigma
    sqrt_dt = math.sqrt(-dt) if dt <= 0 else math.nan
    if sde_type == "sde":
        one_minus = 1 - (sigma_1 if sigma == 1 else sigma)
        if not one_minus > 0:  # the anchor divides by 0: finite here, as 1 − σ'
            one_minus = 1 - sigma_next
        if not one_minus > 0:
            return (math.nan,) * 4 + (sqrt_dt,)
        h = eta * eta / (2 * one_minus)  # g²/(2σ), without dividing by σ
        g = math.sqrt(sigma / one_minus) * eta if sigma >= 0 else math.nan
        return 1 + h * dt, (1 + h * (1 - sigma)) * dt, g * sqrt_dt, g, sqrt_dt
    s = sigma_next * math.sin(eta * math.pi / 2)
    c = math.sqrt(max(sigma_next * sigma_next - s * s, 0.0))
    return (1 - sigma_next) + c, c * (1 - sigma) - sigma * (1 - sigma_next), s, s, sqrt_dt


def _step_scalars(sigma: Tensor, sigma_next: Tensor, sigma_1: Tensor, eta: float, sde_type: str):
    """``_host_scalars`` for (n,) device tensors (no host sync)."""
    dt = sigma_next - sigma
    sqrt_dt = torch.sqrt(-dt)
    if sde_type == "sde":
        one_minus = 1 - torch.where(sigma == 1, sigma_1, sigma)
        one_minus = torch.where(one_minus > 0, one_minus, 1 - sigma_next)
        h = eta * eta / (2 * one_minus)
        g = torch.sqrt(sigma / one_minus) * eta
        return 1 + h * dt, (1 + h * (1 - sigma)) * dt, g * sqrt_dt, g, sqrt_dt
    s = sigma_next * math.sin(eta * math.pi / 2)
    c = torch.sqrt(torch.clamp(sigma_next * sigma_next - s * s, min=0))
    return (1 - sigma_next) + c, c * (1 - sigma) - sigma * (1 - sigma_next), s, s, sqrt_dt


def _on(value, device: torch.device):
    """A step scalar for the kernels: a float stays a float; a list or tensor becomes an fp32 tensor on device."""
    if isinstance(value, float):
        return value
    if isinstance(value, Tensor):
        return value.to(device, torch.float32)
    return torch.tensor(value, dtype=torch.float32, device=device)


def _log_prob(sq: Tensor, count: int, s, sde_type: str) -> Tensor:
    """Per-sample mean log-density from Σ(x'−μ)² over ``count`` elements per sample; s: the noise std, a float
    (one for the batch), a list of floats or an (n,) device tensor. 0 where s = 0 (the anchor: NaN); a negative s
    (negative noise level) counts as |s|."""
    if sde_type == "cps":
        return sq * (-1.0 / count)
    if isinstance(s, (float, list)):
        pairs = [(-0.5 / (count * si * si), -math.log(abs(si)) - _LOG_SQRT_2PI) if si != 0 else (0.0, 0.0)
                 for si in ([s] if isinstance(s, float) else s)]
        if len(pairs) == 1:
            return sq * pairs[0][0] + pairs[0][1]
        scale, offset = torch.tensor(pairs, dtype=torch.float32, device=sq.device).unbind(1)
        return sq * scale + offset
    s = s.reshape(-1).abs()
    positive = s > 0
    safe = torch.where(positive, s, torch.ones_like(s))
    lp = sq * ((-0.5 / count) / (safe * safe)) + (-torch.log(safe) - _LOG_SQRT_2PI)
    return torch.where(positive, lp, torch.zeros_like(lp))


class PerPromptStatTracker:
    """Drop-in for Flow-GRPO's ``PerPromptStatTracker`` (``flow_grpo/stat_tracking.py``, commit 94e23ee5), built
    on ``fastgrpo.ops.group_advantages`` (fp64 on the host, like the anchor's numpy).

    ``update(prompts, rewards, dists=None, type='grpo')`` returns a float64 numpy array shaped like ``rewards``
    ((N,) or (N, T); statistics per column):
    ``grpo``: (r − mean_p)/(std_p + 1e-4), population std over all rewards seen for the prompt since ``clear()``
    (or the std of this update's rewards with ``global_std``); ``rwr``: the raw reward; ``sft``: 1 where a reward
    equals its group's maximum (ties too), else 0; ``dpo``: +1 at the first argmax, −1 at the first argmin (both
    over the group's flattened rewards; when they coincide, −1 at the group's first sample and +1 at its second);
    ``gardo`` (needs ``dists``, (N, D) features, and (N, T) rewards): (r − mean_p)·w with w = 1 where r < mean_p,
    else d/mean_p(d), d = each sample's smallest cosine distance 1 − clip(f·f') to another sample of its prompt
    (rows of ``dists`` L2-normalised); any other ``type``: zeros (after recording the rewards), with a warning.

    Differences, all deliberate: rewards accumulate per prompt across ``update`` calls until ``clear()`` — the
    anchor intends this but raises AttributeError when a prompt repeats before ``clear()``; a group with equal
    rewards gets exactly 0 under ``grpo`` (the anchor: ±1e-12-sized rounding); ``gardo`` features are normalised
    and compared in fp64 (the anchor: their own dtype). Inputs the anchor rejects raise a ValueError — also an
    IndexError where the anchor raises one (prompts and rewards of different lengths; a one-sample group under
    ``dpo``). Prompts are mapped to group ids with one dict pass (the anchor compares the whole prompt array once
    per unique prompt: quadratic).
    """

    def __init__(self, global_std: bool = False):
        self.global_std = global_std
        # one record per update since clear(): (distinct prompts → id, ids per sample, rewards); the per-prompt
        # view is built only when a prompt repeats, so the usual update-then-clear costs no per-prompt work
        self._batches: list[tuple[dict, "np.ndarray", "np.ndarray"]] = []
        self.history_prompts: set[int] = set()

    def update(self, prompts, rewards, dists=None, type: str = "grpo"):  # noqa: A002 — the anchor's argument name
        import numpy as np

        from ..ops import keys_to_group_ids

        rewards = np.array(rewards, dtype=np.float64)  # a copy: later edits of the caller's array stay out
        prompts = list(prompts)
        if rewards.ndim == 0 or len(prompts) != rewards.shape[0]:
            raise ArgumentIndexError(f"{len(prompts)} prompts for rewards of shape {rewards.shape}: one reward "
                                     "(row) per prompt")
        if type == "gardo":
            dists = _check_gardo(dists, rewards)
        ids_t, unique = keys_to_group_ids(prompts, return_keys=True)
        ids = ids_t.numpy()
        if type == "dpo" and np.bincount(ids).min() < 2:
            raise ArgumentIndexError("type='dpo' needs at least two samples per prompt (the anchor raises an "
                                     "IndexError for a one-sample group)")
        past = self._past(unique)
        self._batches.append((dict(zip(unique, range(len(unique)))), ids, rewards))
        self.history_prompts.update(map(hash, unique))
        if type == "rwr":
            return rewards.copy()
        if type in ("sft", "dpo"):
            if rewards.ndim == 1:
                return _rank_advantages(torch.from_numpy(rewards), ids_t, type).numpy()
            return _rank_advantages_rows(rewards, ids, len(unique), type)
        if type not in ("grpo", "gardo"):
            warnings.warn(f"PerPromptStatTracker.update: unknown type {type!r}; returning zeros, as the anchor",
                          stacklevel=2)
            return np.zeros_like(rewards)
        all_rewards, all_ids = rewards, ids
        if past:
            all_rewards = np.concatenate([rewards] + [h for _, h in past])
            all_ids = np.concatenate([ids] + [np.full(len(h), i, dtype=np.int64) for i, h in past])
        n = len(prompts)
        flat = torch.from_numpy(all_rewards.reshape(len(all_ids), -1))
        all_ids_t = torch.from_numpy(all_ids)
        if type == "gardo":
            centred = (flat - _group_mean(flat, all_ids_t))[:n].numpy().reshape(rewards.shape)
            return centred * _gardo_weights(dists, ids, len(unique), centred)
        if self.global_std:  # the std of this update's rewards replaces the per-prompt std (per column)
            centred = flat - _group_mean(flat, all_ids_t)
            adv = centred[:n] / (flat[:n].std(0, correction=0) + 1e-4)
        else:  # one column at a time: a 2-D reward array keeps its columns apart, as the anchor's axis=0 stats
            from ..ops import group_advantages

            adv = torch.stack([group_advantages(flat[:, c], all_ids_t, std="population", eps=1e-4,
                                                check_finite=False, backend="torch").advantages[:n]
                               for c in range(flat.shape[1])], 1)
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

    @stats.setter
    def stats(self, value: dict) -> None:
        """Replace the stored rewards (``tracker.stats = {}`` clears, as with the anchor's plain attribute)."""
        import numpy as np

        self._batches = []
        for prompt, rewards in dict(value).items():
            rewards = np.array(rewards, dtype=np.float64).reshape(len(rewards), *np.shape(rewards)[1:])
            self._batches.append(({prompt: 0}, np.zeros(len(rewards), dtype=np.int64), rewards))

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


def _check_gardo(dists, rewards):
    import numpy as np

    if dists is None:
        raise ValueError("type='gardo' needs dists, (N, D) features per sample")
    dists = np.array(dists, dtype=np.float64)
    if dists.ndim != 2 or dists.shape[0] != rewards.shape[0]:
        raise ValueError(f"dists must be (N, D) with N = {rewards.shape[0]} rows, got shape {dists.shape}")
    if rewards.ndim != 2:
        raise ValueError("type='gardo' needs rewards of shape (N, T) (the anchor's broadcasting fails on (N,))")
    with np.errstate(invalid="ignore", divide="ignore"):
        return dists / np.linalg.norm(dists, ord=2, axis=1, keepdims=True)


def _gardo_weights(features, ids, groups: int, centred):
    """GARDO's per-sample weights: 1 below the prompt's mean, else the nearest-neighbour cosine distance within
    the prompt's samples divided by its mean over the prompt."""
    import numpy as np

    nearest = np.empty(len(ids))
    scale = np.empty(len(ids))
    for g in range(groups):
        rows = np.flatnonzero(ids == g)
        if len(rows) < 2:
            raise ValueError("type='gardo' needs at least two samples per prompt (a nearest neighbour)")
        f = features[rows]
        distance = 1.0 - np.clip(f @ f.T, -1.0, 1.0)
        np.fill_diagonal(distance, np.inf)
        nearest[rows] = distance.min(axis=1)
        scale[rows] = nearest[rows].mean()
    weights = (nearest / scale)[:, None]
    return np.where(centred < 0, 1.0, weights)


def _group_mean(values: Tensor, ids: Tensor) -> Tensor:
    """(N, C) values → each row's group mean (N, C)."""
    n = ids.numel()
    sums = torch.zeros((n, values.shape[1]), dtype=values.dtype).index_add_(0, ids, values)
    counts = torch.zeros(n, dtype=values.dtype).index_add_(0, ids, torch.ones(n, dtype=values.dtype))
    return (sums / counts.clamp(min=1).unsqueeze(1))[ids]


def _rank_advantages(rewards: Tensor, ids: Tensor, kind: str) -> Tensor:
    """``sft``/``dpo`` advantages per group of 1-D rewards, vectorised (first argmax / argmin, as torch's)."""
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
    return torch.where(order == minus[ids], -torch.ones_like(adv), adv)


def _rank_advantages_rows(rewards, ids, groups: int, kind: str):
    """``sft``/``dpo`` for (N, T) rewards, per group: sft compares every entry with the group's overall maximum;
    dpo takes the flat argmax/argmin over the group's (n, T) block and marks those *rows* of the group (a flat
    index past the group's rows raises, as the anchor's indexing does)."""
    import numpy as np

    out = np.zeros_like(rewards)
    for g in range(groups):
        rows = np.flatnonzero(ids == g)
        block = rewards[rows]
        if kind == "sft":
            out[rows] = (block == block.max()).astype(rewards.dtype)
            continue
        plus, minus = int(np.argmax(block)), int(np.argmin(block))
        if plus == minus:
            plus, minus = 1, 0
        if max(plus, minus) >= len(rows):
            raise ArgumentIndexError(f"type='dpo' with rewards of shape {rewards.shape}: the flat argmax/argmin "
                                     f"{max(plus, minus)} of a prompt's block is past its {len(rows)} rows (the "
                                     "anchor raises an IndexError)")
        result = np.zeros_like(block)
        result[plus] = 1.0
        result[minus] = -1.0
        out[rows] = result
    return out
