"""A frozen copy of the trained weights — DiffusionNFT's "old" (rollout) policy, an EMA anchor.

Only the trainable parameters are copied (the LoRA adapter under LoRA, every weight under full fine-tuning; under
FSDP2 each rank copies its own shards). ``active()`` swaps the copy into the live parameters for a no-grad forward
and swaps the trained values back after, so one module serves both policies under DDP, FSDP2 and peft alike (peft's
``set_adapter`` would instead flip ``requires_grad`` on the adapters, which DDP registered at wrap time).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on the CPU (a DTensor's ``full_tensor`` is a collective: every rank calls it)."""
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu().clone()


def _placed_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as ``like``: sharded the same way for a DTensor, on its device and dtype otherwise."""
    full = full.to(device=like.device, dtype=like.dtype)
    if hasattr(like, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full, like.device_mesh, like.placements)
    return full


def _reshard(model: nn.Module) -> None:
    """Drop FSDP2's gathered (unsharded) parameters, so the next forward gathers the shards as they are now: the
    root module keeps its gathered parameters after a forward, which would otherwise outlive a swap."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2: nothing is ever gathered
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def soft_update_decay(optimizer_steps: int, rate: float = 0.001, cap: float = 0.5) -> float:
    """The decay d = min(rate·s, cap) after s optimiser steps, for θ_snap ← d·θ_snap + (1−d)·θ: the schedule of
    DiffusionNFT's old policy (NVlabs/DiffusionNFT ``decay_type=1``: rate 0.001, cap 0.5) and of AWM's and DGPO's
    EMA copies (their released code: rate 0.001, cap 0.3). The first updates copy θ, so early epochs are
    on-policy."""
    return min(rate * optimizer_steps, cap)


class WeightSnapshot:
    """θ_snap, a copy of ``model``'s trainable parameters taken at construction (θ_snap = θ at start)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.named:
            raise ValueError("no trainable parameters to snapshot")
        self.values = [p.detach().clone() for _, p in self.named]

    @contextmanager
    def active(self):
        """Inside the block the live parameters hold θ_snap (no autograd: use under ``torch.no_grad``)."""
        with torch.no_grad():
            _reshard(self.model)
            kept = [p.detach().clone() for _, p in self.named]
            for (_, p), v in zip(self.named, self.values):
                p.copy_(v)
        try:
            yield
        finally:
            with torch.no_grad():
                _reshard(self.model)
                for (_, p), v in zip(self.named, kept):
                    p.copy_(v)

    @torch.no_grad()
    def soft_update(self, decay: float) -> None:
        """θ_snap ← decay·θ_snap + (1 − decay)·θ (decay 0: a copy of θ)."""
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        for (_, p), v in zip(self.named, self.values):
            v.lerp_(p.detach(), 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: _full(v) for (n, _), v in zip(self.named, self.values)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        names = [n for n, _ in self.named]
        if sorted(state) != sorted(names):
            missing, extra = sorted(set(names) - set(state))[:3], sorted(set(state) - set(names))[:3]
            raise ValueError(f"the snapshot does not fit this model (missing {missing}, unexpected {extra})")
        self.values = [_placed_like(state[n], p.detach()) for n, p in self.named]
