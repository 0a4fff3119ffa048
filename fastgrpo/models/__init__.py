"""Backbones: the flow model the trainer drives — its transformer, frozen text encoders (cached), latent codec and
velocity call — behind one interface, so the loop is the same for every model.

``load_backbone(config.model, device)`` picks by ``model.kind``: ``world`` (the embedded shapes world), ``sd3``
(a local diffusers StableDiffusion3Pipeline directory), ``flux`` (FluxPipeline), ``flux2`` (Flux2KleinPipeline or Flux2Pipeline),
``qwenimage`` (QwenImagePipeline), ``zimage`` (ZImagePipeline) or ``wan`` (WanPipeline: text-to-video).
"""
from __future__ import annotations

import importlib

from .base import Backbone, TextEmbeddings
from .lora import add_lora, adapters_disabled

BACKBONES = {"world": ("world", "WorldBackbone"), "sd3": ("sd3", "Sd3Backbone"), "flux": ("flux", "FluxBackbone"),
             "flux2": ("flux2", "Flux2Backbone"), "qwenimage": ("qwenimage", "QwenImageBackbone"),
             "zimage": ("zimage", "ZImageBackbone"), "wan": ("wan", "WanBackbone")}
"""``model.kind`` → (module, class): imported when chosen (each pulls in its diffusers pipeline)."""
KINDS = tuple(BACKBONES)


def load_backbone(model_cfg, device) -> Backbone:
    """The backbone ``model_cfg`` (a ``ModelConfig``) names, on ``device``, with LoRA adapters added when
    ``model.lora_rank`` > 0."""
    if model_cfg.kind not in BACKBONES:
        raise ValueError(f"model.kind must be one of {KINDS}, got {model_cfg.kind!r}")
    module, name = BACKBONES[model_cfg.kind]
    cls = getattr(importlib.import_module(f".{module}", __name__), name)
    backbone = cls.load(model_cfg.path, device) if model_cfg.kind == "world" else cls.from_pretrained(model_cfg, device)
    if model_cfg.lora_rank > 0:
        add_lora(backbone.transformer, model_cfg.lora_rank, model_cfg.lora_alpha or model_cfg.lora_rank,
                 model_cfg.lora_targets)
    return backbone


__all__ = ["Backbone", "KINDS", "TextEmbeddings", "adapters_disabled", "add_lora", "load_backbone"]
