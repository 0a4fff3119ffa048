"""FLUX.2 [dev] and [klein] from a local diffusers pipeline directory (``model.kind: flux2``; ``Flux2Pipeline`` or
``Flux2KleinPipeline``, told apart by the directory's ``model_index.json``).

Latents live packed, as the pipeline keeps them: the VAE's latents are patchified 2×2 (C → 4C channels at half the
side) and flattened to (H/16 · W/16, 4C) tokens, with 4-axis position ids (t, h, w, layer). Text: the pipeline's own
``encode_prompt`` — the chat-formatted prompt (with [dev]'s system message) through the text encoder, hidden states
of three layers concatenated per token ([klein]: Qwen3, layers 9, 18, 27; [dev]: Mistral-3 Small, layers 10, 20, 30),
padded to ``model.max_sequence_length`` — cached; text position ids (0, 0, 0, token). Velocity:
``Flux2Transformer2DModel(x, timestep=σ, ...)`` is v itself (the pipeline steps its scheduler with it); the embedded
guidance ``model.flux_guidance`` only for a model with a guidance embedding ([dev] is guidance-distilled: one
forward, no CFG; its pipeline's default is 4.0). Decode: unpack → undo the VAE's batch norm (x·√(var + ε) + mean) →
un-patchify → VAE.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Backbone, EmbeddingCache, TextEmbeddings, load_pipeline

TEXT_LAYERS = {"Flux2KleinPipeline": (9, 18, 27), "Flux2Pipeline": (10, 20, 30)}
"""Per pipeline class: the text encoder's hidden states the transformer conditions on (each pipeline's default)."""


def pipeline_class(path) -> str:
    """``Flux2Pipeline`` or ``Flux2KleinPipeline``, as the directory's model_index.json names it; another family is
    an error naming the classes expected."""
    import json

    from .base import require_pipeline_dir

    root = require_pipeline_dir(path, "FLUX.2", ("transformer", "vae", "text_encoder", "tokenizer"))
    name = json.loads((root / "model_index.json").read_text()).get("_class_name")
    if name not in TEXT_LAYERS:
        raise ValueError(f"model.path={str(path)!r}: cannot load it as a Flux2Pipeline or Flux2KleinPipeline "
                         f"(model.kind=flux2): its model_index.json names _class_name={name!r}")
    return name


class Flux2Backbone(Backbone):
    def __init__(self, transformer: nn.Module, vae, encode, *, resolution: int, guidance: float = 4.0,
                 cache_size: int = 512):
        from diffusers import Flux2KleinPipeline

        self.transformer = transformer
        self.vae = vae
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        if resolution % (self.vae_scale * 2):
            raise ValueError(f"model.resolution={resolution} must be a multiple of {self.vae_scale * 2}")
        self.side = resolution // (self.vae_scale * 2)
        self.latent_shape = (self.side * self.side, transformer.config.in_channels)
        device = next(transformer.parameters()).device
        grid = torch.zeros(1, 1, self.side, self.side)
        self.img_ids = Flux2KleinPipeline._prepare_latent_ids(grid)[0].to(device)
        self.guidance = guidance if transformer.config.guidance_embeds else None
        self._txt_ids = None
        """Text position ids (0, 0, 0, token) for the cached sequence length (the same for every prompt)."""
        self.encode_prompts = EmbeddingCache(encode, cache_size)

    @classmethod
    def from_pretrained(cls, cfg, device) -> "Flux2Backbone":
        import diffusers

        name = pipeline_class(cfg.path)
        pipe = load_pipeline(getattr(diffusers, name), cfg, device, ("transformer", "vae", "text_encoder", "tokenizer"),
                             ("text_encoder", "vae"), "Flux2Transformer2DModel")

        @torch.no_grad()
        def encode(texts):
            hidden, _ = pipe.encode_prompt(list(texts), device=device, max_sequence_length=cfg.max_sequence_length,
                                           text_encoder_out_layers=TEXT_LAYERS[name])
            return hidden, hidden.new_zeros(hidden.shape[0], 1)  # no pooled embedding

        backbone = cls(pipe.transformer, pipe.vae, encode, resolution=cfg.resolution, guidance=cfg.flux_guidance,
                       cache_size=cfg.text_cache)
        backbone.keep_from(pipe, ("text_encoder",))
        backbone.image_seq_len = backbone.latent_shape[0]
        return backbone

    def dynamic_mu(self, steps: int) -> float:
        """FLUX.2's μ depends on the step count too (diffusers' ``compute_empirical_mu``, as both pipelines call)."""
        from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

        return compute_empirical_mu(self.image_seq_len, steps)

    def velocity(self, transformer: nn.Module, latents: Tensor, sigma: Tensor, text: TextEmbeddings) -> Tensor:
        from diffusers import Flux2KleinPipeline

        dtype = next(transformer.parameters()).dtype if not torch.is_autocast_enabled() else latents.dtype
        batch, length = text.hidden.shape[:2]
        if self._txt_ids is None or self._txt_ids.shape[0] != length:  # built once, not per call on the host
            self._txt_ids = Flux2KleinPipeline._prepare_text_ids(text.hidden[:1])[0].to(latents.device)
        txt_ids = self._txt_ids.expand(batch, -1, -1)
        guidance = None if self.guidance is None else torch.full_like(sigma, self.guidance)
        return transformer(hidden_states=latents.to(dtype), timestep=sigma, guidance=guidance,
                           encoder_hidden_states=text.hidden.to(dtype), txt_ids=txt_ids,
                           img_ids=self.img_ids.expand(batch, -1, -1), return_dict=False)[0]

    def unpack(self, latents: Tensor) -> Tensor:
        """Packed tokens → the VAE's latents (B, C, H/8, W/8): un-flatten, undo the batch norm, un-patchify."""
        from diffusers import Flux2KleinPipeline

        x = latents.transpose(1, 2).reshape(latents.shape[0], -1, self.side, self.side).float()
        bn = self.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(x.device, x.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps).to(x.device, x.dtype)
        return Flux2KleinPipeline._unpatchify_latents(x * std + mean)

    def decode(self, latents: Tensor, chunk: int = 8) -> Tensor:
        dtype = next(self.vae.parameters()).dtype
        out = []
        with torch.no_grad():
            for part in latents.split(chunk):
                image = self.vae.decode(self.unpack(part).to(dtype), return_dict=False)[0]
                out.append((image.float() * 0.5 + 0.5).clamp(0, 1))
        return torch.cat(out)
