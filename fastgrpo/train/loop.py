"""The training loop: AdaGRPO (online curriculum filtering + cross-level advantage fusion) with MixGRPO's sliding
window (and Flash), on the embedded shapes world. Each iteration:

1. candidates: B training prompts; each gets one deterministic ODE anchor rollout and its reward;
2. curriculum: the capability EMA folds in the anchor rewards; the k prompts nearest μ_ema are kept
   (``adagrpo.curriculum=false``: k prompts at random — plain MixGRPO);
3. rollouts: G samples per kept prompt, SDE only inside the window (fused step, in-kernel noise), stored window
   steps only;
4. rewards → advantages: group z-score (unbiased, ε 1e-8, clamp) + the calibrated global EMA advantage
   (``adagrpo.fusion``) in one ``group_advantages`` launch;
5. update: PPO-clip over the window steps, gradients accumulated over prompts and steps, one AdamW step per
   iteration (so the first ratio is exactly 1), gradient clipping.
All randomness is derived from (seed, iteration, rank), so a resumed run reproduces the uninterrupted one.

Data parallel (``torchrun``; gloo on CPU, NCCL on GPUs): each rank draws its own candidates and keeps its groups
whole; the capability EMA is all-reduced (one global EMA); gradients are averaged by DDP once per iteration
(``no_sync`` on every backward but the last); rank 0 evaluates and writes outputs and checkpoints.
"""
from __future__ import annotations

import copy
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .._dist import rank_and_world
from ..algorithms import CapabilityTracker, kl_penalty, ppo_clip_loss
from ..ops import flow_step, group_advantages
from ..world import World, shapes
from . import checkpoint, report
from .config import TrainConfig, dump_config, to_dict
from .branching import branch
from .rollout import guided_velocity, sample
from .schedule import flash_sigmas, sigmas, window

EVAL_SEED = 12345


@dataclass
class Prompts:
    combos: torch.Tensor
    texts: list[str]


def _prompts(combos) -> Prompts:
    combos = torch.tensor(combos)
    return Prompts(combos, [shapes.prompt(tuple(c)) for c in combos.tolist()])


def _noise(n: int, shape, seed: int) -> torch.Tensor:
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


class Trainer:
    def __init__(self, config: TrainConfig, resume: str | None = None):
        self.cfg = config
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        self.world = World.load(config.model.path, self.device)
        self.model = self.world.transformer
        if config.model.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        # Flow-GRPO's KL reference: the initial model, frozen (kept only when optim.kl_beta > 0)
        self.reference = (copy.deepcopy(self.model).eval().requires_grad_(False) if config.optim.kl_beta > 0
                          else None)
        self.rank, self.world_size = rank_and_world()
        self.trained = self.model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel
            self.trained = DistributedDataParallel(self.model)  # also broadcasts rank 0's weights
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.optim.lr,
                                           weight_decay=config.optim.weight_decay)
        self.tracker = CapabilityTracker(config.adagrpo.decay, device=self.device)
        self.iteration = 0
        self.history: list[dict] = []
        self.nonfinite_in_a_row = 0
        self.out = Path(config.out_dir)
        self.train_prompts = _prompts(shapes.TRAIN)
        self.heldout_prompts = _prompts(shapes.HELD_OUT)
        self.empty = self.world.encode_prompts([""]) if config.sampling.guidance > 1 else None
        self.sigmas = sigmas(config.sampling.steps, config.sampling.shift)
        self._stop = False
        self._writer = None
        if resume is not None:
            self._resume(resume)

    # ---- state ---------------------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"iteration": self.iteration, "config": to_dict(self.cfg), "optimizer": self.optimizer.state_dict(),
                "tracker": self.tracker.state_dict(), "history": self.history}

    def _resume(self, run_dir: str) -> None:
        model_state, state = checkpoint.load(run_dir)
        saved, current = state["config"], to_dict(self.cfg)
        for key in ("sampling", "window", "adagrpo", "group_size", "seed", "model"):
            if saved.get(key) != current.get(key):
                raise ValueError(f"--resume {run_dir}: its config differs in {key!r} ({saved.get(key)} vs "
                                 f"{current.get(key)}); resume with the run's own config")
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.tracker.load_state_dict(state["tracker"])
        self.iteration = state["iteration"]
        self.history = state["history"]

    def save(self) -> Path | None:
        path = checkpoint.save(self.out, self.iteration, self.model, self._state()) if self.rank == 0 else None
        if self.world_size > 1:
            torch.distributed.barrier()
        return path

    # ---- pieces --------------------------------------------------------------------------------------------
    def _text(self, texts: list[str]):
        return self.world.encode_prompts(texts)

    def _empty(self, n: int):
        if self.empty is None:
            return None
        from ..world import TextEmbeddings
        return TextEmbeddings(self.empty.hidden.expand(n, -1, -1), self.empty.pooled.expand(n, -1))

    def _reward(self, latents: torch.Tensor, combos: torch.Tensor) -> torch.Tensor:
        return shapes.reward(self.world.codec.decode(latents), combos)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Fixed-seed ODE samples of every training and held-out prompt: mean reward and exact correctness."""
        cfg = self.cfg.sampling
        out = {}
        self.model.eval()
        for name, prompts in (("train", self.train_prompts), ("heldout", self.heldout_prompts)):
            n = len(prompts.texts)
            noise = _noise(n, self.world.codec.latent_shape, EVAL_SEED).to(self.device)
            with self._autocast():
                traj = sample(self.model, noise, self.sigmas, self._text(prompts.texts), self._empty(n),
                              guidance=cfg.guidance, eta=cfg.eta, family=cfg.family)
            images = self.world.codec.decode(traj.latents)
            out[f"eval_{name}_reward"] = shapes.reward(images, prompts.combos).mean().item()
            out[f"eval_{name}_correct"] = shapes.correct(images, prompts.combos).float().mean().item()
            if name == "train":
                self._last_eval_images = images[:32]
        self.model.train()
        return out

    def _select(self, seed: int) -> tuple[Prompts, dict]:
        """Candidates, their ODE anchors, the EMA update and the kept prompts."""
        ada, cfg = self.cfg.adagrpo, self.cfg.sampling
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(self.train_prompts.texts), generator=g)[:ada.candidates]
        cand = Prompts(self.train_prompts.combos[pick], [self.train_prompts.texts[i] for i in pick.tolist()])
        stats = {}
        if not (ada.curriculum or ada.fusion):
            keep = torch.arange(ada.keep)
        else:
            n = len(cand.texts)
            noise = _noise(n, self.world.codec.latent_shape, seed + 1).to(self.device)
            with self._autocast():
                traj = sample(self.model, noise, self.sigmas, self._text(cand.texts), self._empty(n),
                              guidance=cfg.guidance, eta=cfg.eta, family=cfg.family)
            anchor = self._reward(traj.latents, cand.combos)
            self.tracker.update(anchor)
            keep = self._pick(anchor, ada) if ada.curriculum else torch.arange(ada.keep)
            stats = {"anchor_reward": anchor.mean().item(), "ema_mean": self.tracker.mean.item()}
        return Prompts(cand.combos[keep], [cand.texts[i] for i in keep.tolist()]), stats

    def step(self) -> dict:
        """One iteration; returns its metrics."""
        cfg, ada, opt_cfg = self.cfg, self.cfg.adagrpo, self.cfg.optim
        seed = cfg.seed * 1_000_003 + self.iteration * 7919 + self.rank * 104_729
        t0 = time.perf_counter()
        kept, stats = self._select(seed)
        t_select = time.perf_counter()
        start, end = window(cfg.window, cfg.sampling.steps, self.iteration, cfg.iterations, cfg.seed)
        grid = (flash_sigmas(self.sigmas, end, cfg.sampling.steps, cfg.sampling.shift, cfg.window.flash_ratio)
                if cfg.window.flash else self.sigmas)
        G = cfg.group_size
        groups, rewards, finals = [], [], []  # groups: (prompt text, trajectory of G samples)
        self.model.eval()
        for p, text in enumerate(kept.texts):
            target = kept.combos[p].expand(G, 3)
            if cfg.branch.enabled:
                points, strides = cfg.branch.lists()
                with self._autocast():
                    branches = branch(self.model, self._group_noise(1, seed + 100 + p), self.sigmas, points, strides,
                                      G, self._text([text]), self._empty(1), guidance=cfg.sampling.guidance,
                                      eta=cfg.sampling.eta, family=cfg.sampling.family,
                                      logprob=cfg.sampling.logprob, seed=seed + 200 + p,
                                      score=lambda latents: self._reward(latents, target))
                for _, traj, r in branches:
                    groups.append((text, traj))
                    rewards.append(r)
                continue
            with self._autocast():
                traj = sample(self.model, self._group_noise(G, seed + 100 + p), grid, self._text([text] * G),
                              self._empty(G), guidance=cfg.sampling.guidance, eta=cfg.sampling.eta,
                              family=cfg.sampling.family, logprob=cfg.sampling.logprob, window=(start, end),
                              seed=seed + 200 + p, flash=cfg.window.flash)
            groups.append((text, traj))
            if cfg.stepwise.enabled:
                with self._autocast():
                    gains, final = self._stepwise_gains(traj, text, target)
                rewards.append(gains)
                finals.append(final)
            else:
                rewards.append(self._reward(traj.latents, target))
        self.model.train()
        t_rollout = time.perf_counter()
        rewards = torch.cat(rewards)  # (N,), or (N, |Λ|) for G²RPO's granularities
        if self._any_rank(~torch.isfinite(rewards).all()):
            return self._nonfinite("rewards")
        ids = torch.arange(len(groups), device=rewards.device).repeat_interleave(G)
        adv = group_advantages(rewards, ids, std=opt_cfg.adv_std, eps=opt_cfg.adv_eps, clip=opt_cfg.adv_clip,
                               ema=self.tracker if ada.fusion else None, fusion_weight=ada.fusion_weight,
                               pooled=cfg.stepwise.enabled, check_finite=False)
        # the reported reward: of the final images (Stepwise), or the mean over granularities (G²RPO)
        rewards = torch.cat(finals) if finals else (rewards.mean(1) if rewards.dim() == 2 else rewards)
        t_adv = time.perf_counter()

        self.optimizer.zero_grad(set_to_none=True)
        trained = self._trained_steps(len(groups[0][1].x), seed)
        ratios, clipfrac, losses, kls = [], [], [], []
        backwards, done = len(trained) * len(groups), 0
        for p, (prompt_text, traj) in enumerate(groups):
            a = adv.advantages[p * G:(p + 1) * G]
            for j in trained:
                step_args = (traj.x[j], traj.sigma[j], traj.sigma_next[j], cfg.sampling.eta)
                mu_ref = None
                if self.reference is not None:
                    with torch.no_grad(), self._autocast():
                        v_ref = self._velocity(self.reference, traj, j, prompt_text)
                        mu_ref = flow_step(v_ref, *step_args, family=cfg.sampling.family, logprob=cfg.sampling.logprob,
                                           x_next=traj.x_next[j], return_mean=True).mean
                with self._autocast():
                    v = self._velocity(self.trained, traj, j, prompt_text)
                fused = flow_step(v, *step_args, family=cfg.sampling.family, logprob=cfg.sampling.logprob,
                                  x_next=traj.x_next[j], mu_ref=mu_ref)
                lp = fused.log_prob
                out = ppo_clip_loss(lp, traj.log_prob[j], a[:, j] if a.dim() == 2 else a, opt_cfg.clip_range)
                total = out.loss
                if mu_ref is not None:
                    total = total + kl_penalty(fused.kl, opt_cfg.kl_beta)
                    kls.append(fused.kl.detach().mean())
                done += 1
                with self._sync_grads(last=done == backwards):
                    (total / backwards).backward()
                ratios.append(torch.exp(lp.detach() - traj.log_prob[j]))
                clipfrac.append(out.clipfrac)
                losses.append(total.detach())
        loss = torch.stack(losses).mean()
        if self._any_rank(~torch.isfinite(loss)):
            self.optimizer.zero_grad(set_to_none=True)
            return self._nonfinite("loss")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), opt_cfg.grad_clip)
        self.optimizer.step()
        self.nonfinite_in_a_row = 0
        t_update = time.perf_counter()
        ratio = torch.cat(ratios)
        return {"reward": rewards.mean().item(), "loss": loss.item(), "grad_norm": grad_norm.item(),
                "first_ratio_max_dev": (ratio - 1).abs().max().item(), "clipfrac": torch.stack(clipfrac).mean().item(),
                "zero_spread_groups": adv.zero_spread_groups.item(), "window_start": start,
                "t_select": t_select - t0, "t_rollout": t_rollout - t_select, "t_advantage": t_adv - t_rollout,
                "t_update": t_update - t_adv, **({"kl": torch.stack(kls).mean().item()} if kls else {}), **stats}

    @torch.no_grad()
    def _stepwise_gains(self, traj, text: str, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """((G, steps) gains R(x̂0 after step j) − R(x̂0 before it), (G,) final rewards); x̂0(x_t) from
        ``stepwise.substeps`` Euler steps to σ = 0. The gains telescope to R(after the last window step) −
        R(x̂0 before the first)."""
        cfg = self.cfg
        G = traj.latents.shape[0]
        embeddings = self._text([text] * G)

        def refined(x, sigma):
            grid = torch.linspace(sigma, 0.0, cfg.stepwise.substeps + 1).tolist()
            for s, sn in zip(grid[:-1], grid[1:]):
                x = x + (sn - s) * guided_velocity(self.model, x, s, embeddings, self._empty(G), cfg.sampling.guidance)
            return x

        before = [self._reward(refined(x, s), target) for x, s in zip(traj.x, traj.sigma)]
        after = before[1:] + [self._reward(refined(traj.x_next[-1], traj.sigma_next[-1]), target)]
        return torch.stack([a - b for a, b in zip(after, before)], 1), self._reward(traj.latents, target)

    def _velocity(self, model, traj, j: int, prompt_text: str) -> torch.Tensor:
        """v at stored step j, batched exactly as in the rollout (so the replayed log-prob is bit-identical): the
        whole group, or one call expanded to the group when its samples share the input (G²RPO's branches)."""
        x = traj.x[j]
        n = 1 if traj.shared_input else x.shape[0]
        v = guided_velocity(model, x[:n], traj.sigma[j], self._text([prompt_text] * n), self._empty(n),
                            self.cfg.sampling.guidance)
        return v.expand_as(x)

    def _pick(self, anchor: torch.Tensor, ada) -> torch.Tensor:
        """Kept candidates by ``adagrpo.selection``: nearest μ_ema (the curriculum), the easiest / hardest anchors,
        the nearest the batch median, or the first k of the random candidates (AdaGRPO's ablation)."""
        if ada.selection == "curriculum":
            return self.tracker.select(anchor, ada.keep).cpu()
        order = torch.argsort(anchor.cpu(), descending=True, stable=True)
        if ada.selection == "easiest":
            return order[:ada.keep]
        if ada.selection == "hardest":
            return order.flip(0)[:ada.keep]
        if ada.selection == "median":
            return torch.sort((anchor.cpu() - anchor.cpu().median()).abs(), stable=True).indices[:ada.keep]
        return torch.arange(ada.keep)

    def _group_noise(self, group: int, seed: int) -> torch.Tensor:
        """A group's initial noise: independent per sample, or one draw shared by the group (DanceGRPO)."""
        noise = _noise(1 if self.cfg.sampling.shared_noise else group, self.world.codec.latent_shape, seed)
        return noise.expand(group, *noise.shape[1:]).contiguous().to(self.device)

    def _trained_steps(self, stored: int, seed: int) -> list[int]:
        """The stored SDE steps trained this iteration: all, or a random ``window.train_fraction`` of them."""
        fraction = self.cfg.window.train_fraction
        if fraction >= 1.0:
            return list(range(stored))
        count = max(1, round(fraction * stored))
        pick = torch.randperm(stored, generator=torch.Generator().manual_seed(seed + 3))[:count]
        return sorted(pick.tolist())

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.model.autocast)

    def _sync_grads(self, last: bool):
        """DDP averages gradients on the last backward of the iteration only."""
        import contextlib
        if self.world_size > 1 and not last:
            return self.trained.no_sync()
        return contextlib.nullcontext()

    def _any_rank(self, flag: torch.Tensor) -> bool:
        """True if ``flag`` holds on any rank (so every rank skips the same iterations together)."""
        flag = flag.to(torch.float32).reshape(1)
        if self.world_size > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _nonfinite(self, what: str) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_in_a_row += 1
        if self.nonfinite_in_a_row >= 3:
            raise RuntimeError(f"non-finite {what} in 3 iterations in a row (last at iteration {self.iteration}); "
                               "stopping — lower optim.lr or check the reward")
        return {"skipped": what}

    # ---- driver --------------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        self._stop = True

    def run(self, progress: bool = True) -> list[dict]:
        cfg = self.cfg
        main = self.rank == 0
        progress = progress and main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.out / "config.yaml")
            self._writer = _tensorboard(self.out / "tensorboard")
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            from tqdm import tqdm
            bar = tqdm(total=cfg.iterations, initial=self.iteration, disable=not progress, desc="fastgrpo train")
            if main and self.iteration == 0 and not any("eval_train_reward" in h for h in self.history):
                self._log({"iteration": 0, **self.evaluate()})
            while self.iteration < cfg.iterations and not self._stop:
                metrics = self.step()
                self.iteration += 1
                record = {"iteration": self.iteration, **metrics}
                if main and (self.iteration % cfg.eval_every == 0 or self.iteration == cfg.iterations):
                    record.update(self.evaluate())
                if main:
                    self._log(record)
                bar.set_postfix(reward=f"{metrics.get('reward', float('nan')):.3f}")
                bar.update(1)
                if self.iteration % cfg.checkpoint_every == 0:
                    self.save()
            bar.close()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        self.save()
        if main:
            if self._writer is not None:
                self._writer.close()
            self._summary()
        return self.history

    def _log(self, record: dict) -> None:
        self.history.append(record)
        report.append_jsonl(self.out / "metrics.jsonl", record)
        if self._writer is not None:
            for key, value in record.items():
                if key != "iteration" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, record["iteration"])
        if "eval_train_reward" in record:
            evals = [h for h in self.history if "eval_train_reward" in h]
            report.save_curve(evals, ("eval_train_reward", "eval_train_correct", "eval_heldout_reward",
                                      "eval_heldout_correct"), self.out / "reward_curve.png")
            report.save_grid(self._last_eval_images, self.out / f"samples_{record['iteration']:05d}.png")

    def _summary(self) -> None:
        evals = [h for h in self.history if "eval_train_reward" in h]
        if not evals:
            return
        first, last = evals[0], evals[-1]
        print(f"\n{'metric':<22}{'start':>8}{'end':>8}")
        for key in ("eval_train_reward", "eval_train_correct", "eval_heldout_reward", "eval_heldout_correct"):
            print(f"{key:<22}{first[key]:>8.3f}{last[key]:>8.3f}")
        steps = [h for h in self.history if "t_rollout" in h]
        if steps:
            parts = {k: sum(h[k] for h in steps) / len(steps) for k in ("t_select", "t_rollout", "t_advantage",
                                                                         "t_update")}
            print("seconds per iteration: " + ", ".join(f"{k[2:]} {v:.2f}" for k, v in parts.items()))
        print(f"outputs in {self.out}")


def _tensorboard(folder: Path):
    """TensorBoard scalars when tensorboard is installed (the ``train`` extra); metrics.jsonl always."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder))


def train(config: TrainConfig, resume: str | None = None, progress: bool = True) -> list[dict]:
    """Run training; under ``torchrun`` (WORLD_SIZE > 1) initialise the process group first (NCCL on CUDA, gloo on
    CPU) and tear it down after."""
    import os

    started = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if config.device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        started = True
    try:
        return Trainer(config, resume).run(progress)
    finally:
        if started:
            torch.distributed.destroy_process_group()
