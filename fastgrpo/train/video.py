"""Videos where the loop expects images: a video model's decode gives (B, 3, F, H, W); every frame is scored with its
video's prompt and a video's score is the mean over its frames (what Flow-Factory and DanceGRPO's video rewards do
with image scorers); sample grids show each video as its frames side by side."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def frames(images: Tensor) -> tuple[Tensor, int]:
    """(B·F, 3, H, W) frames, video after video, and F (1 for images, returned as they are)."""
    if images.dim() == 4:
        return images, 1
    if images.dim() != 5:
        raise ValueError(f"decoded samples must be (B, 3, H, W) images or (B, 3, F, H, W) videos, got "
                         f"{tuple(images.shape)}")
    return images.transpose(1, 2).flatten(0, 1), images.shape[2]


def per_video(score: Callable, images: Tensor, prompts):
    """``score(images, prompts)`` of images; of a video, each frame's with the video's prompt, averaged per video.
    The result keeps ``score``'s form: a tensor (B,) or (B, K), or a dict of (B,) tensors."""
    flat, count = frames(images)
    if count == 1:
        return score(images, prompts)
    out = score(flat, prompts.repeat(count))

    def mean(values: Tensor) -> Tensor:
        return values.reshape(-1, count, *values.shape[1:]).mean(1)

    return {k: mean(v) for k, v in out.items()} if isinstance(out, dict) else mean(out)


def preview(images: Tensor) -> Tensor:
    """What a sample grid shows: an image, or a video's frames side by side (B, 3, H, F·W)."""
    if images.dim() == 4:
        return images
    return torch.cat(list(images.unbind(2)), dim=-1)
