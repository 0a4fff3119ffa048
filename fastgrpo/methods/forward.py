"""What the forward-process methods (DiffusionNFT, AWM) share: clean rollouts by a deterministic ODE solver,
advantages with the per-prompt mean and the whole-batch std, and training on freshly noised copies of the clean
samples, x_t = (1 − t)·x0 + t·ε with target ε − x0 — no trajectory, no log-probabilities, any sampler.

Under data parallelism the batch std is each rank's own (the released codes gather every rank's rewards first);
with several reward models their weighted sum is normalised (as the released multi-reward configs sum first).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor

from ..ops import group_advantages
from ..train.rollout import sample_dpm
from .base import Method, Rewards, RolloutBatch
from .snapshot import WeightSnapshot, soft_update_decay

STD_EPS = 1e-4
"""ε in A = (r − mean)/(std + ε) (Flow-GRPO's per-prompt stat tracker, which both released codes use)."""


class ForwardProcessMethod(Method):
    snapshot_key: str = ""
    """The name of the method's weight snapshot (``old``, ``ema``) in ``self.snapshot`` and in checkpoints."""
    adv_clip: float = 5.0
    global_std: bool = True
    """Normalise by the whole batch's std (NFT, AWM) or each group's own (DGPO's GenEval recipe)."""

    def __init__(self, trainer):
        super().__init__(trainer)
        self.snapshot = WeightSnapshot(trainer.model)

    def soft_update(self, rate: float, cap: float) -> None:
        """θ_snap ← d·θ_snap + (1 − d)·θ with d = min(rate·s, cap) after s optimiser steps in all."""
        self.snapshot.soft_update(soft_update_decay(self.trainer.optimizer_steps, rate, cap))

    def state_dict(self) -> dict:
        return {self.snapshot_key: self.snapshot.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {self.snapshot_key}:
            raise ValueError(f"method {self.name!r} expects its {self.snapshot_key!r} weights in the checkpoint, "
                             f"found {sorted(state)}")
        self.snapshot.load_state_dict(state[self.snapshot_key])

    def rollout_policy(self):
        """A context in which the live weights are the rollout policy (the current weights by default)."""
        return nullcontext()

    def rollout(self, prompts, seed: int) -> RolloutBatch:
        """G clean samples per prompt: DPM-Solver++ 2M on the ``sampling`` schedule from the group's noise, without
        classifier-free guidance, under ``rollout_policy()``; rewards of the decoded samples."""
        trainer, G = self.trainer, self.cfg.group_size
        groups = []
        trainer.model.eval()
        denoise = trainer.backbone.denoiser(trainer.model)
        with self.rollout_policy(), trainer.reward_queue(combined=True) as rewards:
            for p, text in enumerate(prompts.texts):
                with trainer.autocast():
                    x0 = sample_dpm(denoise, trainer.group_noise(G, seed + 100 + p), trainer.sigmas,
                                    trainer.text([text] * G), None, guidance=1.0)
                groups.append(x0)
                rewards.submit(x0, prompts.take([p]).repeat(G))
            values = torch.cat(rewards.results())
        trainer.model.train()
        return RolloutBatch(list(prompts.texts), groups, Rewards(values, "scalar", values), G)

    def advantages(self, batch: RolloutBatch):
        """A = (r − mean of the prompt's group)/(population std of the whole batch, or of the group, + 1e-4),
        clamped to ±adv_clip, plus AdaGRPO's global EMA advantage with ``adagrpo.fusion``."""
        ada = self.cfg.adagrpo
        return group_advantages(batch.rewards.values, batch.group_ids, std="population", eps=STD_EPS,
                                global_std=self.global_std, clip=self.adv_clip,
                                ema=self.trainer.tracker if ada.fusion else None, fusion_weight=ada.fusion_weight,
                                check_finite=False)

    @staticmethod
    def noised(x0: Tensor, t: Tensor, noise_seed: int, shared: bool = False) -> tuple[Tensor, Tensor]:
        """(x_t, target): fresh ε from ``noise_seed`` (one draw for every sample with ``shared``),
        x_t = (1 − t)·x0 + t·ε per sample, target ε − x0."""
        shape = (1, *x0.shape[1:]) if shared else x0.shape
        eps = torch.randn(shape, generator=torch.Generator().manual_seed(noise_seed)).expand(x0.shape).to(x0.device)
        tb = t.reshape((-1,) + (1,) * (x0.dim() - 1))
        x0 = x0.float()
        return (1 - tb) * x0 + tb * eps, eps - x0

    def velocities(self, x_t: Tensor, t: Tensor, text) -> Tensor:
        """v_θ with gradient (through the DDP/FSDP wrapper)."""
        with self.trainer.autocast():
            return self.trainer.backbone.denoiser(self.trainer.trained)(x_t, t, text)

    @torch.no_grad()
    def reference_velocity(self, x_t: Tensor, t: Tensor, text) -> Tensor:
        """v of the KL reference (the adapter-free model under LoRA, the frozen initial copy otherwise)."""
        with self.trainer.autocast(), self.trainer.reference() as reference:
            return self.trainer.backbone.denoiser(reference)(x_t, t, text)

    @torch.no_grad()
    def snapshot_velocity(self, snapshot, x_t: Tensor, t: Tensor, text) -> Tensor:
        """v of a weight snapshot (an old policy, an EMA anchor). It swaps the live weights in place: call it
        before the forward with grad of the same unit, never between that forward and its backward."""
        with self.trainer.autocast(), snapshot.active():
            return self.trainer.backbone.denoiser(self.trainer.model)(x_t, t, text)

    @staticmethod
    def norm_ratio(v: Tensor, v_ref: Tensor) -> Tensor:
        """‖v_θ‖/‖v_ref‖: forward-process fine-tuning is reported to inflate the velocity norm, so it is logged."""
        return v.detach().float().norm() / v_ref.float().norm().clamp(min=1e-12)
