"""CLIP score: cosine similarity of the image and prompt embeddings of a CLIP model (e.g. openai/clip-vit-large-patch14).

``scale="cosine"`` (default): cos ∈ [−1, 1] (≈ 0.2–0.4 for matching pairs; G²RPO reports this scale).
``scale="flow_grpo"``: Flow-GRPO's ``ClipScorer``, logits_per_image / 30 = exp(logit_scale)·cos/30 (= cos·100/30
for OpenAI CLIP). Flow-GRPO resizes with torchvision on tensors; here the PIL-exact op runs instead.
"""
from __future__ import annotations

from torch import Tensor

from .clip_base import ClipReward, load_clip_model, load_tokenizer, read_geometry
from .registry import register

SCALES = ("cosine", "flow_grpo")


@register("clip_score")
class ClipScore(ClipReward):
    name = "clip_score"

    def __init__(self, path=None, *, scale: str = "cosine", **common):
        if scale not in SCALES:
            raise ValueError(f"clip_score: scale must be one of {SCALES}, got {scale!r}")
        model = load_clip_model(self.name, "path", path)
        geometry = read_geometry(self.name, "path", path, model.config.vision_config.image_size)
        super().__init__(model, load_tokenizer(self.name, "path", path), geometry, **common)
        self.scale = scale

    def similarity_to_score(self, cosine: Tensor) -> Tensor:
        if self.scale == "flow_grpo":
            return cosine * self.model.logit_scale.float().exp() / 30.0
        return cosine
