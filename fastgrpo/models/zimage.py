"""Z-Image from a local diffusers pipeline directory (``model.kind: zimage``; ``ZImagePipeline``).

Text: the pipeline's own ``encode_prompt`` — Qwen3's second-to-last hidden states of the chat-formatted prompt,
padding dropped, so each prompt has its own length. The cache keeps them padded to ``model.max_sequence_length``
with the length beside them (in ``TextEmbeddings.pooled``: Z-Image has no pooled embedding), and the velocity call
hands the transformer each prompt's own tokens, as the pipeline does. Velocity: Z-Image's transformer takes the time
as 1 − σ and predicts −v (the pipeline steps the scheduler with its negated output), so
``v = −ZImageTransformer2DModel([x_i], 1 − σ, [text_i])``. Latents: (C, H/8, W/8); decode:
``x / scaling_factor + shift_factor`` through the VAE. The σ schedule is ``sampling.shift``: the pipeline shifts by
exp(μ) with μ from the image's token count (its scheduler's base/max shift), as FLUX does.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import (Backbone, EmbeddingCache, TextEmbeddings, decode_vae, load_pipeline,
                   padded_tokens)


class ZImageBackbone(Backbone):
    def __init__(self, transformer: nn.Module, vae, encode, *, resolution: int, cache_size: int = 512):
        self.transformer = transformer
        self.vae = vae
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        patch = transformer.config.all_patch_size[0]
        if resolution % (factor * patch):
            raise ValueError(f"model.resolution={resolution} must be a multiple of {factor * patch} for this VAE and "
                             "patch size")
        self.latent_shape = (transformer.config.in_channels, resolution // factor, resolution // factor)
        self.encode_prompts = EmbeddingCache(encode, cache_size)

    @classmethod
    def from_pretrained(cls, cfg, device) -> "ZImageBackbone":
        from diffusers import ZImagePipeline

        pipe = load_pipeline(ZImagePipeline, cfg, device, ("transformer", "vae", "text_encoder", "tokenizer"),
                             ("text_encoder", "vae"), "ZImageTransformer2DModel")
        length = cfg.max_sequence_length

        @torch.no_grad()
        def encode(texts):
            (tokens,), _ = pipe.encode_prompt(list(texts), device=device, do_classifier_free_guidance=False,
                                              max_sequence_length=length)
            return padded_tokens(tokens, length)

        backbone = cls(pipe.transformer, pipe.vae, encode, resolution=cfg.resolution, cache_size=cfg.text_cache)
        backbone.keep_from(pipe, ("text_encoder",))
        backbone.image_seq_len = (backbone.latent_shape[1] // 2) * (backbone.latent_shape[2] // 2)
        return backbone

    def velocity(self, transformer: nn.Module, latents: Tensor, sigma: Tensor, text: TextEmbeddings) -> Tensor:
        dtype = next(transformer.parameters()).dtype if not torch.is_autocast_enabled() else latents.dtype
        lengths = text.pooled[:, 0].long().tolist()
        captions = [text.hidden[i, :n].to(dtype) for i, n in enumerate(lengths)]
        images = list(latents.to(dtype).unsqueeze(2).unbind(0))
        out = transformer(images, 1.0 - sigma, captions, return_dict=False)[0]
        return -torch.stack(out).squeeze(2)

    def decode(self, latents: Tensor) -> Tensor:
        return decode_vae(self.vae, latents)
