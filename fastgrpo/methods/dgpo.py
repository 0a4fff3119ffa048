"""DGPO (``method: dgpo``): group-level DPO on the flow-matching error of clean samples (Luo et al., arXiv
2510.08425; released code Luo-Yihong/DGPO, ``scripts/train_sd3_dgpo.py``, ``config/dgpo.py``). The loss is in
``fastgrpo.algorithms.dgpo``.

One iteration:

1. rollout: G clean samples per kept prompt by a deterministic ODE without CFG — from the current weights, or from
   the EMA copy once ``dgpo.switch_ema_ref`` optimiser steps have passed;
2. advantages: per-prompt z-scores (population std + 1e-4, clamp ±5; the whole batch's std with
   ``dgpo.global_std``), plus AdaGRPO's global EMA advantage with ``adagrpo.fusion``;
3. update: ``dgpo.timesteps`` schedule indices drawn without replacement from {0 … ``dgpo.trunc_steps``}, the same
   for every group of the iteration (and every rank: drawn from the run seed and the iteration only); per index, one
   noise draw shared by the group; forwards of the reference (no grad), the EMA copy (no grad, for the clip) and
   the policy (grad); the group score S_g sums over the whole group — a group never spans ranks here (each rank
   keeps its groups whole), so no all-reduce is needed for it; β_KL·mean((v_θ − v_ref)²) with ``optim.kl_beta``;
4. the EMA copy follows every optimiser step: θ_ema ← d·θ_ema + (1 − d)·θ, d = min(``ema_decay_rate``·s,
   ``ema_decay_max``).

Departs from the released code: DPM-Solver++ 2M rollouts (released: Euler, whose ``use_dpm`` flag is never read).
"""
from __future__ import annotations

import torch

from ..algorithms.dgpo import dgpo_loss
from .base import RolloutBatch, UnitLoss
from .forward import ForwardProcessMethod
from .snapshot import WeightSnapshot


class DGPO(ForwardProcessMethod):
    name = "dgpo"
    snapshot_key = "ema"

    def __init__(self, trainer):
        super().__init__(trainer)
        self.global_std = self.cfg.dgpo.global_std

    def rollout_policy(self):
        """The EMA copy once ``switch_ema_ref`` optimiser steps have passed, the current weights before."""
        if self.trainer.optimizer_steps >= self.cfg.dgpo.switch_ema_ref:
            return self.ema.active()
        return super().rollout_policy()

    def units(self, batch: RolloutBatch, seed: int) -> list[list[tuple[int, int]]]:
        """The iteration's indices (shared by every group and rank), each with the seed of the group's noise."""
        dgpo, cfg = self.cfg.dgpo, self.cfg
        shared = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.trainer.iteration * 7919 + 17)
        picks = torch.randperm(dgpo.trunc_steps + 1, generator=shared)[:dgpo.timesteps].tolist()
        return [[(i, seed + 400 + 1009 * g + j) for j, i in enumerate(picks)] for g in range(len(batch.groups))]

    def unit_loss(self, batch: RolloutBatch, adv, group: int, unit) -> UnitLoss:
        trainer, dgpo, G = self.trainer, self.cfg.dgpo, batch.group_size
        index, noise_seed = unit
        x0 = batch.groups[group]
        t = torch.full((G,), float(trainer.sigmas[index]), device=x0.device)
        x_t, target = self.noised(x0, t, noise_seed, shared=True)
        text = trainer.text([batch.texts[group]] * G)
        error = lambda v: (v.float() - target).pow(2).flatten(1).mean(1)  # noqa: E731
        v_ref = self.reference_velocity(x_t, t, text)
        old = error(self.snapshot_velocity(self.ema, x_t, t, text)) if dgpo.clip > 0 else None
        v = self.velocities(x_t, t, text)
        out = dgpo_loss(error(v), error(v_ref), adv.advantages[group * G:(group + 1) * G],
                        torch.zeros(G, dtype=torch.long, device=x0.device), num_groups=1, beta_dpo=dgpo.beta_dpo,
                        group_size=G, old_error=old, clip=dgpo.clip)
        total = out.loss
        if self.cfg.optim.kl_beta > 0:
            total = total + self.cfg.optim.kl_beta * (v.float() - v_ref.float()).pow(2).mean()
        stats = {"group_score": out.group_score.mean(), "clipfrac": out.clipfrac,
                 "v_norm_ratio": self.norm_ratio(v, v_ref)}
        return UnitLoss(total, stats)

    def after_optimizer_step(self) -> None:
        self.soft_update(self.cfg.dgpo.ema_decay_rate, self.cfg.dgpo.ema_decay_max)

    @property
    def ema(self) -> WeightSnapshot:
        return self.snapshot
