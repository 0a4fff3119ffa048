"""The SDE-replay family (``method: grpo``): Flow-GRPO, DanceGRPO, Flow-CPS, MixGRPO(-Flash), G²RPO, Stepwise and
AdaGRPO as settings of one method.

Rollout: G samples per prompt; SDE steps (fused step + log-prob, in-kernel noise) inside MixGRPO's window
(``window.*``; Flash finishes by DPM-Solver++ 2M), or G²RPO's branches from an ODE trunk (``branch.enabled``), with
per-step reward gains for Stepwise-Flow-GRPO (``stepwise.enabled``). Only the SDE steps are stored. Update: each
stored step is replayed by the trained model and the PPO-clip surrogate L = mean(max(−A·ρ, −A·clip(ρ, 1 ± ε))),
ρ = exp(log p_θ(x_next | x) − log p_old), is minimised (+ β·KL to the reference with ``optim.kl_beta``); with one
AdamW step per rollout batch the first ratio is exactly 1. ``guard.rationorm`` swaps in GRPO-Guard's normalised ratio
and per-step |Δσ| reweighting (``fastgrpo.algorithms.losses.rationorm_ratio``). TempFlow-GRPO is G²RPO's branching
at every step with one Euler finish (``branch.points`` 0…T−2, ``branch.strides`` [1]), per-step advantages over the
branches of a step, and ``branch.noise_weight``: each step's surrogate × c·s_k. Pave-GRPO adds, on G²RPO's branches,
the decomposed kernels of ``branch.pave_splits`` (``fastgrpo.algorithms.pave``).
"""
from __future__ import annotations

import torch

from ..algorithms import adagrpo_loss, kl_penalty, ppo_clip_loss, rationorm_loss, rationorm_ratio
from ..algorithms.pave import decomposed_log_prob
from ..ops import flow_step
from ..reference.flow_step import step_coefficients
from ..train.branching import branch
from ..train.rollout import guided_velocity, sample
from ..train.schedule import flash_sigmas, window
from .base import Method, Rewards, RolloutBatch, UnitLoss


class GRPO(Method):
    name = "grpo"

    def rollout(self, prompts, seed: int) -> RolloutBatch:
        trainer, cfg = self.trainer, self.cfg
        start, end = window(cfg.window, cfg.sampling.steps, trainer.iteration, cfg.iterations, cfg.seed)
        grid = (flash_sigmas(trainer.sigmas, end, cfg.sampling.steps, cfg.sampling.shift, cfg.window.flash_ratio,
                             cfg.window.flash_min_steps) if cfg.window.flash else trainer.sigmas)
        G = cfg.group_size
        texts, groups, rewards, finals = [], [], [], []
        kind = "granularities" if cfg.branch.enabled else "steps" if cfg.stepwise.enabled else (
            "columns" if trainer.multi_columns else "scalar")
        trainer.model.eval()
        denoise = trainer.backbone.denoiser(trainer.model)
        s = cfg.sampling
        with trainer.reward_queue() as queue:  # the plain path's rewards (reward.schedule); branches, steps: inline
            for p, text in enumerate(prompts.texts):
                target = prompts.take([p]).repeat(G)
                if cfg.branch.enabled:
                    with trainer.autocast():
                        branches = branch(denoise, trainer.group_noise(1, seed + 100 + p), trainer.sigmas,
                                          cfg.branch.points, cfg.branch.strides, G, trainer.text([text]),
                                          trainer.empty_text(1), guidance=s.guidance, eta=s.eta, family=s.family,
                                          logprob=s.logprob, seed=seed + 200 + p,
                                          score=lambda latents: trainer.reward(latents, target))
                    for _, traj, r in branches:
                        texts.append(text)
                        groups.append(traj)
                        rewards.append(r)
                    continue
                with trainer.autocast():
                    traj = sample(denoise, trainer.group_noise(G, seed + 100 + p), grid, trainer.text([text] * G),
                                  trainer.empty_text(G), guidance=s.guidance, eta=s.eta, family=s.family,
                                  logprob=s.logprob, window=(start, end), seed=seed + 200 + p, flash=cfg.window.flash,
                                  keep_mean=cfg.guard.rationorm)
                texts.append(text)
                groups.append(traj)
                if cfg.stepwise.enabled:
                    with trainer.autocast():
                        gains, final = self.stepwise_gains(traj, text, target)
                    rewards.append(gains)
                    finals.append(final)
                else:
                    queue.submit(traj.latents, target)
            rewards += queue.results()
        trainer.model.train()
        values = torch.cat(rewards)
        if kind == "steps":
            final = torch.cat(finals)
        elif kind == "columns":
            final = values @ trainer.task.weights.to(values.device)
        elif kind == "granularities":
            final = values.mean(1)
        else:
            final = values
        return RolloutBatch(texts, groups, Rewards(values, kind, final), G, {"window_start": start})

    @torch.no_grad()
    def stepwise_gains(self, traj, text: str, target) -> tuple[torch.Tensor, torch.Tensor]:
        """((G, steps) gains R(x̂0 after step j) − R(x̂0 before it), (G,) final rewards); x̂0(x_t) from
        ``stepwise.substeps`` Euler steps to σ = 0. The gains telescope to R(after the last window step) −
        R(x̂0 before the first)."""
        trainer, cfg = self.trainer, self.cfg
        G = traj.latents.shape[0]
        embeddings = trainer.text([text] * G)
        denoise = trainer.backbone.denoiser(trainer.model)

        def refined(x, sigma):
            grid = torch.linspace(sigma, 0.0, cfg.stepwise.substeps + 1).tolist()
            for s, sn in zip(grid[:-1], grid[1:]):
                x = x + (sn - s) * guided_velocity(denoise, x, s, embeddings, trainer.empty_text(G),
                                                   cfg.sampling.guidance)
            return x

        before = [trainer.reward(refined(x, s), target) for x, s in zip(traj.x, traj.sigma)]
        after = before[1:] + [trainer.reward(refined(traj.x_next[-1], traj.sigma_next[-1]), target)]
        return torch.stack([a - b for a, b in zip(after, before)], 1), trainer.reward(traj.latents, target)

    def units(self, batch: RolloutBatch, seed: int) -> list[list[tuple[int, float]]]:
        """(stored step, surrogate weight) per unit of each group: every stored SDE step, or one random
        ``window.train_fraction`` of them (the same steps for every group); weight 1, or TempFlow-GRPO's c·s_k with
        ``branch.noise_weight`` (s_k the branch step's noise std, c = 1/mean of s_k over the iteration's groups)."""
        steps = self.trained_steps(len(batch.groups[0].x), seed)
        weights = [1.0] * len(batch.groups)
        if self.cfg.branch.noise_weight:
            std = self.step_std([traj.sigma[0] for traj in batch.groups], [traj.sigma_next[0] for traj in batch.groups])
            weights = (std / std.mean()).tolist()
        return [[(j, w) for j in steps] for w in weights]

    def step_std(self, sigma: list[float], sigma_next: list[float]) -> torch.Tensor:
        """s = the SDE step's noise std (sqrt|Δσ| included) at each (σ, σ')."""
        _, _, std, _ = step_coefficients(torch.tensor(sigma), torch.tensor(sigma_next), self.cfg.sampling.eta,
                                         self.cfg.sampling.family)
        return std

    def trained_steps(self, stored: int, seed: int) -> list[int]:
        fraction = self.cfg.window.train_fraction
        if fraction >= 1.0:
            return list(range(stored))
        count = max(1, round(fraction * stored))
        pick = torch.randperm(stored, generator=torch.Generator().manual_seed(seed + 3))[:count]
        return sorted(pick.tolist())

    def unit_loss(self, batch: RolloutBatch, adv, group: int, unit: tuple[int, float]) -> UnitLoss:
        """Step ``j`` of a stored group replayed by the trained model: PPO loss [+ β·KL]. With ``optim.kl_beta`` the
        reference's mean at the same input joins the fused step."""
        trainer, cfg, opt = self.trainer, self.cfg, self.cfg.optim
        j, weight = unit
        G = batch.group_size
        a = adv.advantages[group * G:(group + 1) * G]
        a = a[:, j] if a.dim() == 2 else a
        traj, text = batch.groups[group], batch.texts[group]
        step_args = (traj.x[j], traj.sigma[j], traj.sigma_next[j], cfg.sampling.eta)
        mu_ref = None
        if opt.kl_beta > 0:
            with torch.no_grad(), trainer.autocast(), trainer.reference() as reference:
                v_ref = self.velocity(reference, traj, j, text)
                mu_ref = flow_step(v_ref, *step_args, family=cfg.sampling.family, logprob=cfg.sampling.logprob,
                                   x_next=traj.x_next[j], return_mean=True).mean
        with trainer.autocast():
            v = self.velocity(trainer.trained, traj, j, text)
        guard = cfg.guard.rationorm
        fused = flow_step(v, *step_args, family=cfg.sampling.family, logprob=cfg.sampling.logprob,
                          x_next=traj.x_next[j], mu_ref=mu_ref, return_mean=guard)
        if guard:  # GRPO-Guard: the normalised ratio, the loss divided by the step's |Δσ|
            ratio = rationorm_ratio(fused.mean, traj.mean[j], traj.x_next[j], fused.std)
            out = rationorm_loss(ratio, a, opt.clip_range, traj.sigma_next[j] - traj.sigma[j])
        else:
            ratio = torch.exp(fused.log_prob.detach() - traj.log_prob[j])  # diagnostics only: no graph
            out = ppo_clip_loss(fused.log_prob, traj.log_prob[j], a, opt.clip_range,
                                weights=None if weight == 1.0 else torch.tensor(weight, device=a.device))
        stats = {"ratio": ratio.detach(), "clipfrac": out.clipfrac}
        total = out.loss
        if cfg.branch.pave_splits:
            total = total + self.pave_loss(traj, j, text, v, a)
        if mu_ref is not None:
            total = total + kl_penalty(fused.kl, opt.kl_beta)
            stats["kl"] = fused.kl.detach().mean()
        return UnitLoss(total, stats)

    def pave_loss(self, traj, j: int, text: str, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Pave-GRPO: (1/|S|)·Σ_{n∈S} mean(−A·e^{lp_n − sg(lp_n)}) over the decomposed kernels of stored step j,
        reusing the coarse step's velocity ``v`` (its first row: the branches share x_j), with gradients through
        the sub-step chain (``fastgrpo.algorithms.pave``)."""
        trainer, cfg = self.trainer, self.cfg
        denoise = trainer.backbone.denoiser(trainer.trained)
        embeddings, empty = trainer.text([text]), trainer.empty_text(1)

        def model(y, sigma):
            with trainer.autocast():
                return guided_velocity(denoise, y, sigma, embeddings, empty, cfg.sampling.guidance)

        splits = cfg.branch.pave_splits
        total = 0.0
        for n in splits:
            lp = decomposed_log_prob(model, traj.x[j][:1], v[:1], traj.sigma[j], traj.sigma_next[j], n,
                                     cfg.sampling.eta, traj.x_next[j])
            total = total + adagrpo_loss(lp, a).loss
        return total / len(splits)

    def velocity(self, model, traj, j: int, text: str) -> torch.Tensor:
        """v at stored step j, batched exactly as in the rollout (so the replayed log-prob is bit-identical): the
        whole group, or one call expanded to the group when its samples share the input (G²RPO's branches)."""
        trainer = self.trainer
        x = traj.x[j]
        n = 1 if traj.shared_input else x.shape[0]
        v = guided_velocity(trainer.backbone.denoiser(model), x[:n], traj.sigma[j], trainer.text([text] * n),
                            trainer.empty_text(n), self.cfg.sampling.guidance)
        return v.expand_as(x)

    def summarize(self, stats: dict[str, list[torch.Tensor]], first: int) -> dict[str, torch.Tensor]:
        """The first minibatch replays the rollout policy itself, so its ratios are exactly 1."""
        ratios = stats["ratio"]
        out = {"first_ratio_max_dev": (torch.cat(ratios[:first]) - 1).abs().max(),
               "ratio_max_dev": (torch.cat(ratios) - 1).abs().max(),
               "clipfrac": torch.stack(stats["clipfrac"]).mean()}
        if "kl" in stats:
            out["kl"] = torch.stack(stats["kl"]).mean()
        return out
