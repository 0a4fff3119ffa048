"""``clip_preprocess``: CLIP-style image preprocessing on the images' device, equal to the anchors' PIL path.

The anchors score images by copying them to the CPU as uint8, making PIL images and running ``CLIPImageProcessor``
(resize the shorter side with PIL's bicubic, centre crop, normalise). This op does the same arithmetic where the
images are: Pillow's antialiased bicubic as two separable passes with its fixed-point weights and the round and
clip to uint8 between them, so with ``quantize`` (the default) the result equals the PIL path's bit for bit.
Math and geometry: ``fastgrpo.reference.preprocess`` (also the PyTorch fallback and the test oracle).

Paths (``preprocess_backend``): ``"cuda"`` and ``"cpp"``, the kernels of the extension ``fastgrpo._C`` (``csrc/``,
built by ``pip install`` where a compiler is found), and ``"torch"``, the reference, when the extension is missing
or ``FASTGRPO_BACKEND=torch``. The first call on each path logs it once (logger ``fastgrpo``).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
from torch import Tensor

from .._backend import _announced, logger, requested_backend
from ..reference import preprocess as reference
from ..reference.preprocess import CLIP_MEAN, CLIP_STD, INPUT_RANGES, plan

__all__ = ["CLIP_MEAN", "CLIP_STD", "clip_preprocess", "preprocess_backend"]

PATHS = ("auto", "cuda", "cpp", "torch")
_IMAGE_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)
_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MODES = {"levels": 0, "0_1": 1, "-1_1": 2}  # csrc/preprocess.h: FG_LEVELS, FG_RANGE_0_1, FG_RANGE_M1_1

try:
    from .. import _C
    _EXTENSION_ERROR: Optional[str] = None
except ImportError as err:  # not built (no compiler, FASTGRPO_BUILD_EXT=off) or built against another torch
    _C = None
    _EXTENSION_ERROR = f"{type(err).__name__}: {err}"


def extension_available(device_type: str = "cpu") -> bool:
    """Whether ``fastgrpo._C`` is importable and has kernels for ``device_type`` (``"cpu"`` or ``"cuda"``)."""
    if _C is None:
        return False
    return device_type == "cpu" or (device_type == "cuda" and _C.has_cuda())


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def preprocess_backend(device: torch.device | str | None = None, backend: Optional[str] = None) -> str:
    """The path ``clip_preprocess`` takes for images on ``device`` (default: CUDA if available, else CPU):
    ``"cuda"``, ``"cpp"`` or ``"torch"``.

    ``backend``: ``None``/``"auto"`` picks the extension's kernel for the device when built, else ``"torch"``;
    ``FASTGRPO_BACKEND=torch`` (or ``backend="torch"``) forces the fallback; ``"cpp"``/``"cuda"`` force a kernel
    and raise when it cannot run. ``FASTGRPO_BACKEND=triton`` counts as auto (this op has no Triton kernel)."""
    device = _default_device() if device is None else torch.device(device)
    if backend is None:
        choice = "torch" if requested_backend() == "torch" else "auto"
    else:
        choice = backend.lower()
        if choice not in PATHS:
            raise ValueError(f"backend must be one of {PATHS}, got {backend!r}")
    native = {"cpu": "cpp", "cuda": "cuda"}.get(device.type)
    if choice == "auto":
        return native if native is not None and extension_available(device.type) else "torch"
    if choice in ("cpp", "cuda"):
        if choice != native:
            raise ValueError(f"backend={choice!r} cannot run on {device.type} tensors")
        if not extension_available(device.type):
            why = _EXTENSION_ERROR or "it was built without CUDA"
            raise ValueError(f"backend={choice!r} needs the extension fastgrpo._C, which is unavailable ({why}); "
                             "rebuild with `pip install --no-build-isolation -e .`")
    return choice


def _announce(path: str, device: torch.device) -> None:
    if ("clip_preprocess", path) in _announced:
        return
    _announced.add(("clip_preprocess", path))
    reason = ""
    if path == "torch":
        if os.environ.get("FASTGRPO_BACKEND", "").lower() == "torch":
            reason = "; FASTGRPO_BACKEND=torch"
        elif _C is None:
            reason = f"; the extension fastgrpo._C is unavailable: {_EXTENSION_ERROR}"
        elif device.type == "cuda" and not _C.has_cuda():
            reason = "; the extension fastgrpo._C was built without CUDA"
    logger.info("fastgrpo.clip_preprocess runs on the %s path (%s%s)", path, device.type, reason)


def _check_args(images, size, crop_size, mean, std, input_range, out_dtype) -> None:
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] != 3:
        raise ValueError(f"images must have 3 channels (RGB), got {images.shape[1]}: shape {tuple(images.shape)}")
    if images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"images are zero-sized: shape {tuple(images.shape)}")
    if images.dtype not in _IMAGE_DTYPES:
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
    for name, value in (("size", size), ("crop_size", crop_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if crop_size > size:
        raise ValueError(f"crop_size={crop_size} must be <= size={size} (the shorter side after resizing)")
    for name, value in (("mean", mean), ("std", std)):
        if len(value) != 3:
            raise ValueError(f"{name} must have 3 values (R, G, B), got {len(value)}")
    if any(not s > 0 for s in std):
        raise ValueError(f"std must be positive, got {tuple(std)}")
    if input_range not in INPUT_RANGES:
        raise ValueError(f"input_range must be one of {INPUT_RANGES}, got {input_range!r}")
    if images.dtype == torch.uint8 and input_range != "0_1":
        raise ValueError("uint8 images are 0..255 levels; input_range applies to floating-point images only")
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {_OUT_DTYPES}, got {out_dtype!r}")


_TABLES: dict = {}


def _tables(height: int, width: int, size: int, crop_size: int, quantize: bool, device: torch.device):
    """Per-axis weight tables on the device, built once per geometry (``reference.resize_table``)."""
    key = (height, width, size, crop_size, quantize, str(device))
    if key not in _TABLES:
        rows, cols = plan(height, width, size, crop_size)
        # tap-major weights on a GPU: neighbouring threads (outputs) load neighbouring weights
        taps_major = device.type == "cuda"
        _TABLES[key] = (rows, cols, rows.tensors(quantize, device, taps_major),
                        cols.tensors(quantize, device, taps_major))
    return _TABLES[key]


def clip_preprocess(images: Tensor, size: int = 224, crop_size: int = 224, mean: Sequence[float] = CLIP_MEAN,
                    std: Sequence[float] = CLIP_STD, input_range: str = "0_1", quantize: bool = True,
                    out_dtype: torch.dtype = torch.float32, channels_last: bool = False, *,
                    check: bool = True, backend: Optional[str] = None) -> Tensor:
    """CLIP preprocessing of a batch where it lies: what ``CLIPImageProcessor`` does to the PIL images of it.

    u = x (``input_range="0_1"``) or (x + 1)/2 (``"-1_1"``), clamped to [0, 1]; p = round(255·u) with ``quantize``
    (the uint8 the PIL path sees; uint8 images are p already), else 255·u.
    Resize the shorter side to ``size`` and the longer to int(size·long/short) with Pillow's antialiased bicubic
    (a = −0.5, support 2·max(in/out, 1)), horizontal pass then vertical, each rounded and clipped to uint8 with
    ``quantize``; keep the centre ``crop_size``² from offsets ⌊(resized − crop)/2⌋ (only those outputs are
    computed); out = (v/255 − mean)/std per channel.

    Args:
        images: (B, 3, H, W), uint8 or float16/bfloat16/float32/float64, any strides, CPU or CUDA.
        size, crop_size: shorter side after resizing, and the square crop (crop_size <= size).
        mean, std: per-channel normalisation (default CLIP's).
        input_range: ``"0_1"`` or ``"-1_1"`` (a VAE decode) for floating-point images.
        quantize: round to uint8 levels as the PIL path does (default); False gives a linear resize of the
            clamped image without rounding.
        out_dtype: float32, float16 or bfloat16. channels_last: return channels-last memory.
        check: raise ValueError on NaN pixels that the resize reads. Costs one host sync on CUDA (a flag read
            back); with False there is none, and NaN pixels count as 0.
        backend: ``"auto"``/``"cuda"``/``"cpp"``/``"torch"`` (see ``preprocess_backend``).

    Returns (B, 3, crop_size, crop_size) in ``out_dtype`` on the images' device.
    """
    _check_args(images, size, crop_size, mean, std, input_range, out_dtype)
    path = preprocess_backend(images.device, backend)
    _announce(path, images.device)
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    B, _, H, W = images.shape
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if B == 0:
        return torch.empty((0, 3, crop_size, crop_size), dtype=out_dtype, device=images.device,
                           memory_format=memory_format)
    if path == "torch":
        return reference.clip_preprocess(images, size, crop_size, mean, std, input_range, quantize, out_dtype,
                                         channels_last, check)
    rows, cols, row_tables, col_tables = _tables(H, W, size, crop_size, quantize, images.device)
    out = torch.empty((B, 3, crop_size, crop_size), dtype=out_dtype, device=images.device,
                      memory_format=memory_format)
    nan_flag = torch.zeros(1, dtype=torch.int32, device=images.device)
    mode = _MODES["levels" if images.dtype == torch.uint8 else input_range]
    _C.clip_preprocess(images, out, nan_flag, *row_tables, rows.lo, rows.hi - rows.lo, *col_tables, cols.lo,
                       cols.hi - cols.lo, list(mean), list(std), mode, quantize)
    if check and images.is_floating_point() and bool(nan_flag.item()):
        raise ValueError("images contain NaN pixels")
    return out
