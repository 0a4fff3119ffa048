"""PickScore (Kirstain et al. 2023, arXiv:2305.01569): a CLIP ViT-H-14 fine-tuned on Pick-a-Pic preferences.

score = exp(logit_scale)·cos(image, prompt) / ``divisor``. The raw PickScore (divisor 1) is ≈ 18–24; Flow-GRPO's
``PickScoreScorer`` divides by 26 ("norm to 0-1"), the default here; MixGRPO's tables report raw/100.
``path``: the PickScore_v1 model directory (config.json + weights); ``processor_path``: the tokenizer and
preprocessor_config.json, which PickScore takes from laion/CLIP-ViT-H-14-laion2B-s32B-b79K (default: ``path``).
"""
from __future__ import annotations

from torch import Tensor

from .clip_base import ClipReward, load_clip_model, load_tokenizer, read_geometry
from .registry import register


@register("pickscore")
class PickScore(ClipReward):
    name = "pickscore"

    def __init__(self, path=None, *, processor_path=None, divisor: float = 26.0, **common):
        if not divisor > 0:
            raise ValueError(f"pickscore: divisor must be positive, got {divisor!r}")
        model = load_clip_model(self.name, "path", path)
        key, source = ("processor_path", processor_path) if processor_path is not None else ("path", path)
        geometry = read_geometry(self.name, key, source, model.config.vision_config.image_size)
        super().__init__(model, load_tokenizer(self.name, key, source), geometry, **common)
        self.divisor = float(divisor)

    def similarity_to_score(self, cosine: Tensor) -> Tensor:
        return cosine * self.model.logit_scale.float().exp() / self.divisor
