"""AWM (``method: awm``): advantage-weighted flow matching on the rollout's clean samples (Xue et al., arXiv
2509.25050; released code scxue/advantage_weighted_matching, ``scripts/train_sd3_awm.py``, ``config/dgx_awm.py``).
The loss is in ``fastgrpo.algorithms.awm``.

One iteration:

1. rollout: G clean samples per kept prompt from the current policy (on-policy) by DPM-Solver++ 2M without CFG;
2. advantages: per-prompt mean, whole-batch std (``fastgrpo.methods.forward``), then Â = clamp(A, ±c)/c;
3. update: ``awm.timesteps`` schedule indices per group, one from each stratum of [1, int(T·time_fraction)] (σ = 1
   excluded unless ``awm.include_init``), shared by the group's samples; per index fresh noise, the policy's forward
   with grad and two anchors without: β_KL·mean((v_θ − v_ref)²) to the reference (``optim.kl_beta``) and
   ``awm.ema_beta``·mean((v_θ − v_ema)²) to an EMA of the weights;
4. the EMA anchor follows: θ_ema ← d·θ_ema + (1 − d)·θ, d = min(``ema_decay_rate``·s, ``ema_decay_max``) after s
   optimiser steps ("KL-EMA, mimic TRPO").

Negative-advantage samples are pushed up the flow-matching loss without bound but for the transform, so the two
anchors carry the stability. Departs from the released code: DPM-Solver++ 2M (deterministic) instead of its
SA-Solver with stochasticity τ; no skipped warm-up epochs.
"""
from __future__ import annotations

import torch

from ..algorithms.awm import awm_loss, stratified_indices
from .base import RolloutBatch, UnitLoss
from .forward import ForwardProcessMethod
from .snapshot import WeightSnapshot


class AWM(ForwardProcessMethod):
    name = "awm"
    snapshot_key = "ema"

    def __init__(self, trainer):
        super().__init__(trainer)
        self.adv_clip = self.cfg.awm.adv_clip

    def units(self, batch: RolloutBatch, seed: int) -> list[list[tuple[int, int]]]:
        """Per group, (schedule index, noise seed) for each of its stratified timesteps."""
        awm, out = self.cfg.awm, []
        for g in range(len(batch.groups)):
            gen = torch.Generator().manual_seed(seed + 300 + g)
            picks = stratified_indices(self.cfg.sampling.steps, awm.timesteps, awm.time_fraction, awm.include_init,
                                       gen)
            out.append([(i, seed + 400 + 1009 * g + j) for j, i in enumerate(picks)])
        return out

    def unit_loss(self, batch: RolloutBatch, adv, group: int, unit) -> UnitLoss:
        trainer, awm, G = self.trainer, self.cfg.awm, batch.group_size
        index, noise_seed = unit
        x0 = batch.groups[group]
        t = torch.full((G,), float(trainer.sigmas[index]), device=x0.device)
        x_t, target = self.noised(x0, t, noise_seed)
        text = trainer.text([batch.texts[group]] * G)
        # the anchors first: the EMA forward swaps weights in place, which must not happen under v's graph
        v_ref = self.reference_velocity(x_t, t, text) if self.cfg.optim.kl_beta > 0 else None
        v_ema = self.snapshot_velocity(self.ema, x_t, t, text) if awm.ema_beta > 0 else None
        v = self.velocities(x_t, t, text)
        error = (v.float() - target).pow(2).flatten(1).mean(1)
        out = awm_loss(error, t, adv.advantages[group * G:(group + 1) * G], p=awm.ghuber_power,
                       adv_clip=awm.adv_clip, ratio_clip=awm.ratio_clip)
        stats = {"fm_error": error.detach().mean()}
        total = out.loss
        if v_ref is not None:
            total = total + self.cfg.optim.kl_beta * (v.float() - v_ref.float()).pow(2).mean()
            stats["v_norm_ratio"] = self.norm_ratio(v, v_ref)
        if v_ema is not None:
            ema_gap = (v.float() - v_ema.float()).pow(2).mean()
            total = total + awm.ema_beta * ema_gap
            stats["ema_gap"] = ema_gap.detach()
        return UnitLoss(total, stats)

    def after_update(self) -> None:
        self.soft_update(self.cfg.awm.ema_decay_rate, self.cfg.awm.ema_decay_max)

    @property
    def ema(self) -> WeightSnapshot:
        return self.snapshot
