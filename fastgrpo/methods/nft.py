"""DiffusionNFT (``method: nft``): online RL on the forward process (Zheng et al., arXiv 2509.16117; released code
NVlabs/DiffusionNFT, ``scripts/train_nft_sd3.py`` and ``config/nft.py``). The objective and its x0-space form are
in ``fastgrpo.algorithms.nft``.

One iteration:

1. rollout: G samples per kept prompt from the *old* policy θ_old by deterministic DPM-Solver++ 2M on the
   ``sampling`` schedule (first-order first and last steps), without classifier-free guidance; only the clean
   latents x0 are kept — no trajectory, no log-probabilities;
2. advantages: A = (r − mean of the prompt's group)/(std of the whole batch + 1e-4) (population std), AdaGRPO's
   global EMA advantage added when ``adagrpo.fusion``; the optimality probability r = ½ + clamp(A, ±c)/(2c);
3. update: each sample trains ``int(nft.timestep_fraction · T)`` of the T schedule σ's (σ = 1 included), a fresh
   random permutation per sample; for each, fresh noise ε, x_t = (1 − t)·x0 + t·ε, one no-grad forward of θ_old,
   one forward of θ with grad (and the reference's with ``optim.kl_beta``: β_KL·mean((v_θ − v_ref)²)); the
   gradients of all (group, timestep) units are accumulated into ``optim.minibatches`` AdamW steps;
4. the old policy follows: θ_old ← d·θ_old + (1 − d)·θ with d = min(``old_decay_rate``·s, ``old_decay_max``) after
   s optimiser steps in all (θ_old = θ at the start, so early iterations are on-policy).

Departures: see ``fastgrpo.methods.forward`` (the batch std per rank; several rewards summed first).
"""
from __future__ import annotations

import torch

from ..algorithms.nft import nft_loss, nft_optimality
from .base import RolloutBatch, UnitLoss
from .forward import ForwardProcessMethod
from .snapshot import WeightSnapshot


class DiffusionNFT(ForwardProcessMethod):
    name = "nft"
    snapshot_key = "old"

    def __init__(self, trainer):
        super().__init__(trainer)
        self.adv_clip = self.cfg.nft.adv_clip

    def rollout_policy(self):
        """Rollouts come from the old policy θ_old (sampling with the current weights is the classic mistake)."""
        return self.old.active()

    def units(self, batch: RolloutBatch, seed: int) -> list[list[tuple[torch.Tensor, int]]]:
        """Per group, ``int(timestep_fraction·T)`` units; unit j holds each sample's j-th σ index of its own random
        permutation of the T schedule σ's, and the seed of that unit's fresh noise."""
        T = self.cfg.sampling.steps
        count = max(1, int(self.cfg.nft.timestep_fraction * T))
        out = []
        for g in range(len(batch.groups)):
            gen = torch.Generator().manual_seed(seed + 300 + g)
            order = torch.stack([torch.randperm(T, generator=gen) for _ in range(batch.group_size)])  # (G, T)
            out.append([(order[:, j], seed + 400 + 1009 * g + j) for j in range(count)])
        return out

    def unit_loss(self, batch: RolloutBatch, adv, group: int, unit) -> UnitLoss:
        trainer, nft, G = self.trainer, self.cfg.nft, batch.group_size
        index, noise_seed = unit
        x0 = batch.groups[group]
        t = trainer.sigmas[index].to(device=x0.device, dtype=torch.float32)  # (G,), σ_0 = 1 included
        x_t, _ = self.noised(x0, t, noise_seed)
        text = trainer.text([batch.texts[group]] * G)
        v_old = self.snapshot_velocity(self.old, x_t, t, text)
        v = self.velocities(x_t, t, text)
        r = nft_optimality(adv.advantages[group * G:(group + 1) * G], nft.adv_clip)
        out = nft_loss(v, v_old, x_t, x0, t, r, beta=nft.beta, adv_clip=nft.adv_clip)
        stats = {"nft_positive": out.positive.mean(), "nft_negative": out.negative.mean(), "optimality": r.mean()}
        total = out.loss
        if self.cfg.optim.kl_beta > 0:
            v_ref = self.reference_velocity(x_t, t, text)
            total = total + self.cfg.optim.kl_beta * (v.float() - v_ref.float()).pow(2).mean()
            stats["v_norm_ratio"] = self.norm_ratio(v, v_ref)
        return UnitLoss(total, stats)

    def after_update(self) -> None:
        self.soft_update(self.cfg.nft.old_decay_rate, self.cfg.nft.old_decay_max)

    @property
    def old(self) -> WeightSnapshot:
        return self.snapshot
