"""Wan2.1 / Wan2.2 text-to-video from a local diffusers pipeline directory (``model.kind: wan``; ``WanPipeline``
with one transformer).

Latents are 5-D — (C, F', H/8, W/8), F' = (``model.frames`` − 1)/4 + 1 — and go through the same fused flow step
(its kernels take any rank). Text: the pipeline's UMT5 ``encode_prompt``, padded with zeros to
``model.max_sequence_length`` as the pipeline pads it, cached. Velocity: ``WanTransformer3DModel(x, timestep=σ·1000,
text)`` is v (the pipeline steps its scheduler with it). Decode: ``x·std + mean`` per channel (the VAE's
``latents_std`` / ``latents_mean``) → the causal 3-D VAE → a video (B, 3, F, H, W) in [0, 1], whose frames the
rewards score (``fastgrpo.train.video``).

Wan2.2 A14B (``transformer_2`` and ``boundary_ratio`` in the pipeline): two experts, ``transformer`` for the
high-noise steps (σ·1000 ≥ boundary_ratio·1000, the pipeline's test) and ``transformer_2`` below; both train (LoRA on
each, or both fully), as one module (:class:`WanExperts`) that sends each sample to its expert. The low-noise
steps may take their own CFG scale (``model.guidance_2``; null: ``sampling.guidance``, as the pipeline's
``guidance_scale_2``). Wan2.2 TI2V-5B as text-to-video (``expand_timesteps``): the timestep is given per latent
token (all equal without a conditioning image), as its pipeline does.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import (DTYPES, Backbone, EmbeddingCache, TextEmbeddings, decode_video_vae,
                   load_pipeline)


class WanExperts(nn.Module):
    """Wan2.2 A14B's two transformers as the one trained module: ``high`` (the pipeline's ``transformer``) for
    timesteps ≥ ``boundary`` (σ·1000 units), ``low`` (``transformer_2``) below. A batch whose samples sit on both
    sides is split and put back in order. LoRA adapters, gradient checkpointing and the adapter switch reach both."""

    def __init__(self, high: nn.Module, low: nn.Module, boundary: float):
        super().__init__()
        self.high, self.low = high, low
        self.boundary = float(boundary)
        self.experts = (high, low)  # a plain tuple: not registered twice (their parameters live under high./low.)

    @property
    def config(self):
        return self.high.config

    @property
    def _hf_peft_config_loaded(self) -> bool:
        return self.high._hf_peft_config_loaded and self.low._hf_peft_config_loaded

    def add_adapter(self, config) -> None:
        for expert in self.experts:
            expert.add_adapter(config)

    def disable_adapters(self) -> None:
        for expert in self.experts:
            expert.disable_adapters()

    def enable_adapters(self) -> None:
        for expert in self.experts:
            expert.enable_adapters()

    def enable_gradient_checkpointing(self) -> None:
        for expert in self.experts:
            expert.enable_gradient_checkpointing()

    def high_noise(self, timestep: Tensor) -> Tensor:
        """(B,) bool: which samples the high-noise expert takes — the pipeline's ``t >= boundary_ratio · 1000``
        (float32 against the boundary, as it compares); per-token timesteps (TI2V) by their first token's."""
        return timestep.reshape(timestep.shape[0], -1)[:, 0] >= self.boundary

    def forward(self, hidden_states: Tensor, timestep: Tensor, encoder_hidden_states: Tensor,
                return_dict: bool = False):
        high = self.high_noise(timestep)
        count = int(high.sum())  # the one host read per call: which expert(s) run
        if count in (0, high.shape[0]):
            expert = self.high if count else self.low
            return expert(hidden_states=hidden_states, timestep=timestep,
                          encoder_hidden_states=encoder_hidden_states, return_dict=False)
        out = None
        for expert, rows in ((self.high, high.nonzero()[:, 0]), (self.low, (~high).nonzero()[:, 0])):
            part = expert(hidden_states=hidden_states[rows], timestep=timestep[rows],
                          encoder_hidden_states=encoder_hidden_states[rows], return_dict=False)[0]
            out = part.new_empty(hidden_states.shape[0], *part.shape[1:]) if out is None else out
            out = out.index_copy(0, rows, part)
        return (out,)


class WanBackbone(Backbone):
    def __init__(self, transformer: nn.Module, vae, encode, *, resolution: int, frames: int, cache_size: int = 512):
        self.transformer = transformer
        self.vae = vae
        spatial, temporal = vae.config.scale_factor_spatial, vae.config.scale_factor_temporal
        patch = transformer.config.patch_size
        if resolution % (spatial * patch[1]):
            raise ValueError(f"model.resolution={resolution} must be a multiple of {spatial * patch[1]}")
        if (frames - 1) % temporal:
            raise ValueError(f"model.frames={frames}: frames − 1 must be a multiple of {temporal} (e.g. 81)")
        self.latent_shape = (vae.config.z_dim, (frames - 1) // temporal + 1, resolution // spatial,
                             resolution // spatial)
        self.encode_prompts = EmbeddingCache(encode, cache_size)

    expand_timesteps = False
    """Wan2.2 TI2V: the timestep per latent token, (B, F'/p · H'/p · W'/p)."""
    guidance_2: float | None = None
    """Wan2.2 A14B: the CFG scale of the low-noise expert's steps (None: the run's)."""

    @classmethod
    def from_pretrained(cls, cfg, device) -> "WanBackbone":
        from diffusers import WanPipeline

        pipe = load_pipeline(WanPipeline, cfg, device, ("transformer", "vae", "text_encoder", "tokenizer"),
                             ("text_encoder", "vae"), "WanTransformer3DModel")
        transformer = pipe.transformer
        if getattr(pipe, "transformer_2", None) is not None:
            if pipe.config.boundary_ratio is None:
                raise ValueError(f"model.path={cfg.path!r}: a WanPipeline with transformer_2 but no boundary_ratio "
                                 "in model_index.json (which expert runs when is undefined)")
            pipe.transformer_2.to(device, dtype=torch.float32 if cfg.lora_rank == 0 else DTYPES[cfg.dtype])
            transformer = WanExperts(pipe.transformer, pipe.transformer_2,
                                     pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps)
        elif cfg.guidance_2 is not None:
            raise ValueError(f"model.guidance_2={cfg.guidance_2} needs a two-expert Wan2.2 pipeline (transformer_2 "
                             f"and boundary_ratio); model.path={cfg.path!r} has one transformer")

        @torch.no_grad()
        def encode(texts):
            hidden, _ = pipe.encode_prompt(list(texts), do_classifier_free_guidance=False, device=device,
                                           max_sequence_length=cfg.max_sequence_length)
            return hidden, hidden.new_zeros(hidden.shape[0], 1)  # no pooled embedding

        backbone = cls(transformer, pipe.vae, encode, resolution=cfg.resolution, frames=cfg.frames,
                       cache_size=cfg.text_cache)
        backbone.keep_from(pipe, ("text_encoder",))
        backbone.expand_timesteps = bool(pipe.config.expand_timesteps)
        backbone.guidance_2 = cfg.guidance_2
        return backbone

    def velocity(self, transformer: nn.Module, latents: Tensor, sigma: Tensor, text: TextEmbeddings) -> Tensor:
        dtype = next(transformer.parameters()).dtype if not torch.is_autocast_enabled() else latents.dtype
        timestep = sigma * 1000.0
        if self.expand_timesteps:
            p_t, p_h, p_w = self.transformer.config.patch_size
            frames, height, width = (-(-n // p) for n, p in zip(latents.shape[2:], (p_t, p_h, p_w)))
            timestep = timestep[:, None].expand(-1, frames * height * width)
        return transformer(hidden_states=latents.to(dtype), timestep=timestep,
                           encoder_hidden_states=text.hidden.to(dtype), return_dict=False)[0]

    def guidance_at(self, sigma: float, guidance: float) -> float:
        """The CFG scale at σ: ``model.guidance_2`` on a two-expert model's low-noise steps, else ``guidance``."""
        if self.guidance_2 is None or not isinstance(self.transformer, WanExperts):
            return guidance
        high = self.transformer.high_noise(torch.tensor([sigma], dtype=torch.float32) * 1000.0)  # on the host
        return guidance if bool(high) else self.guidance_2

    def decode(self, latents: Tensor) -> Tensor:
        return decode_video_vae(self.vae, latents, chunk=2)  # a video's decode holds all its frames at once
