"""Reference CLIP preprocessing: what ``CLIPImageProcessor`` does with PIL, as two matrix products.

The anchors' reward path turns each image into uint8, then a PIL image, and runs ``CLIPImageProcessor``:
resize the shorter side to ``size`` with ``Image.resize(..., BICUBIC)``, centre-crop ``crop_size``, rescale by 1/255
and normalise with the CLIP mean and std. PIL's resize (Pillow's ``Resample.c``), per axis:

    scale = in/out, filterscale = max(scale, 1), support = 2·filterscale            (antialias when downscaling)
    output o: centre = (o + ½)·scale, taps x ∈ [int(centre − support + ½), int(centre + support + ½)) ∩ [0, in)
    w(x) = K((x − centre + ½)/filterscale) / Σ K,  K the bicubic kernel with a = −0.5
    K(t) = (a+2)|t|³ − (a+3)|t|² + 1 for |t| < 1;  a|t|³ − 5a|t|² + 8a|t| − 4a for 1 ≤ |t| < 2;  0 beyond.

For 8-bit images the weights are fixed point, k = round(w·2²²) (half away from zero), and each pass writes uint8:
    h = clip(⌊(2²¹ + Σ k·p) / 2²²⌋, 0, 255)
first along rows (horizontal), then along columns of the horizontal result (vertical). The round and clip between
the passes matter: bicubic overshoots, and a one-pass resize lands up to 9 levels away on high-frequency images.
Pass order: Pillow ≤ 12 always runs horizontal first. Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass
first when out_h < in_h and in_h − out_h > 2·(in_w − out_w) (found by probing 2,863 shapes); for a shorter-side
resize that means portraits taller than about 2:1. Because of the clipping between the passes the order matters:
on noise or a 3-pixel checkerboard the two orders end up to ~20 levels apart. Every path here runs horizontal
first (the anchors' Pillow), so on those portraits it matches Pillow ≤ 12, not Pillow 13.

Here the per-axis weights are matrices (outputs × inputs) and each pass is a matmul. With ``quantize`` the fixed
point sums run in float64, where the integer products and sums are exact, so the result is PIL's bit for bit;
without it, the weights are float32 and nothing is rounded (a linear resize of the clamped image). Only the outputs
inside the centre crop are computed, from the input window they read. This module also builds the weight tables
the C++ and CUDA kernels take (``resize_table``) and the output geometry (``plan``): one source for every path.
On CPU this function and the kernels agree bit for bit; on CUDA torch divides by the scalar 255 through its
reciprocal, so there the normalised values can differ from the CUDA kernel's in the last bit (the levels agree).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch
from torch import Tensor

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INPUT_RANGES = ("0_1", "-1_1")
PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images: 32 − 8 − 2
BICUBIC_A = -0.5
BICUBIC_SUPPORT = 2.0


def bicubic(t: float) -> float:
    """Keys' cubic convolution kernel with a = −0.5, in Pillow's evaluation order (same double rounding)."""
    a = BICUBIC_A
    t = abs(t)
    if t < 1.0:
        return ((a + 2.0) * t - (a + 3.0)) * t * t + 1
    if t < 2.0:
        return (((t - 5) * t + 8) * t - 4) * a
    return 0.0


def _to_fixed(w: float) -> int:
    # C's (int) truncates toward zero, as Python's int() does
    return int(w * (1 << PRECISION_BITS) + (0.5 if w >= 0 else -0.5))


@lru_cache(maxsize=None)
def _pil_coefficients(in_size: int, out_size: int) -> tuple[tuple[int, ...], tuple[tuple[float, ...], ...]]:
    """Pillow's ``precompute_coeffs`` for the whole axis: first tap and normalised weights of each output."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = BICUBIC_SUPPORT * filterscale
    inv = 1.0 / filterscale
    starts, weights = [], []
    for o in range(out_size):
        centre = (o + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)
        count = min(int(centre + support + 0.5), in_size) - first
        taps = [bicubic((x + first - centre + 0.5) * inv) for x in range(count)]
        total = 0.0
        for w in taps:  # in order: Python's sum() of floats is compensated (3.12+), C's loop is not
            total += w
        if total != 0.0:
            taps = [w / total for w in taps]
        starts.append(first)
        weights.append(tuple(taps))
    return tuple(starts), tuple(weights)


@dataclass(frozen=True)
class ResizeTable:
    """Weights of the outputs ``[offset, offset + len(start))`` of one axis resized ``in_size → out_size``.

    ``start[o]`` is output o's first input index relative to the window ``[lo, hi)`` that the outputs read;
    ``weight[o][k]`` multiplies input ``lo + start[o] + k`` for k < ``count[o]``."""
    in_size: int
    out_size: int
    lo: int
    hi: int
    start: tuple[int, ...]
    count: tuple[int, ...]
    weight: tuple[tuple[float, ...], ...]

    @property
    def n_out(self) -> int:
        return len(self.start)

    @property
    def ksize(self) -> int:
        return max(self.count)

    def matrix(self, fixed: bool, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        """(outputs, hi − lo): the pass as a matrix; ``fixed``: Pillow's integer weights (units of 2⁻²²)."""
        m = torch.zeros(self.n_out, self.hi - self.lo, dtype=torch.float64)
        for o, (s, ws) in enumerate(zip(self.start, self.weight)):
            m[o, s:s + len(ws)] = torch.tensor([_to_fixed(w) for w in ws] if fixed else ws, dtype=torch.float64)
        return m.to(dtype=dtype, device=device)

    def tensors(self, fixed: bool, device=None, taps_major: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """``start`` and ``count`` (int32, (outputs,)) and the weights (outputs, ksize), zero-padded: int32 fixed
        point or float32. ``taps_major``: the same values stored tap-major (strides (1, outputs)), so that
        neighbouring outputs' weights for one tap are adjacent (coalesced loads on a GPU)."""
        k = self.ksize
        rows = [[_to_fixed(w) for w in ws] if fixed else list(ws) for ws in self.weight]
        weight = torch.tensor([r + [0] * (k - len(r)) for r in rows],
                              dtype=torch.int32 if fixed else torch.float32)
        if taps_major:
            weight = weight.t().contiguous().t()
        as_int = dict(dtype=torch.int32, device=device)
        return torch.tensor(self.start, **as_int), torch.tensor(self.count, **as_int), weight.to(device)


@lru_cache(maxsize=None)
def resize_table(in_size: int, out_size: int, offset: int = 0, length: int | None = None) -> ResizeTable:
    """Pillow's bicubic weights for ``in_size → out_size``, outputs ``[offset, offset + length)`` only."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize sizes must be >= 1, got {in_size} -> {out_size}")
    length = out_size - offset if length is None else length
    if not (0 <= offset and 1 <= length and offset + length <= out_size):
        raise ValueError(f"outputs [{offset}, {offset + length}) are not within 0..{out_size}")
    starts, weights = _pil_coefficients(in_size, out_size)
    starts, weights = starts[offset:offset + length], weights[offset:offset + length]
    lo = min(starts)
    hi = max(s + len(w) for s, w in zip(starts, weights))
    return ResizeTable(in_size, out_size, lo, hi, tuple(s - lo for s in starts), tuple(len(w) for w in weights),
                       weights)


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Shorter side → ``size``, longer side → int(size·long/short) (transformers' ``get_resize_output_image_size``
    with ``default_to_square=False``)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


@lru_cache(maxsize=None)
def plan(height: int, width: int, size: int, crop_size: int) -> tuple[ResizeTable, ResizeTable]:
    """The (rows, cols) tables of the centre crop: resize to ``resized_size``, then keep ``crop_size`` rows and
    columns from offsets ⌊(resized − crop)/2⌋ (transformers' ``center_crop``)."""
    new_h, new_w = resized_size(height, width, size)
    top, left = (new_h - crop_size) // 2, (new_w - crop_size) // 2
    return resize_table(height, new_h, top, crop_size), resize_table(width, new_w, left, crop_size)


def to_levels(images: Tensor, input_range: str, quantize: bool) -> Tensor:
    """Pixels → float32 in the 0..255 scale: u = x (``"0_1"``) or (x + 1)/2 (``"-1_1"``), NaN → 0, clamp to
    [0, 1], ×255, and with ``quantize`` rounded half to even — the uint8 that ``(x*255).round()`` gives the PIL
    path. uint8 images are levels already."""
    if images.dtype == torch.uint8:
        return images.float()
    x = images.float()
    if input_range == "-1_1":
        x = (x + 1) / 2
    x = torch.where(torch.isnan(x), 0.0, x).clamp(0, 1) * 255
    return torch.round(x) if quantize else x


def _shift_round(acc: Tensor) -> Tensor:
    """Pillow's ``clip8((2²¹ + Σ k·p) >> 22)`` on exact float64 integer sums."""
    half = float(1 << (PRECISION_BITS - 1))
    return torch.floor((acc + half) / (1 << PRECISION_BITS)).clamp(0, 255)


def clip_preprocess(images: Tensor, size: int = 224, crop_size: int = 224, mean: Sequence[float] = CLIP_MEAN,
                    std: Sequence[float] = CLIP_STD, input_range: str = "0_1", quantize: bool = True,
                    out_dtype: torch.dtype = torch.float32, channels_last: bool = False,
                    check: bool = True) -> Tensor:
    """(B, 3, H, W) → (B, 3, crop_size, crop_size): levels → horizontal pass → vertical pass → (v/255 − mean)/std.

    Arguments as ``fastgrpo.ops.clip_preprocess`` (which validates them); ``check`` raises on NaN pixels that the
    resize reads, else they count as 0."""
    H, W = images.shape[-2:]
    rows, cols = plan(H, W, size, crop_size)
    window = images[:, :, rows.lo:rows.hi, cols.lo:cols.hi]
    if check and window.is_floating_point() and bool(torch.isnan(window).any()):
        raise ValueError("images contain NaN pixels")
    levels = to_levels(window, input_range, quantize)
    dev = images.device
    if quantize:
        horizontal = _shift_round(levels.double() @ cols.matrix(True, device=dev).T)  # (B, 3, rows, crop)
        v = _shift_round(rows.matrix(True, device=dev) @ horizontal).float()
    else:
        horizontal = levels @ cols.matrix(False, torch.float32, dev).T
        v = rows.matrix(False, torch.float32, dev) @ horizontal
    m = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    out = ((v / 255 - m) / s).to(out_dtype)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out.contiguous()
