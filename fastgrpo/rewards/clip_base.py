"""Shared machinery of the CLIP-family scorers (CLIP score, PickScore, HPS-v2.1, LAION aesthetic).

Images go through ``fastgrpo.ops.clip_preprocess`` (on their device, equal to the PIL + ``CLIPImageProcessor`` path)
into transformers' ``CLIPModel``; the geometry and normalisation come from ``preprocessor_config.json`` when the
directory has one (shortest_edge, crop_size, image_mean, image_std), else CLIP's defaults at the model's image size.
Text: the directory's tokenizer, padded to the model's context length (77 for CLIP); each unique prompt of a call
is encoded once (a GRPO batch repeats every prompt G times).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import clip_preprocess
from ..ops.preprocess import CLIP_MEAN, CLIP_STD
from .base import RewardConfigError, RewardModel, read_json, require_dir, require_files

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
CLIP_CONTENTS = ("a transformers CLIPModel saved with save_pretrained: config.json (model_type 'clip'), "
                 "model.safetensors or pytorch_model.bin, the tokenizer files (tokenizer.json or vocab.json + "
                 "merges.txt) and optionally preprocessor_config.json")


@dataclass(frozen=True)
class ClipGeometry:
    """What ``CLIPImageProcessor`` does, as ``clip_preprocess`` arguments."""
    size: int
    crop_size: int
    mean: tuple
    std: tuple


def read_geometry(reward: str, key: str, directory: str, image_size: int) -> ClipGeometry:
    """Preprocessing from ``preprocessor_config.json`` if present, else CLIP's at ``image_size``."""
    file = os.path.join(directory, "preprocessor_config.json")
    if not os.path.isfile(file):
        return ClipGeometry(image_size, image_size, tuple(CLIP_MEAN), tuple(CLIP_STD))
    cfg = read_json(file)

    def side(value, name):
        if isinstance(value, int):
            return value
        if isinstance(value, dict):
            for k in ("shortest_edge", "height"):
                if k in value:
                    return int(value[k])
        raise RewardConfigError(f"{reward}: {file} has an unsupported {name}={value!r} (config key `{key}`)")

    if not cfg.get("do_resize", True) or not cfg.get("do_center_crop", True) or cfg.get("resample", 3) != 3:
        raise RewardConfigError(f"{reward}: {file} asks for preprocessing other than bicubic resize + centre crop "
                                f"(do_resize, do_center_crop, resample=3), which clip_preprocess does not do")
    crop = cfg.get("crop_size", image_size)
    if isinstance(crop, dict) and crop.get("height", 0) != crop.get("width", 0):
        raise RewardConfigError(f"{reward}: {file} has a non-square crop_size {crop}")
    geometry = ClipGeometry(side(cfg.get("size", image_size), "size"), side(crop, "crop_size"),
                            tuple(cfg.get("image_mean", CLIP_MEAN)), tuple(cfg.get("image_std", CLIP_STD)))
    if geometry.crop_size != image_size:
        raise RewardConfigError(f"{reward}: {file} crops {geometry.crop_size}² but the model takes {image_size}²")
    return geometry


def check_clip_config(reward: str, key: str, directory: str) -> None:
    cfg = read_json(os.path.join(directory, "config.json"))
    if cfg.get("model_type") != "clip":
        raise RewardConfigError(f"{reward}: config key `{key}`={directory!r} holds a {cfg.get('model_type')!r} "
                                f"model; it must be {CLIP_CONTENTS}")


def load_clip_model(reward: str, key: str, path) -> "torch.nn.Module":
    """``CLIPModel.from_pretrained`` from a local directory only, in fp32; any missing or mismatched weight is an
    error (transformers would otherwise initialise it randomly and the reward would be noise)."""
    from transformers import CLIPModel

    directory = require_dir(reward, key, path, CLIP_CONTENTS)
    require_files(reward, key, directory, CLIP_CONTENTS, ("config.json",), WEIGHT_FILES)
    check_clip_config(reward, key, directory)
    try:
        model, info = CLIPModel.from_pretrained(directory, local_files_only=True, dtype=torch.float32,
                                                output_loading_info=True)
    except Exception as err:
        raise RewardConfigError(f"{reward}: cannot load a CLIPModel from config key `{key}`={directory!r}: "
                                f"{type(err).__name__}: {err}") from err
    bad = list(info.get("missing_keys", ())) + [str(m) for m in info.get("mismatched_keys", ())]
    if bad:
        raise RewardConfigError(f"{reward}: the weights at config key `{key}`={directory!r} do not match its "
                                f"config.json: missing or mismatched {bad[:10]}{' ...' if len(bad) > 10 else ''}")
    return model.eval().requires_grad_(False)


def load_tokenizer(reward: str, key: str, path):
    from transformers import AutoTokenizer

    directory = require_dir(reward, key, path, CLIP_CONTENTS)
    require_files(reward, key, directory, "the tokenizer files (tokenizer.json or vocab.json + merges.txt)",
                  TOKENIZER_FILES)
    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as err:
        raise RewardConfigError(f"{reward}: cannot load the tokenizer from config key `{key}`={directory!r}: "
                                f"{type(err).__name__}: {err}") from err


class ClipReward(RewardModel):
    """A CLIPModel with on-device preprocessing: normalised image and text embeddings (fp32)."""

    def __init__(self, model, tokenizer, geometry: ClipGeometry, **common):
        super().__init__(**common)
        self.model = model
        self.tokenizer = tokenizer
        self.geometry = geometry
        self.context_length = model.config.text_config.max_position_embeddings

    def preprocess(self, images: Tensor) -> Tensor:
        g = self.geometry
        input_range = "0_1" if images.dtype == torch.uint8 else self.input_range
        return clip_preprocess(images, g.size, g.crop_size, g.mean, g.std, input_range=input_range)

    def image_embeds(self, pixel_values: Tensor) -> Tensor:
        pooled = self.model.vision_model(pixel_values=pixel_values).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    def text_embeds(self, prompts: Sequence[str], device: torch.device) -> Tensor:
        """Normalised text embeddings (B, D), each distinct prompt encoded once, in micro-batches."""
        unique = list(dict.fromkeys(prompts))
        slot = {p: i for i, p in enumerate(unique)}
        parts = []
        for start in range(0, len(unique), self.batch_size):
            tokens = self.tokenizer(unique[start:start + self.batch_size], padding="max_length", truncation=True,
                                    max_length=self.context_length, return_tensors="pt")
            with self.autocast(device):
                pooled = self.model.text_model(input_ids=tokens["input_ids"].to(device),
                                               attention_mask=tokens["attention_mask"].to(device)).pooler_output
                parts.append(F.normalize(self.model.text_projection(pooled).float(), dim=-1))
        index = torch.tensor([slot[p] for p in prompts], device=device)
        return torch.cat(parts).index_select(0, index)

    def encode_prompts(self, prompts: Sequence[str], device: torch.device) -> Optional[Tensor]:
        return self.text_embeds(prompts, device)

    def similarity_to_score(self, cosine: Tensor) -> Tensor:
        """The reward's scale applied to the cosine similarity (B,)."""
        return cosine

    def score_batch(self, images: Tensor, prompt_features: Optional[Tensor]) -> Tensor:
        return self.score_pixels(self.preprocess(images), prompt_features)

    def score_pixels(self, pixel_values: Tensor, text_embeds: Tensor) -> Tensor:
        """Scores of already preprocessed pixels (B, 3, S, S) against normalised text embeddings (B, D)."""
        cosine = (self.image_embeds(pixel_values) * text_embeds.float()).sum(-1)
        return self.similarity_to_score(cosine)
