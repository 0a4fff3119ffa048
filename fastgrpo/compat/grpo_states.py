"""Drop-in for MixGRPO's window state (Tencent-Hunyuan/MixGRPO, ``fastvideo/utils/grpo_states.py``, checked at
commit e5cdd6a427778d8c8b2e7a48ce16972141adbe7c).

    from fastgrpo.compat.mix_grpo import GRPOTrainingStates   # also importable from here

The anchor's train script builds one with ``max_timesteps = T − 2`` and, every iteration, reads
``get_current_timesteps()`` (the window: the SDE and trained steps) and then calls ``update_iteration()``.
Same fields, defaults, field order, return types and sequence of windows for every strategy; no deliberate
differences. The rule is a state machine over mutable fields (``set_params`` may change any of them mid-run), so it
is written out here rather than derived from fastgrpo's closed-form ``train.schedule.window_start``; the tests check
that the two give the same window starts where their rules coincide (progressive, ``prog_overlap`` with step 1,
``roll_back``, start 0: l = (i // τ) mod (T − 1)).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np

_ADVANCING = ("progressive", "decay", "exp_decay")


@dataclass
class GRPOTrainingStates:
    """Where MixGRPO's window is and how it moves.

    Window: steps [l, min(l + w, max_timesteps)), l = ``cur_timestep``, w = ``group_size``.
    progressive: after ``iters_per_group`` (τ) updates, l += ``prog_overlap_step`` if ``prog_overlap`` else w;
    decay: the same with τ(l) = max(τ_min, int(τ_max·(1 − l/max_timesteps) + τ_min·l/max_timesteps));
    exp_decay: the same with τ(l) = ceil(τ·e^{−k·max(0, l − l_thr)}) (a numpy float, as the anchor returns);
    after each update l > max_timesteps clips to max_timesteps, or with ``roll_back`` returns to the initial l
    (l = max_timesteps itself is kept: an empty window).
    random: each update draws l = ``np.random.default_rng(seed).integers(0, max_timesteps − w + 1)``.
    An unknown ``sample_strategy`` raises ValueError on the first update. No deliberate differences.
    Anchor: Tencent-Hunyuan/MixGRPO@e5cdd6a427778d8c8b2e7a48ce16972141adbe7c fastvideo/utils/grpo_states.py.
    """

    iters_per_group: int
    group_size: int
    max_timesteps: int
    cur_timestep: int = 0
    cur_iter_in_group: int = 0
    sample_strategy: str = "progressive"
    prog_overlap: bool = False
    prog_overlap_step: int = 1
    max_iters_per_group: int = None
    min_iters_per_group: int = None
    roll_back: bool = False
    exp_decay_thre_timestep: int = 13
    exp_decay_k: float = 0.1

    def set_params(self, params: dict):
        for key, value in params.items():
            setattr(self, key, value)

    def __post_init__(self):
        if self.sample_strategy == "decay":
            if self.max_iters_per_group is None:
                self.max_iters_per_group = self.iters_per_group
            if self.min_iters_per_group is None:
                self.min_iters_per_group = max(1, self.iters_per_group // 4)
        self.init_timestep = self.cur_timestep

    def get_dynamic_iters_per_group(self) -> int:
        """τ at the current l for ``decay`` (linear from τ_max at l = 0 to τ_min at max_timesteps); else τ."""
        if self.sample_strategy != "decay":
            return self.iters_per_group
        progress = self.cur_timestep / self.max_timesteps
        interpolated = int(self.max_iters_per_group * (1 - progress) + self.min_iters_per_group * progress)
        return max(self.min_iters_per_group, interpolated)

    def get_exp_decay_iters_per_group(self) -> int:
        """τ at the current l for ``exp_decay``: ceil(τ·e^{−k·max(0, l − l_thr)}) as a numpy float; else τ."""
        if self.sample_strategy != "exp_decay":
            return self.iters_per_group
        excess = max(0, self.cur_timestep - self.exp_decay_thre_timestep)
        return np.ceil(self.iters_per_group * np.exp(-self.exp_decay_k * excess))

    def _iters_for_current_group(self):
        if self.sample_strategy == "decay":
            return self.get_dynamic_iters_per_group()
        if self.sample_strategy == "exp_decay":
            return self.get_exp_decay_iters_per_group()
        return self.iters_per_group

    def update_iteration(self, seed=None) -> None:
        """Advance one iteration (``seed`` seeds the ``random`` strategy's draw; None draws fresh entropy)."""
        if self.sample_strategy == "random":
            self.cur_timestep = np.random.default_rng(seed).integers(0, self.max_timesteps - self.group_size + 1)
            return
        if self.sample_strategy not in _ADVANCING:
            raise ValueError(f"Invalid sample strategy: {self.sample_strategy}")
        self.cur_iter_in_group += 1
        if self.cur_iter_in_group >= self._iters_for_current_group():
            self.cur_iter_in_group = 0
            self.cur_timestep += self.prog_overlap_step if self.prog_overlap else self.group_size
        if self.cur_timestep > self.max_timesteps:
            if self.roll_back:
                self.roll_back_start()
            else:
                self.cur_timestep = self.max_timesteps

    def roll_back_start(self) -> None:
        """Back to the initial l, at the start of its group."""
        self.cur_timestep = self.init_timestep
        self.cur_iter_in_group = 0

    def get_current_timesteps(self) -> List[int]:
        """The window's step indices: range(l, min(l + w, max_timesteps)) as a list."""
        return list(range(self.cur_timestep, min(self.cur_timestep + self.group_size, self.max_timesteps)))

    def is_training_complete(self) -> bool:
        """l ≥ max_timesteps for ``progressive`` and ``decay``; always False for the other strategies."""
        if self.sample_strategy in ("progressive", "decay"):
            return self.cur_timestep >= self.max_timesteps
        return False
