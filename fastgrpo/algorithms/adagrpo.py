"""AdaGRPO's online curriculum state (2606.06828; authors' code Bujiazi/GRPO-Series).

Capability EMA over the candidate batch's anchor rewards, with decay α (0.8 in the released script):
    μ_ema ← α·μ_ema + (1−α)·mean(r),  v_ema ← α·v_ema + (1−α)·var(r)  (population variance; the first batch
    initialises both), σ_ema = sqrt(max(v_ema, 1e-8)).
Selection: the k candidates whose anchor reward is closest to μ_ema (after the update) are trained (k = 1 in the
released code). Under torch.distributed the batch mean and variance are all-reduced over ranks (one global EMA,
the default); ``per_rank=True`` keeps one EMA per rank as the released code does.
All state is device tensors; nothing here syncs the host.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._dist import world_size


class CapabilityTracker:
    """EMA of the policy's capability; pass it as ``ema=`` to ``fastgrpo.ops.group_advantages`` for the fusion."""

    def __init__(self, decay: float = 0.8, *, per_rank: bool = False, device: torch.device | str = "cpu"):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.per_rank = per_rank
        self.mean = torch.zeros((), dtype=torch.float32, device=device)
        self.var = torch.zeros((), dtype=torch.float32, device=device)
        self.ready = torch.zeros((), dtype=torch.bool, device=device)

    @property
    def std(self) -> Tensor:
        return torch.sqrt(torch.clamp(self.var, min=1e-8))

    def _batch_moments(self, rewards: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and population variance of the candidate rewards — over all ranks unless ``per_rank`` (one
        all-reduce of (count, Σr, Σr²); no host sync)."""
        r = rewards.detach().double().reshape(-1)  # fp64 sums: Σr² − n·mean² cancels badly in fp32
        sums = torch.stack([torch.full_like(r[0], r.numel()), r.sum(), (r * r).sum()])
        if not self.per_rank and world_size() > 1:
            torch.distributed.all_reduce(sums)
        count, total, total_sq = sums.unbind()
        mean = total / count
        return mean.float(), torch.clamp(total_sq / count - mean * mean, min=0.0).float()

    def update(self, rewards: Tensor) -> None:
        """Fold one candidate batch of anchor rewards into the EMA (the first batch initialises it)."""
        if rewards.numel() == 0:
            raise ValueError("rewards is empty: the capability EMA needs at least one candidate reward")
        rewards = rewards.to(self.mean.device)
        mean, var = self._batch_moments(rewards)
        a = self.decay
        self.mean = torch.where(self.ready, a * self.mean + (1 - a) * mean, mean)
        self.var = torch.where(self.ready, a * self.var + (1 - a) * var, var)
        self.ready = torch.ones_like(self.ready)

    def select(self, anchor_rewards: Tensor, k: int = 1) -> Tensor:
        """Indices of the k candidates whose anchor rewards are closest to μ_ema (ties: lower index first)."""
        if not 1 <= k <= anchor_rewards.numel():
            raise ValueError(f"k must be in [1, {anchor_rewards.numel()}] (the number of candidates), got {k}")
        distance = (anchor_rewards.detach().float().reshape(-1).to(self.mean.device) - self.mean).abs()
        return torch.sort(distance, stable=True).indices[:k]

    def state_dict(self) -> dict:
        return {"decay": self.decay, "per_rank": self.per_rank, "mean": self.mean.clone(), "var": self.var.clone(),
                "ready": self.ready.clone()}

    def load_state_dict(self, state: dict) -> None:
        missing = {"decay", "per_rank", "mean", "var", "ready"} - set(state)
        if missing:
            raise ValueError(f"capability state is missing {sorted(missing)}")
        if state["decay"] != self.decay or state["per_rank"] != self.per_rank:
            raise ValueError(f"capability state was saved with decay={state['decay']}, per_rank={state['per_rank']}; "
                             f"this tracker has decay={self.decay}, per_rank={self.per_rank}")
        device = self.mean.device
        self.mean = state["mean"].to(device=device, dtype=torch.float32).reshape(())
        self.var = state["var"].to(device=device, dtype=torch.float32).reshape(())
        self.ready = state["ready"].to(device=device, dtype=torch.bool).reshape(())
