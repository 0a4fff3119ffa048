"""σ schedules and MixGRPO's sliding window (2507.21802).

σ_i = shift·t_i/(1 + (shift − 1)·t_i), t_i = linspace(1, 0, T + 1) (SD3's time shift).
Window: SDE (and trained) steps [l, min(l + w, T − 1)); outside it the ODE. ``progressive``: l advances by
``stride`` every τ iterations and wraps to 0 past T − 2; ``frozen``: l = 0; ``random``: l uniform each iteration
in 0 .. T − 2, or in a .. b − w with ``random_range`` [a, b) (seeded by the iteration, so a resumed run draws the
same); ``linear_decay`` / ``exp_decay``: progressive with an
interval that shrinks over training (linearly to 1, or as τ·e^{−3·i/iterations}) — the window sweeps the later,
detail-forming steps faster as training goes on.
Flash: after the window's last step L (the window ends before step e = L + 1), MixGRPO re-grids the rest into
n = max(1, int((T − L)·r)) points uniform in unshifted t from t_e to 0, shifted, and DPM-Solver++ 2M runs the
n − 1 steps (never reaching σ = 0 when n = 1). fastgrpo runs k = min(T − e, max(m, n − 1)) steps, m =
``window.flash_min_steps``: at least m (a tail shorter than the T − e Euler steps it replaces is the saving), at most
T − e (there the grid is the schedule's own).

Why m = 4 (``benchmarks/study_flash_tail.py`` → results/cpu-2c/flash_tail.md; the shipped world of commit 58f1a8c,
2-core CPU, 2026-12-06; 16 training prompts × 8 samples, T = 10, w = 4: the same trajectories finished by k
DPM-Solver++ 2M steps (started fresh, fastgrpo/train/rollout.py) vs 50 Euler steps from σ_e; mean |Δ reward| per
sample / within-group reward correlation):

    end e   k=1        k=2        k=3        k=4        k=5        k=6        Euler, its T − e steps
    4       .035/.525  .021/.788  .014/.913  .011/.938  .009/.956  .007/.968  .009/.951 (6)
    6       .025/.669  .015/.847  .010/.915  .007/.955  .005/.981  .004/.987  .008/.943 (4)
    8       .016/.856  .009/.950  .005/.986  .004/.990  .003/.994  .002/.996  .009/.948 (2)

MixGRPO's r = 0.4 at T = 10 gives k = 1: a single jump to σ = 0 (correlation 0.53–0.86; mean reward 0.744 vs 0.763
at e = 4). The tolerance: a Flash finish scores each sample within 0.012 of the fine finish (mean |Δ|) and keeps
the group's ranking (correlation ≥ 0.93) — as faithful as the T-step Euler finish MixGRPO uses without Flash. k = 4
meets it at every window end measured (at e = 4 it saves 2 of the 6 forwards; at e ≥ 6 it is the rest of the
schedule: no saving there); its correctness
verdicts agree with the fine finish on 90–96% of samples (Euler T: 90–95%).
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
        if cfg.random_range is not None:  # start in a .. b − size: the window inside [a, b)
            low, high = cfg.random_range
            return low + int(torch.randint(0, high - cfg.size - low + 1, (1,), generator=g))
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


def flash_steps(end: int, steps: int, ratio: float, min_steps: int) -> int:
    """DPM-Solver++ steps after a window that ends before step ``end``: min(T − e, max(m, n − 1)), see above."""
    points = max(1, int((steps - (end - 1)) * ratio))
    return min(steps - end, max(min_steps, points - 1))


def flash_sigmas(base: torch.Tensor, end: int, steps: int, shift: float, ratio: float,
                 min_steps: int = WindowConfig.model_fields["flash_min_steps"].default) -> torch.Tensor:
    """The schedule with the steps after the window (which ends before step ``end``) re-gridded for Flash:
    ``flash_steps`` steps uniform in unshifted t from t_end to 0, shifted."""
    t0 = 1.0 - end / steps  # unshifted t at σ_end
    count = flash_steps(end, steps, ratio, min_steps)
    post = shifted(torch.linspace(t0, 0.0, count + 1, dtype=torch.float64), shift).float()
    return torch.cat([base[:end], post])
