"""The embedded world's models, built from configs in code with real diffusers/transformers classes, so the code
path is the one a user's SD3.5 takes: a word-level tokenizer, a tiny ``CLIPTextModelWithProjection``, a tiny
``SD3Transformer2DModel`` (2.3M parameters), and a pixel-unshuffle latent codec behind a VAE-like interface.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import shapes

MAX_TOKENS = 8
SPECIAL = ("[PAD]", "[UNK]")


def vocabulary() -> list[str]:
    words = ["a", "at", "the", *shapes.COLOURS, *shapes.SHAPES, *shapes.POSITIONS]
    return list(SPECIAL) + words


def build_tokenizer():
    """A word-level tokenizer made in memory (no files, no download), wrapped for transformers."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                   model_max_length=MAX_TOKENS)


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(vocabulary()), hidden_size=64, intermediate_size=128,
                            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=MAX_TOKENS,
                            projection_dim=64, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    return CLIPTextModelWithProjection(config)


def build_transformer():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=12, num_layers=4, attention_head_dim=32,
                                 num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=128,
                                 pooled_projection_dim=64, out_channels=12, pos_embed_max_size=16)


class PixelCodec:
    """Latent codec with a diffusers-VAE-like interface: 3×32×32 images in [0, 1] ↔ 12×16×16 latents in [−1, 1]
    by pixel (un)shuffling — lossless, so rewards see exactly what the flow model made."""

    latent_shape = (12, 16, 16)

    def encode(self, images: Tensor) -> Tensor:
        return F.pixel_unshuffle(images * 2.0 - 1.0, 2)

    def decode(self, latents: Tensor) -> Tensor:
        return (F.pixel_shuffle(latents.float(), 2) + 1.0) / 2.0


@dataclass
class TextEmbeddings:
    hidden: Tensor
    """(B, L, 64) per-token states (the transformer's ``encoder_hidden_states``)."""
    pooled: Tensor
    """(B, 64) pooled projection (the transformer's ``pooled_projections``)."""


class PromptEncoder:
    """Tokenizer + frozen text encoder with a cache: each distinct prompt is encoded once (the text-embedding cache
    that keeps memory and time off the training loop)."""

    def __init__(self, tokenizer, text_encoder, device: torch.device | str = "cpu"):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> TextEmbeddings:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            tokens = self.tokenizer(missing, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                                    return_tensors="pt").to(self.device)
            out = self.text_encoder(**tokens)
            for i, p in enumerate(missing):
                self._cache[p] = (out.last_hidden_state[i], out.text_embeds[i])
        hidden = torch.stack([self._cache[p][0] for p in prompts])
        pooled = torch.stack([self._cache[p][1] for p in prompts])
        return TextEmbeddings(hidden, pooled)
