"""σ schedules and MixGRPO's sliding window (2507.21802).

σ_i = shift·t_i/(1 + (shift − 1)·t_i), t_i = linspace(1, 0, T + 1) (SD3's time shift).
Window: SDE (and trained) steps [l, min(l + w, T − 1)); outside it the ODE. ``progressive``: l advances by
``stride`` every τ iterations and wraps to 0 past T − 2; ``frozen``: l = 0; ``random``: l uniform each iteration
(seeded by the iteration, so a resumed run draws the same); ``linear_decay`` / ``exp_decay``: progressive with an
interval that shrinks over training (linearly to 1, or as τ·e^{−3·i/iterations}) — the window sweeps the later,
detail-forming steps faster as training goes on.
Flash: after the window's last step L, n = max(2, int((T − L)·r)) points uniform in unshifted t from t_{L+1} to 0,
shifted; DPM-Solver++ 2M runs the n − 1 steps (MixGRPO takes max(1, ·) and then never reaches σ = 0 when n = 1;
fastgrpo keeps at least one step to 0).
"""
from __future__ import annotations

import math

import torch

from .config import WindowConfig


def shifted(t: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * t / (1.0 + (shift - 1.0) * t)


def sigmas(steps: int, shift: float) -> torch.Tensor:
    return shifted(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).float()


def window_start(cfg: WindowConfig, steps: int, iteration: int, iterations: int, seed: int) -> int:
    span = steps - 1  # window starts 0 .. T − 2
    if cfg.schedule == "frozen":
        return 0
    if cfg.schedule == "random":
        g = torch.Generator().manual_seed(seed * 1_000_003 + iteration)
        return int(torch.randint(0, span, (1,), generator=g))
    if cfg.schedule == "progressive":
        moves = iteration // cfg.shift_interval
    else:
        moves, acc = 0, 0
        for i in range(iteration):
            frac = i / max(1, iterations)
            tau = (cfg.shift_interval * (1 - frac) if cfg.schedule == "linear_decay"
                   else cfg.shift_interval * math.exp(-3.0 * frac))
            acc += 1
            if acc >= max(1, round(tau)):
                moves, acc = moves + 1, 0
    return (moves * cfg.stride) % span


def window(cfg: WindowConfig, steps: int, iteration: int, iterations: int, seed: int) -> tuple[int, int]:
    start = window_start(cfg, steps, iteration, iterations, seed)
    return start, min(start + cfg.size, steps - 1)


def flash_sigmas(base: torch.Tensor, end: int, steps: int, shift: float, ratio: float) -> torch.Tensor:
    """The schedule with the steps after the window (which ends before step ``end``) re-gridded for Flash."""
    n = max(2, int((steps - (end - 1)) * ratio))
    t0 = 1.0 - end / steps  # unshifted t at σ_end
    post = shifted(torch.linspace(t0, 0.0, n, dtype=torch.float64), shift).float()
    return torch.cat([base[:end], post])
