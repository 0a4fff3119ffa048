"""FLUX.1 from a local diffusers pipeline directory (``model.kind: flux``).

Latents live packed, as FluxPipeline keeps them: (H/16 · W/16, 4C) tokens of 2×2 latent patches — the flow step
is elementwise, so packing changes nothing but layout. Velocity: ``FluxTransformer2DModel(x, timestep=σ,
guidance=g, ...)`` with the fixed text/image position ids (FLUX.1-dev's embedded guidance ``model.flux_guidance``;
ignored by models without a guidance embedding). Text: CLIP pooled + T5 sequence via the pipeline's
``encode_prompt``, cached. Decode: unpack → ``x / scaling_factor + shift_factor`` → VAE.
The σ schedule is ``sampling.shift``: FluxPipeline's resolution-dependent shift is exp(μ) — 1.88 at 512²
(1024 tokens) and 3.16 at 1024² (4096 tokens) — set it accordingly.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import DTYPES, Backbone, EmbeddingCache, TextEmbeddings, decode_vae, load_pipeline


class FluxBackbone(Backbone):
    def __init__(self, transformer: nn.Module, vae, encode, *, resolution: int, dtype: torch.dtype,
                 guidance: float = 3.5, max_sequence_length: int = 512, cache_size: int = 512):
        from diffusers import FluxPipeline

        self.transformer = transformer
        self.vae = vae
        self.dtype = dtype
        self.resolution = resolution
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        if resolution % (self.vae_scale * 2):
            raise ValueError(f"model.resolution={resolution} must be a multiple of {self.vae_scale * 2}")
        side = resolution // (self.vae_scale * 2)
        self.latent_shape = (side * side, transformer.config.in_channels)
        device = next(transformer.parameters()).device
        self.img_ids = FluxPipeline._prepare_latent_image_ids(1, side, side, device, dtype)
        self.txt_ids = torch.zeros(max_sequence_length, 3, device=device, dtype=dtype)
        self.guidance = guidance if transformer.config.guidance_embeds else None
        self.encode_prompts = EmbeddingCache(encode, cache_size)

    @classmethod
    def from_pretrained(cls, cfg, device) -> "FluxBackbone":
        from diffusers import FluxPipeline

        pipe = load_pipeline(FluxPipeline, cfg, device, ("transformer", "vae", "text_encoder", "text_encoder_2"),
                             ("text_encoder", "text_encoder_2", "vae"), "FluxTransformer2DModel")
        dtype = DTYPES[cfg.dtype]

        @torch.no_grad()
        def encode(texts):
            hidden, pooled, _ = pipe.encode_prompt(texts, None, device=device,
                                                   max_sequence_length=cfg.max_sequence_length)
            return hidden, pooled

        backbone = cls(pipe.transformer, pipe.vae, encode, resolution=cfg.resolution, dtype=dtype,
                       guidance=cfg.flux_guidance, max_sequence_length=cfg.max_sequence_length,
                       cache_size=cfg.text_cache)
        backbone.keep_from(pipe, ("text_encoder", "text_encoder_2"))
        backbone.image_seq_len = backbone.latent_shape[0]
        return backbone

    def velocity(self, transformer: nn.Module, latents: Tensor, sigma: Tensor, text: TextEmbeddings) -> Tensor:
        dtype = next(transformer.parameters()).dtype if not torch.is_autocast_enabled() else latents.dtype
        guidance = None if self.guidance is None else torch.full_like(sigma, self.guidance)
        return transformer(hidden_states=latents.to(dtype), timestep=sigma, guidance=guidance,
                           pooled_projections=text.pooled.to(dtype), encoder_hidden_states=text.hidden.to(dtype),
                           txt_ids=self.txt_ids[:text.hidden.shape[1]], img_ids=self.img_ids,
                           return_dict=False)[0]

    def decode(self, latents: Tensor) -> Tensor:
        from diffusers import FluxPipeline

        spatial = FluxPipeline._unpack_latents(latents, self.resolution, self.resolution, self.vae_scale)
        return decode_vae(self.vae, spatial)
