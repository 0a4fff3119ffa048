"""The scorer interface: ``scorer(images, prompts) -> Tensor (B,)`` on the images' device.

images: (B, 3, H, W) float in [0, 1] (``input_range="0_1"``) or [-1, 1] (``"-1_1"``, a VAE decode), or uint8;
scored in micro-batches of ``batch_size`` on the scorer's device (``scorer.to(device)``), under bf16/fp16 autocast
on CUDA (``precision``; CPU runs fp32), without gradients. Scores are float32.
"""
from __future__ import annotations

import json
import os
from contextlib import nullcontext
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

INPUT_RANGES = ("0_1", "-1_1")
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


class RewardConfigError(ValueError):
    """A reward's config is missing, points nowhere, or names weights that do not fit: the message names the key."""


class RewardModel(nn.Module):
    """Base of the scorers. Subclasses set ``name`` and implement ``score_batch`` (and ``encode_prompts`` when
    the score depends on the prompt: it runs once per call over the unique prompts, not per micro-batch)."""

    name = "reward"
    needs_prompts = True

    def __init__(self, *, batch_size: int = 32, input_range: str = "0_1", precision: str = "bf16"):
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{self.name}: batch_size must be an int >= 1, got {batch_size!r}")
        if input_range not in INPUT_RANGES:
            raise ValueError(f"{self.name}: input_range must be one of {INPUT_RANGES}, got {input_range!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"{self.name}: precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
        self.batch_size = batch_size
        self.input_range = input_range
        self.precision = precision

    @property
    def device(self) -> torch.device:
        param = next(self.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def autocast(self, device: torch.device):
        dtype = PRECISIONS[self.precision]
        if dtype is None or device.type != "cuda":
            return nullcontext()
        return torch.autocast("cuda", dtype=dtype)

    def encode_prompts(self, prompts: Sequence[str], device: torch.device) -> Optional[Tensor]:
        """Per-sample prompt features (B, ...) for ``score_batch``, or None when the score ignores prompts."""
        return None

    def score_batch(self, images: Tensor, prompt_features: Optional[Tensor]) -> Tensor:
        raise NotImplementedError

    def _check(self, images, prompts) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"{self.name}: images must be a (B, 3, H, W) tensor, got {shape}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"{self.name}: images must be floating point or uint8, got {images.dtype}")
        if self.needs_prompts:
            if prompts is None or isinstance(prompts, str) or len(prompts) != images.shape[0]:
                got = "none" if prompts is None else ("a str" if isinstance(prompts, str) else len(prompts))
                raise ValueError(f"{self.name}: needs one prompt per image ({images.shape[0]}), got {got}")

    def forward(self, images: Tensor, prompts: Optional[Sequence[str]] = None) -> Tensor:
        self._check(images, prompts)
        device = self.device
        with torch.no_grad():
            features = self.encode_prompts(list(prompts), device) if self.needs_prompts else None
            scores = []
            for start in range(0, images.shape[0], self.batch_size):
                chunk = images[start:start + self.batch_size].to(device, non_blocking=True)
                feats = None if features is None else features[start:start + self.batch_size]
                with self.autocast(device):
                    scores.append(self.score_batch(chunk, feats).float().reshape(-1))
        if not scores:
            return torch.empty(0, dtype=torch.float32, device=images.device)
        return torch.cat(scores).to(images.device)

    def extra_repr(self) -> str:
        return f"batch_size={self.batch_size}, input_range={self.input_range!r}, precision={self.precision!r}"


def require_dir(reward: str, key: str, path, contents: str) -> str:
    """The directory ``path`` from config key ``key``, or RewardConfigError saying what it must contain."""
    if path is None:
        raise RewardConfigError(f"{reward}: config key `{key}` is required: a local directory with {contents} "
                                "(weights are never downloaded)")
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise RewardConfigError(f"{reward}: config key `{key}`={path!r} is not a local directory; it must be one "
                                f"with {contents} (weights are never downloaded)")
    return path


def require_file(reward: str, key: str, path, contents: str) -> str:
    if path is None:
        raise RewardConfigError(f"{reward}: config key `{key}` is required: a local file with {contents}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise RewardConfigError(f"{reward}: config key `{key}`={path!r} is not a file; it must be {contents}")
    return path


def require_files(reward: str, key: str, path: str, contents: str, *alternatives: Sequence[str]) -> None:
    """Raise unless ``path`` holds, for each entry of ``alternatives``, at least one of its file names."""
    for names in alternatives:
        if not any(os.path.isfile(os.path.join(path, n)) for n in names):
            raise RewardConfigError(f"{reward}: config key `{key}`={path!r} has none of {list(names)}; the directory "
                                    f"must contain {contents}")


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_state_dict_file(reward: str, key: str, path: str) -> dict:
    """A state dict from .safetensors, or .pt/.pth/.bin read with ``weights_only=True`` (unwraps ``state_dict``)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file: say which key pointed at it
        raise RewardConfigError(f"{reward}: cannot read the weights at config key `{key}`={path!r}: "
                                f"{type(err).__name__}: {err}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise RewardConfigError(f"{reward}: config key `{key}`={path!r} does not hold a state dict of tensors")
    return state
