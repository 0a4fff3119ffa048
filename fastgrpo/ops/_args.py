"""Argument checks shared by the ops: a ValueError that names the argument, and no host sync on device tensors."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

Scalar = Union[float, int, Tensor]


def check_latent(name: str, t: Tensor, like: Optional[Tensor] = None) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if like is None:
        if t.dim() < 2:
            raise ValueError(f"{name} must have a batch dim and at least one more, got shape {tuple(t.shape)}")
        return
    if t.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(like.shape)} (the shape of v)")
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device}, expected {like.device} (the device of v)")


def per_sample(name: str, value: Scalar, batch: int, device: torch.device) -> Tensor:
    """A float or a tensor of 1 or B elements → a 1-D fp32-or-wider tensor on ``device`` (no host sync)."""
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            raise ValueError(f"{name} must be floating point (a sigma, not a timestep index), got {value.dtype}")
        if value.numel() not in (1, batch):
            raise ValueError(f"{name} must have 1 or batch={batch} elements, got shape {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"{name} is on {value.device}, expected {device} (the device of v)")
        return value.reshape(-1).contiguous()
    if isinstance(value, (float, int)):
        # a fill kernel, not a host→device copy: no sync on the hot path
        return torch.full((1,), float(value), dtype=torch.float32, device=device)
    raise ValueError(f"{name} must be a float or a tensor, got {type(value).__name__}")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_schedule(sigma: Tensor, sigma_next: Tensor, force: bool) -> None:
    """σ ∈ (0, 1], 0 ≤ σ' < σ. Checked for host tensors always, for device tensors only when ``force`` (a sync)."""
    if sigma.device.type != "cpu" and not force:
        return
    if torch.compiler.is_compiling():
        return
    s, sn = sigma.float(), sigma_next.float()
    if bool(((s <= 0) | (s > 1)).any()):
        raise ValueError("sigma must lie in (0, 1]")
    if bool(((sn < 0) | (sn >= s)).any()):
        raise ValueError("sigma_next must satisfy 0 <= sigma_next < sigma (a step goes from noise to data)")


def check_finite(name: str, t: Tensor) -> None:
    """Opt-in NaN/Inf check (it syncs)."""
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")
