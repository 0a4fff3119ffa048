"""Backbones: the flow model the trainer drives — its transformer, frozen text encoders (cached), latent codec and
velocity call — behind one interface, so the loop is the same for the embedded world, SD3/SD3.5 and FLUX.

``load_backbone(config.model, device)`` picks by ``model.kind``: ``world`` (the embedded shapes world), ``sd3``
(a local diffusers StableDiffusion3Pipeline directory), ``flux`` (a local FluxPipeline directory), ``flux2`` (a
local Flux2KleinPipeline directory), ``qwenimage`` (a local QwenImagePipeline directory), ``zimage`` (a local ZImagePipeline directory) or ``wan`` (a local WanPipeline
directory: text-to-video).
"""
from __future__ import annotations

from .base import Backbone, TextEmbeddings
from .lora import add_lora, adapters_disabled

KINDS = ("world", "sd3", "flux", "flux2", "qwenimage", "zimage", "wan")


def load_backbone(model_cfg, device) -> Backbone:
    """The backbone ``model_cfg`` (a ``ModelConfig``) names, on ``device``, with LoRA adapters added when
    ``model.lora_rank`` > 0."""
    if model_cfg.kind == "world":
        from .world import WorldBackbone
        backbone = WorldBackbone.load(model_cfg.path, device)
    elif model_cfg.kind == "sd3":
        from .sd3 import Sd3Backbone
        backbone = Sd3Backbone.from_pretrained(model_cfg, device)
    elif model_cfg.kind == "flux":
        from .flux import FluxBackbone
        backbone = FluxBackbone.from_pretrained(model_cfg, device)
    elif model_cfg.kind == "flux2":
        from .flux2 import Flux2Backbone
        backbone = Flux2Backbone.from_pretrained(model_cfg, device)
    elif model_cfg.kind == "qwenimage":
        from .qwenimage import QwenImageBackbone
        backbone = QwenImageBackbone.from_pretrained(model_cfg, device)
    elif model_cfg.kind == "wan":
        from .wan import WanBackbone
        backbone = WanBackbone.from_pretrained(model_cfg, device)
    elif model_cfg.kind == "zimage":
        from .zimage import ZImageBackbone
        backbone = ZImageBackbone.from_pretrained(model_cfg, device)
    else:
        raise ValueError(f"model.kind must be one of {KINDS}, got {model_cfg.kind!r}")
    if model_cfg.lora_rank > 0:
        add_lora(backbone.transformer, model_cfg.lora_rank, model_cfg.lora_alpha or model_cfg.lora_rank,
                 model_cfg.lora_targets)
    return backbone


__all__ = ["Backbone", "KINDS", "TextEmbeddings", "adapters_disabled", "add_lora", "load_backbone"]
