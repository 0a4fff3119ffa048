"""Qwen-Image from a local diffusers pipeline directory (``model.kind: qwenimage``; ``QwenImagePipeline``).

Latents live packed, as the pipeline keeps them: 2×2 patches of the VAE's latents, (H/16 · W/16, 4C) tokens. Text:
the pipeline's own ``encode_prompt`` — Qwen2.5-VL's last hidden states of the prompt inside its system template,
the template's tokens dropped — so each prompt has its own length; the cache pads them with zeros to
``model.max_sequence_length`` and keeps the length (in ``TextEmbeddings.pooled``: there is no pooled embedding),
and the transformer gets the matching attention mask. Velocity: ``QwenImageTransformer2DModel(x, timestep=σ, ...)``
is v (the pipeline steps its scheduler with it). Decode: unpack → ``x·std + mean`` per channel → the VAE (a video
VAE run on one frame). The σ schedule is ``sampling.shift``: the pipeline shifts by exp(μ) from the token count.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import (Backbone, EmbeddingCache, TextEmbeddings, decode_video_vae, load_pipeline,
                   padded_tokens)


class QwenImageBackbone(Backbone):
    def __init__(self, transformer: nn.Module, vae, encode, *, resolution: int, cache_size: int = 512):
        self.transformer = transformer
        self.vae = vae
        self.vae_scale = 2 ** len(vae.temperal_downsample)
        if resolution % (self.vae_scale * 2):
            raise ValueError(f"model.resolution={resolution} must be a multiple of {self.vae_scale * 2}")
        self.resolution = resolution
        self.side = resolution // (self.vae_scale * 2)
        self.latent_shape = (self.side * self.side, transformer.config.in_channels)
        self.encode_prompts = EmbeddingCache(encode, cache_size)

    @classmethod
    def from_pretrained(cls, cfg, device) -> "QwenImageBackbone":
        from diffusers import QwenImagePipeline

        pipe = load_pipeline(QwenImagePipeline, cfg, device, ("transformer", "vae", "text_encoder", "tokenizer"),
                             ("text_encoder", "vae"), "QwenImageTransformer2DModel")
        length = cfg.max_sequence_length

        @torch.no_grad()
        def encode(texts):
            tokens, _ = pipe.encode_prompt(list(texts), device=device, max_sequence_length=length)
            return padded_tokens(tokens[0], length)

        backbone = cls(pipe.transformer, pipe.vae, encode, resolution=cfg.resolution, cache_size=cfg.text_cache)
        backbone.keep_from(pipe, ("text_encoder",))
        backbone.image_seq_len = backbone.latent_shape[0]
        return backbone

    def velocity(self, transformer: nn.Module, latents: Tensor, sigma: Tensor, text: TextEmbeddings) -> Tensor:
        dtype = next(transformer.parameters()).dtype if not torch.is_autocast_enabled() else latents.dtype
        batch, length = text.hidden.shape[:2]
        positions = torch.arange(length, device=text.hidden.device)
        mask = (positions[None] < text.pooled[:, :1].to(positions.device)).long()
        return transformer(hidden_states=latents.to(dtype), timestep=sigma, encoder_hidden_states=text.hidden.to(dtype),
                           encoder_hidden_states_mask=mask, img_shapes=[[(1, self.side, self.side)]] * batch,
                           return_dict=False)[0]

    def unpack(self, latents: Tensor) -> Tensor:
        """Packed tokens → the VAE's latents (B, C, 1, H/8, W/8)."""
        from diffusers import QwenImagePipeline

        return QwenImagePipeline._unpack_latents(latents, self.resolution, self.resolution, self.vae_scale)

    def decode(self, latents: Tensor) -> Tensor:
        return decode_video_vae(self.vae, self.unpack(latents))[:, :, 0]  # its VAE is a video VAE: one frame
