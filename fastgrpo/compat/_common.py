"""Helpers shared by the compat shims."""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor


def randn_like_anchor(shape, generator, device, dtype) -> Tensor:
    """ε drawn exactly as diffusers' ``randn_tensor`` does (same generator use, dtype and device), so a seeded
    recipe reproduces its images bit for bit and leaves its RNG in the same state."""
    from diffusers.utils.torch_utils import randn_tensor
    return randn_tensor(shape, generator=generator, device=device, dtype=dtype)


def schedule_value(sigmas: Tensor, index: int, device: torch.device) -> Union[float, Tensor]:
    """σ at ``index``: a float when the schedule is on the host (no device copy or sync), else a device tensor."""
    value = sigmas[index]
    if isinstance(value, Tensor) and value.device.type == "cpu" and device.type != "cpu":
        return float(value)
    return value


def per_sample_view(t: Tensor, ndim: int) -> Tensor:
    return t.reshape(-1, *([1] * (ndim - 1)))
