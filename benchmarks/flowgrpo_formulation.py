"""One GRPO iteration computed the way Flow-GRPO's training script computes it (yifan123/flow_grpo, read for its
structure — its code is not reused), on the model, scorer, T and group that ``bench_trainer_sd35m`` gives fastgrpo:
the side-by-side provider for "fastgrpo's iteration vs the formulation users run today".

What makes it that formulation, stage by stage:
- rollout: one transformer call per step on the group; each SDE step through a scheduler-indexed step function
  (``bench_compat.anchor_flow_grpo``: the σ of each sample looked up by ``index_for_timestep``, the σ_max by
  ``.item()``, every element-wise operation its own temporary, fp32 upcasts), the steps outside the SDE window
  through the diffusers scheduler's own Euler ``step``; every latent and log-prob kept;
- decode: the VAE, then ``VaeImageProcessor``-style postprocessing to [0, 1];
- reward: each image to uint8 on the host, to a PIL image, through ``CLIPImageProcessor`` (PIL resize and crop),
  back to the device, then the CLIP model and the aesthetic head — per-sample host preprocessing;
- advantages: per-prompt mean and std in numpy on the host;
- update: for each trained step, the transformer forward with grad, the same step function's log-prob of the stored
  next latent, the PPO-clip surrogate, a backward per step; one AdamW step with gradient clipping at the end.
No compile, attention as the stock processors call it (SDPA). The SDE window, the trained steps, η, the clip range
and the learning rate are fastgrpo's config's, so the two iterations do the same work.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

try:
    from benchmarks.bench_compat import anchor_flow_grpo
except ImportError:  # run as a script
    from bench_compat import anchor_flow_grpo


@dataclass
class Rollout:
    latents: list  # x_0 … x_T, each (G, *latent)
    log_probs: dict  # step → (G,)
    images: torch.Tensor


class FlowGrpoFormulation:
    """``FlowGrpoFormulation(backbone, aesthetic, cfg)``: ``backbone`` a fastgrpo Backbone (its transformer trains),
    ``aesthetic`` fastgrpo's aesthetic scorer (its CLIP model, head and geometry are used, not its preprocessing),
    ``cfg`` the TrainConfig fastgrpo's run uses (sampling, window, group size, optim)."""

    def __init__(self, backbone, aesthetic, cfg, window: tuple[int, int]):
        from diffusers import FlowMatchEulerDiscreteScheduler
        from transformers import CLIPImageProcessor

        self.backbone, self.cfg, self.window = backbone, cfg, window
        self.device = next(backbone.transformer.parameters()).device
        self.scheduler = FlowMatchEulerDiscreteScheduler(shift=cfg.sampling.shift)
        self._set_timesteps()
        self.clip, self.head = aesthetic.model, aesthetic.head
        g = aesthetic.geometry
        self.processor = CLIPImageProcessor(size={"shortest_edge": g.size},
                                            crop_size={"height": g.crop_size, "width": g.crop_size},
                                            image_mean=list(g.mean), image_std=list(g.std), resample=3)
        self.params = [p for p in backbone.transformer.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)

    def _set_timesteps(self):
        """The SD3 pipeline's grid: σ = linspace(1, 1/T, T) shifted by the scheduler, then 0 (and resets the
        scheduler's step index)."""
        steps = self.cfg.sampling.steps
        self.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps), device=self.device)

    def _velocity(self, latents, t, text):
        sigma = (t / 1000.0).expand(latents.shape[0])
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.model.autocast):
            return self.backbone.velocity(self.backbone.transformer, latents, sigma, text)

    @torch.no_grad()
    def rollout(self, prompt: str, seed: int) -> Rollout:
        G = self.cfg.group_size
        self.backbone.transformer.eval()
        text = self.backbone.encode_prompts([prompt] * G)
        generator = torch.Generator(self.device).manual_seed(seed)
        latents = torch.randn((G, *self.backbone.latent_shape), generator=generator, device=self.device)
        trajectory, log_probs = [latents], {}
        self._set_timesteps()
        start, end = self.window
        for i, t in enumerate(self.scheduler.timesteps):
            v = self._velocity(latents, t, text)
            if start <= i < end:
                latents, log_prob, _, _ = anchor_flow_grpo(self.scheduler, v.float(), t.unsqueeze(0).expand(G),
                                                           latents.float(), noise_level=self.cfg.sampling.eta,
                                                           generator=generator)
                log_probs[i] = log_prob
                self.scheduler._step_index = i + 1  # the Euler steps below continue from here
            else:
                if self.scheduler.step_index is None:
                    self.scheduler._init_step_index(t)
                latents = self.scheduler.step(v.float(), t, latents.float(), return_dict=False)[0]
            trajectory.append(latents)
        images = self.backbone.decode(latents)  # VAE decode, (x / 2 + 0.5).clamp(0, 1)
        self.backbone.transformer.train()
        return Rollout(trajectory, log_probs, images)

    @torch.no_grad()
    def reward(self, images: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        array = (images * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy().transpose(0, 2, 3, 1)
        pil = [Image.fromarray(image) for image in array]
        inputs = self.processor(images=pil, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, next(self.clip.parameters()).dtype)
        embeds = self.clip.get_image_features(pixel_values=pixels)
        embeds = getattr(embeds, "pooler_output", embeds)  # transformers 5 returns an output object
        embeds = embeds.float() / torch.linalg.vector_norm(embeds.float(), dim=-1, keepdim=True)
        return self.head(embeds)

    @staticmethod
    def advantages(rewards: torch.Tensor) -> torch.Tensor:
        values = rewards.cpu().numpy()
        return torch.as_tensor((values - values.mean()) / (values.std() + 1e-4), dtype=torch.float32)

    def update(self, rollout: Rollout, prompt: str, advantages: torch.Tensor) -> dict:
        G, opt = self.cfg.group_size, self.cfg.optim
        text = self.backbone.encode_prompts([prompt] * G)
        adv = advantages.to(self.device).clamp(-opt.adv_clip, opt.adv_clip)
        ratios = []
        self.optimizer.zero_grad(set_to_none=True)
        steps = sorted(rollout.log_probs)
        for i in steps:
            t = self.scheduler.timesteps[i]
            v = self._velocity(rollout.latents[i], t, text)
            _, log_prob, _, _ = anchor_flow_grpo(self.scheduler, v.float(), t.unsqueeze(0).expand(G),
                                                 rollout.latents[i].float(), noise_level=self.cfg.sampling.eta,
                                                 prev_sample=rollout.latents[i + 1].float())
            ratio = torch.exp(log_prob - rollout.log_probs[i])
            unclipped = -adv * ratio
            clipped = -adv * torch.clamp(ratio, 1.0 - opt.clip_range, 1.0 + opt.clip_range)
            loss = torch.mean(torch.maximum(unclipped, clipped)) / len(steps)
            loss.backward()
            ratios.append(ratio.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, opt.grad_clip)
        self.optimizer.step()
        first = ratios[0]
        return {"first_ratio_max_dev": (first - 1).abs().max().item(), "grad_norm": grad_norm.item()}

    def step(self, prompt: str, seed: int) -> dict:
        """One iteration on one prompt's group; seconds per stage (device-synchronised) and the checks."""
        clock = _Clock(self.device)
        rollout = self.rollout(prompt, seed)
        t_rollout = clock()
        rewards = self.reward(rollout.images)
        t_reward = clock()
        advantages = self.advantages(rewards)
        t_advantage = clock()
        checks = self.update(rollout, prompt, advantages)
        t_update = clock()
        return {"rollout": t_rollout, "reward": t_reward, "advantage": t_advantage, "update": t_update,
                "rewards": rewards, **checks}


class _Clock:
    def __init__(self, device):
        self.device = device
        self.last = self._now()

    def _now(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def __call__(self) -> float:
        now = self._now()
        elapsed, self.last = now - self.last, now
        return elapsed
