"""Wan2.1 / Wan2.2 text-to-video from a local diffusers pipeline directory (``model.kind: wan``; ``WanPipeline``
with one transformer).

Latents are 5-D — (C, F', H/8, W/8), F' = (``model.frames`` − 1)/4 + 1 — and go through the same fused flow step
(its kernels take any rank). Text: the pipeline's UMT5 ``encode_prompt``, padded with zeros to
``model.max_sequence_length`` as the pipeline pads it, cached. Velocity: ``WanTransformer3DModel(x, timestep=σ·1000,
text)`` is v (the pipeline steps its scheduler with it). Decode: ``x·std + mean`` per channel (the VAE's
``latents_std`` / ``latents_mean``) → the causal 3-D VAE → a video (B, 3, F, H, W) in [0, 1], whose frames the
rewards score (``fastgrpo.train.video``). Wan2.2's two-expert pipelines (``transformer_2``, A14B) and its TI2V
per-token timesteps (``expand_timesteps``) are refused: not covered yet.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Backbone, EmbeddingCache, PipelineTextEncoders, TextEmbeddings, decode_video_vae, load_pipeline


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

    @classmethod
    def from_pretrained(cls, cfg, device) -> "WanBackbone":
        from diffusers import WanPipeline

        pipe = load_pipeline(WanPipeline, cfg, device, ("transformer", "vae", "text_encoder", "tokenizer"),
                             ("text_encoder", "vae"), "WanTransformer3DModel")
        if getattr(pipe, "transformer_2", None) is not None or pipe.config.expand_timesteps:
            raise ValueError(f"model.path={cfg.path!r} is a Wan2.2 two-expert or TI2V pipeline (transformer_2 / "
                             "expand_timesteps): not supported yet; a single-transformer WanPipeline is")

        @torch.no_grad()
        def encode(texts):
            hidden, _ = pipe.encode_prompt(list(texts), do_classifier_free_guidance=False, device=device,
                                           max_sequence_length=cfg.max_sequence_length)
            return hidden, hidden.new_zeros(hidden.shape[0], 1)  # no pooled embedding

        backbone = cls(pipe.transformer, pipe.vae, encode, resolution=cfg.resolution, frames=cfg.frames,
                       cache_size=cfg.text_cache)
        backbone.text_encoders = PipelineTextEncoders(pipe, ("text_encoder",))
        return backbone

    def velocity(self, transformer: nn.Module, latents: Tensor, sigma: Tensor, text: TextEmbeddings) -> Tensor:
        dtype = next(transformer.parameters()).dtype if not torch.is_autocast_enabled() else latents.dtype
        return transformer(hidden_states=latents.to(dtype), timestep=sigma * 1000.0,
                           encoder_hidden_states=text.hidden.to(dtype), return_dict=False)[0]

    def decode(self, latents: Tensor) -> Tensor:
        return decode_video_vae(self.vae, latents, chunk=2)  # a video's decode holds all its frames at once
