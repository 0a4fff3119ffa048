"""JPEG (in)compressibility (DDPO, arXiv:2305.13301; Flow-GRPO reuses it): the image's JPEG size.

size = bytes of the image encoded by Pillow at quality 95 (uint8 = round(255·u) as the anchors do), in kB
(bytes/1000). ``jpeg_incompressibility`` = size; ``jpeg_compressibility`` = −size/``divisor`` (divisor 1 as in
DDPO; Flow-GRPO uses 500). The encoder runs on the CPU (one thread per image); scores return to the images' device.
"""
from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import torch
from torch import Tensor

from .base import RewardModel
from .registry import register


def jpeg_kilobytes(images: Tensor, input_range: str = "0_1", quality: int = 95) -> Tensor:
    """JPEG sizes in kB (float32, on the CPU) of (B, 3, H, W) images."""
    from PIL import Image

    if images.dtype != torch.uint8:
        u = (images.float() + 1) / 2 if input_range == "-1_1" else images.float()
        images = (u * 255).round().clamp(0, 255).to(torch.uint8)
    arrays = images.permute(0, 2, 3, 1).contiguous().cpu().numpy()

    def size(array) -> float:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        return buffer.tell() / 1000

    if len(arrays) == 0:
        return torch.empty(0)
    with ThreadPoolExecutor(min(len(arrays), os.cpu_count() or 1)) as pool:  # Pillow's encoder releases the GIL
        return torch.tensor(list(pool.map(size, arrays)), dtype=torch.float32)


@register("jpeg_incompressibility")
class JpegIncompressibility(RewardModel):
    name = "jpeg_incompressibility"
    needs_prompts = False
    sign = 1.0

    def __init__(self, *, divisor: float = 1.0, **common):
        super().__init__(**common)
        if not divisor > 0:
            raise ValueError(f"{self.name}: divisor must be positive, got {divisor!r}")
        self.divisor = float(divisor)

    def score_batch(self, images: Tensor, prompt_features: Optional[Tensor]) -> Tensor:
        return self.sign * jpeg_kilobytes(images, self.input_range) / self.divisor


@register("jpeg_compressibility")
class JpegCompressibility(JpegIncompressibility):
    name = "jpeg_compressibility"
    sign = -1.0
