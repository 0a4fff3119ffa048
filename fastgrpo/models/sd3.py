"""Stable Diffusion 3 / 3.5 from a local diffusers pipeline directory (``model.kind: sd3``).

Text: the pipeline's own ``encode_prompt`` (CLIP-L + CLIP-G + T5, or without T5 when the directory has none),
cached per prompt. Velocity: ``SD3Transformer2DModel(x, timestep=σ·1000, ...)`` as the pipeline calls it. Latents:
(C, H/8, W/8) in the transformer's space; decode: ``x / scaling_factor + shift_factor`` through the VAE.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Backbone, EmbeddingCache, TextEmbeddings, decode_vae, load_pipeline


class Sd3Backbone(Backbone):
    def __init__(self, transformer: nn.Module, vae, encode, *, resolution: int, cache_size: int = 512):
        self.transformer = transformer
        self.vae = vae
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if resolution % (factor * transformer.config.patch_size):
            raise ValueError(f"model.resolution={resolution} must be a multiple of "
                             f"{factor * transformer.config.patch_size} for this VAE and patch size")
        self.latent_shape = (transformer.config.in_channels, resolution // factor, resolution // factor)
        self.encode_prompts = EmbeddingCache(encode, cache_size)

    @classmethod
    def from_pretrained(cls, cfg, device) -> "Sd3Backbone":
        from diffusers import StableDiffusion3Pipeline

        pipe = load_pipeline(StableDiffusion3Pipeline, cfg, device, ("transformer", "vae", "text_encoder"),
                             ("text_encoder", "text_encoder_2", "text_encoder_3", "vae"), "SD3Transformer2DModel")
        @torch.no_grad()
        def encode(texts):
            hidden, _, pooled, _ = pipe.encode_prompt(texts, None, None, device=device,
                                                      do_classifier_free_guidance=False,
                                                      max_sequence_length=cfg.max_sequence_length)
            return hidden, pooled

        backbone = cls(pipe.transformer, pipe.vae, encode, resolution=cfg.resolution, cache_size=cfg.text_cache)
        backbone.keep_from(pipe, ("text_encoder", "text_encoder_2", "text_encoder_3"))
        backbone.image_seq_len = (backbone.latent_shape[1] // backbone.transformer.config.patch_size) ** 2
        return backbone

    def velocity(self, transformer: nn.Module, latents: Tensor, sigma: Tensor, text: TextEmbeddings) -> Tensor:
        dtype = next(transformer.parameters()).dtype if not torch.is_autocast_enabled() else latents.dtype
        return transformer(hidden_states=latents.to(dtype), encoder_hidden_states=text.hidden.to(dtype),
                           pooled_projections=text.pooled.to(dtype), timestep=sigma * 1000.0, return_dict=False)[0]

    def decode(self, latents: Tensor) -> Tensor:
        return decode_vae(self.vae, latents)
