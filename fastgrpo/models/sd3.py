"""Stable Diffusion 3 / 3.5 from a local diffusers pipeline directory (``model.kind: sd3``).

Text: the pipeline's own ``encode_prompt`` (CLIP-L + CLIP-G + T5, or without T5 when the directory has none),
cached per prompt. Velocity: ``SD3Transformer2DModel(x, timestep=σ·1000, ...)`` as the pipeline calls it. Latents:
(C, H/8, W/8) in the transformer's space; decode: ``x / scaling_factor + shift_factor`` through the VAE.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import DTYPES, Backbone, EmbeddingCache, TextEmbeddings, decode_vae, freeze, require_pipeline_dir


class Sd3Backbone(Backbone):
    def __init__(self, transformer: nn.Module, vae, encode, *, resolution: int, dtype: torch.dtype,
                 cache_size: int = 512):
        self.transformer = transformer
        self.vae = vae
        self.dtype = dtype
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if resolution % (factor * transformer.config.patch_size):
            raise ValueError(f"model.resolution={resolution} must be a multiple of "
                             f"{factor * transformer.config.patch_size} for this VAE and patch size")
        self.latent_shape = (transformer.config.in_channels, resolution // factor, resolution // factor)
        self.encode_prompts = EmbeddingCache(encode, cache_size)

    @classmethod
    def from_pretrained(cls, cfg, device) -> "Sd3Backbone":
        from diffusers import StableDiffusion3Pipeline

        root = require_pipeline_dir(cfg.path, "StableDiffusion3Pipeline", ("transformer", "vae", "text_encoder"))
        dtype = DTYPES[cfg.dtype]
        try:
            pipe = StableDiffusion3Pipeline.from_pretrained(str(root), dtype=dtype, local_files_only=True)
        except Exception as err:
            raise ValueError(f"model.path={cfg.path!r}: cannot load it as a StableDiffusion3Pipeline: "
                             f"{type(err).__name__}: {err}") from err
        if type(pipe.transformer).__name__ != "SD3Transformer2DModel":
            raise ValueError(f"model.path={cfg.path!r}: cannot load it as a StableDiffusion3Pipeline: its transformer is "
                             f"{type(pipe.transformer).__name__}, not SD3Transformer2DModel")
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "vae"):
            freeze(getattr(pipe, name, None), device, dtype)
        transformer = pipe.transformer.to(device, dtype=torch.float32 if cfg.lora_rank == 0 else dtype)

        @torch.no_grad()
        def encode(texts):
            hidden, _, pooled, _ = pipe.encode_prompt(texts, None, None, device=device,
                                                      do_classifier_free_guidance=False,
                                                      max_sequence_length=cfg.max_sequence_length)
            return hidden, pooled

        return cls(transformer, pipe.vae, encode, resolution=cfg.resolution, dtype=dtype, cache_size=cfg.text_cache)

    def velocity(self, transformer: nn.Module, latents: Tensor, sigma: Tensor, text: TextEmbeddings) -> Tensor:
        dtype = next(transformer.parameters()).dtype if not torch.is_autocast_enabled() else latents.dtype
        return transformer(hidden_states=latents.to(dtype), encoder_hidden_states=text.hidden.to(dtype),
                           pooled_projections=text.pooled.to(dtype), timestep=sigma * 1000.0, return_dict=False)[0]

    def decode(self, latents: Tensor) -> Tensor:
        return decode_vae(self.vae, latents)
