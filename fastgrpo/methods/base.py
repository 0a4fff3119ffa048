"""The method interface: what one training iteration does after the driver has chosen its prompts.

An iteration is ``select → rollout → reward → advantage → update``. The driver (``fastgrpo.train.loop.Trainer``)
owns selection (AdaGRPO's curriculum), the optimiser, evaluation, logging and checkpoints; a ``Method`` owns the
rest — what a rollout samples and stores, how its rewards are shaped, how advantages are formed, what the loss is,
and which extra model states it keeps (an old policy, a reference). The driver calls, in order,

    batch = method.rollout(prompts, seed)        # a RolloutBatch: per-group data + a Rewards struct
    adv = method.advantages(batch)               # an AdvantageOutput, (N,) or (N, columns)
    out = method.update(batch, adv, seed)        # optimiser steps; metrics, or the name of a non-finite value

and saves ``method.state_dict()`` with each checkpoint. Methods are chosen once, by the ``method`` config key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional

import torch
from torch import Tensor

from ..ops import group_advantages

RewardKind = Literal["scalar", "columns", "granularities", "steps"]


@dataclass
class Rewards:
    """A rollout's rewards: ``values`` form the advantages, ``final`` is what the log reports."""
    values: Tensor
    """(N,) one reward per sample ("scalar"); (N, K) per reward model ("columns", summed as weighted z-scores);
    (N, |Λ|) per ODE granularity ("granularities", G²RPO: per-column z-scores averaged); (N, steps) per-step gains
    ("steps", Stepwise: z-scored jointly per group)."""
    kind: RewardKind
    final: Tensor
    """(N,) the reward of the final images (the weighted sum for "columns", the mean over granularities)."""


@dataclass
class RolloutBatch:
    texts: list[str]
    """One prompt per group."""
    groups: list[Any]
    """Per group, what the method stored to train on (a Trajectory, clean latents, ...)."""
    rewards: Rewards
    group_size: int
    info: dict = field(default_factory=dict)
    """Scalars for the log (e.g. the window's first step)."""

    @property
    def group_ids(self) -> Tensor:
        return torch.arange(len(self.groups), device=self.rewards.values.device).repeat_interleave(self.group_size)


@dataclass
class UnitLoss:
    """One backward's worth of loss (a group at one step or timestep) and its diagnostics (0-d or (B,) tensors)."""
    loss: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


class Method:
    """Base of every method: group advantages from the rewards (with AdaGRPO's fusion when the config asks) and an
    update that runs ``optim.minibatches`` AdamW steps over the groups, each the mean of ``unit_loss`` over the
    (group, unit) pairs of its share. Subclasses give ``rollout``, ``units`` and ``unit_loss``."""

    name: ClassVar[str]

    def __init__(self, trainer):
        self.trainer = trainer
        self.cfg = trainer.cfg

    # ---- phases ------------------------------------------------------------------------------------------------
    def rollout(self, prompts, seed: int) -> RolloutBatch:
        raise NotImplementedError

    def advantages(self, batch: RolloutBatch):
        """Group z-scores of ``batch.rewards`` by ``optim.adv_std`` / ``adv_eps`` / ``adv_clip``, fused with the
        capability EMA's global advantage when ``adagrpo.fusion``."""
        opt, ada, rewards = self.cfg.optim, self.cfg.adagrpo, batch.rewards
        columns = {"weights": self.trainer.task.weights, "aggregate": "zscore_sum"} if rewards.kind == "columns" else {}
        return group_advantages(rewards.values, batch.group_ids, std=opt.adv_std, eps=opt.adv_eps, clip=opt.adv_clip,
                                ema=self.trainer.tracker if ada.fusion else None,
                                fusion_weight=ada.fusion_weight, pooled=rewards.kind == "steps", check_finite=False,
                                **columns)

    def units(self, batch: RolloutBatch, seed: int) -> list[Any]:
        """What one group trains on this iteration, one backward each (stored steps, timesteps, ...)."""
        raise NotImplementedError

    def unit_loss(self, batch: RolloutBatch, adv, group: int, unit: Any) -> UnitLoss:
        raise NotImplementedError

    def summarize(self, stats: dict[str, list[Tensor]], first: int) -> dict[str, Tensor]:
        """Metrics from the units' diagnostics (``first``: how many units the first minibatch held)."""
        return {key: torch.stack([v.float().mean() for v in values]).mean() for key, values in stats.items()}

    def after_optimizer_step(self) -> None:
        """Called after every AdamW step (e.g. an EMA of the weights)."""

    def after_update(self) -> None:
        """Called once per iteration, after the last AdamW step (e.g. the old policy's soft update)."""

    def state_dict(self) -> dict:
        """Extra model states the method keeps (saved in each checkpoint)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"method {self.name!r} keeps no state, but the checkpoint holds {sorted(state)}")

    # ---- the shared update -------------------------------------------------------------------------------------
    def update(self, batch: RolloutBatch, adv, seed: int) -> dict[str, Tensor] | str:
        """``optim.minibatches`` AdamW steps, each on a contiguous share of the groups; returns the metrics as
        device tensors, or the name of the first non-finite value (that minibatch's update is dropped)."""
        trainer, opt = self.trainer, self.cfg.optim
        units = self.units(batch, seed)
        n = len(batch.groups)
        chunks = [c.tolist() for c in torch.arange(n).tensor_split(min(opt.minibatches, n))]
        losses, norms, stats = [], [], {}
        first: Optional[int] = None
        for chunk in chunks:
            trainer.optimizer.zero_grad(set_to_none=True)
            pairs = [(g, u) for g in chunk for u in units[g]]
            first = len(pairs) if first is None else first
            for done, (g, u) in enumerate(pairs, 1):
                out = self.unit_loss(batch, adv, g, u)
                with trainer.sync_grads(last=done == len(pairs)):
                    (out.loss / len(pairs)).backward()
                losses.append(out.loss.detach())
                for key, value in out.stats.items():
                    stats.setdefault(key, []).append(value.detach())
            grad_norm = torch.nn.utils.clip_grad_norm_(trainer.params, opt.grad_clip)
            if hasattr(grad_norm, "full_tensor"):  # FSDP2's norm is a DTensor: its full value (a collective), once
                grad_norm = grad_norm.full_tensor()
            # a finite loss can still carry an inf/NaN gradient (an overflow in the backward) that the clip would
            # spread to every weight: both are checked, in one read-back, before the update
            bad = trainer.first_nonfinite({"loss": torch.stack(losses[-len(pairs):]).mean(), "grad_norm": grad_norm})
            if bad is not None:
                return bad
            trainer.optimizer.step()
            trainer.optimizer_steps += 1
            self.after_optimizer_step()
            norms.append(grad_norm)
        self.after_update()
        return {"loss": torch.stack(losses).mean(), "grad_norm": torch.stack(norms).mean(),
                **self.summarize(stats, first or 0)}
