"""LAION aesthetic score (the improved aesthetic predictor, "sac+logos+ava1-l14-linearMSE"), as DDPO/Flow-GRPO use it.

score = MLP(e / ‖e‖), e = the CLIP ViT-L/14 image embedding (``visual_projection`` output, 768-d). The MLP:
Linear(768, 1024) → Dropout(0.2) → Linear(1024, 128) → Dropout(0.2) → Linear(128, 64) → Dropout(0.1) →
Linear(64, 16) → Linear(16, 1), no activations; dropout is inactive at eval. Output on the AVA scale, ≈ 1–10
(generated images ≈ 5–6.5).
``path``: the CLIP ViT-L/14 directory (openai/clip-vit-large-patch14; its text tower is loaded but unused);
``head_path``: the MLP weights (.pth/.pt or .safetensors; keys ``layers.{0,2,4,6,7}.{weight,bias}``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .base import RewardConfigError, load_state_dict_file, require_file
from .clip_base import ClipReward, load_clip_model, read_geometry
from .registry import register


class AestheticHead(nn.Module):
    """The LAION improved-aesthetic-predictor head (indices match its state-dict keys)."""

    def __init__(self, embed_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embed_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, embeds: Tensor) -> Tensor:
        return self.layers(embeds).squeeze(-1)


@register("aesthetic")
class Aesthetic(ClipReward):
    name = "aesthetic"
    needs_prompts = False

    def __init__(self, path=None, *, head_path=None, **common):
        head_file = require_file(self.name, "head_path", head_path,
                                 "the LAION aesthetic MLP weights (.pth/.pt or .safetensors)")
        model = load_clip_model(self.name, "path", path)
        geometry = read_geometry(self.name, "path", path, model.config.vision_config.image_size)
        super().__init__(model, None, geometry, **common)
        self.head = AestheticHead(model.config.projection_dim)
        state = load_state_dict_file(self.name, "head_path", head_file)
        try:
            self.head.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        except RuntimeError as err:
            raise RewardConfigError(f"{self.name}: config key `head_path`={head_file!r} is not a LAION aesthetic "
                                    f"head for {model.config.projection_dim}-d CLIP embeddings: {err}") from err
        self.head.eval().requires_grad_(False)

    def score_batch(self, images: Tensor, prompt_features: Optional[Tensor]) -> Tensor:
        embeds = self.image_embeds(self.preprocess(images))
        with torch.autocast(embeds.device.type, enabled=False):  # a tiny MLP: keep it fp32
            return self.head(embeds)
