"""Random inputs for the step ops: fresh data each call, never zeros; schedules from the SD3 time shift."""
from __future__ import annotations

import torch


def shifted_sigmas(steps: int, shift: float = 3.0) -> torch.Tensor:
    """σ_i = shift·t/(1 + (shift−1)·t), t = linspace(1, 0, T+1) (diffusers' FlowMatchEulerDiscreteScheduler)."""
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * t / (1.0 + (shift - 1.0) * t)).float()


def random_step(shape, dtype=torch.float32, device="cpu", seed=0, include_first=True, include_last=True):
    """v, x, σ, σ' (per sample, from one schedule, covering σ = 1 and σ' = 0 when asked)."""
    g = torch.Generator().manual_seed(seed)
    B = shape[0]
    v = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    sig = shifted_sigmas(10)
    idx = torch.randint(0, 10, (B,), generator=g)
    if include_first:
        idx[0] = 0
    if include_last and B > 1:
        idx[-1] = 9
    return v, x, sig[idx].to(device), sig[idx + 1].to(device)
