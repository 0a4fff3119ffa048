"""HPS-v2.1 (Wu et al. 2023, arXiv:2306.09341): an open_clip ViT-H-14 fine-tuned on human preferences.

score = cos(image, prompt), as HPS computes ``image_features @ text_features.T`` on normalised features
(≈ 0.25–0.35 for generated images; MixGRPO's tables use this scale). The checkpoint is open_clip's, loaded into
transformers' ``CLIPModel`` through ``open_clip_to_hf`` so neither open_clip nor torchvision is needed.
``path``: a directory with config.json (the ViT-H-14 ``CLIPConfig``, e.g. from
laion/CLIP-ViT-H-14-laion2B-s32B-b79K, whose weights are not needed), the tokenizer files, optionally
preprocessor_config.json, and the HPS checkpoint ``checkpoint`` (default HPS_v2.1_compressed.pt; .pt/.pth or
.safetensors). open_clip's validation transform is a bicubic resize of the shorter side + centre crop to 224 with
OpenAI's mean/std, which is what the op does.
"""
from __future__ import annotations

import os

from .base import RewardConfigError, load_state_dict_file, require_dir, require_files
from .clip_base import ClipReward, TOKENIZER_FILES, check_clip_config, load_tokenizer, read_geometry
from .open_clip_map import clip_model_from_open_clip
from .registry import register

HPS_CONTENTS = ("config.json (the open_clip ViT-H-14 architecture as a transformers CLIPConfig), the tokenizer "
                "files (tokenizer.json or vocab.json + merges.txt) and the HPS checkpoint named by `checkpoint`")


@register("hpsv2")
class HPSv2(ClipReward):
    name = "hpsv2"

    def __init__(self, path=None, *, checkpoint: str = "HPS_v2.1_compressed.pt", **common):
        from transformers import CLIPConfig

        directory = require_dir(self.name, "path", path, HPS_CONTENTS)
        require_files(self.name, "path", directory, HPS_CONTENTS, ("config.json",), TOKENIZER_FILES, (checkpoint,))
        check_clip_config(self.name, "path", directory)
        config = CLIPConfig.from_pretrained(directory, local_files_only=True)
        state = load_state_dict_file(self.name, "checkpoint", os.path.join(directory, checkpoint))
        try:
            model = clip_model_from_open_clip(state, config)
        except ValueError as err:
            raise RewardConfigError(f"{self.name}: the checkpoint {checkpoint!r} in config key `path`={directory!r} "
                                    f"does not fit its config.json: {err}") from err
        geometry = read_geometry(self.name, "path", directory, config.vision_config.image_size)
        super().__init__(model, load_tokenizer(self.name, "path", directory), geometry, **common)
