"""clip_preprocess: parity with PIL + CLIPImageProcessor (the anchors' reward path), C++ kernel vs PyTorch fallback,
dtypes, strides, bad input, path selection, and the CUDA kernel (``gpu``)."""
import logging
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fastgrpo._backend import _announced
from fastgrpo.ops.preprocess import (CLIP_MEAN, CLIP_STD, clip_preprocess, extension_available,
                                     preprocess_backend)
from fastgrpo.reference.preprocess import resized_size

REPO = Path(__file__).resolve().parents[1]
TOL = 1.5 / 255  # max |error| in the 0..1 scale, before normalisation: the bound the op was specified to
EXACT = 1e-5  # what the paths meet: PIL's integer passes bit for bit, then float rounding of the normalisation
SHAPES = {"512": (512, 512), "1024": (1024, 1024), "768x512": (512, 768), "512x768": (768, 512),
          "128_up": (128, 128)}
KINDS = ("noise", "edges", "gradients", "checker3", "strokes")
needs_ext = pytest.mark.skipif(not extension_available("cpu"), reason="fastgrpo._C is not built")
PATHS = [pytest.param("cpp", marks=needs_ext), "torch"]
MEAN = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CLIP_STD).view(1, 3, 1, 1)


# ----- images: uint8 (3, H, W), high-frequency on purpose (bicubic overshoot, aliasing) --------------------------

def make_image(kind: str, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    if kind == "noise":
        return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    if kind == "edges":  # vertical, horizontal and diagonal steps, one per channel
        img = torch.stack([x >= w // 3, y >= h // 2, (x + y) >= (h + w) // 2]).float() * 255
    elif kind == "gradients":
        img = torch.stack([x * 255.0 / max(w - 1, 1), y * 255.0 / max(h - 1, 1),
                           (x + y) * 255.0 / max(h + w - 2, 1)]).round()
    elif kind == "checker3":  # 3-pixel checkerboard, complementary in one channel
        c = ((y // 3 + x // 3) % 2).float() * 255
        img = torch.stack([c, 255 - c, c])
    elif kind == "strokes":  # text-like: thin dark strokes (1-2 px) on a light background
        img = torch.full((3, h, w), 235.0)
        for _ in range(40):
            r0, c0 = (int(torch.randint(0, n, (1,), generator=g)) for n in (h, w))
            length = int(torch.randint(4, max(5, min(h, w) // 4), (1,), generator=g))
            width = int(torch.randint(1, 3, (1,), generator=g))
            ink = torch.randint(0, 60, (3, 1), generator=g).float()
            direction = int(torch.randint(0, 3, (1,), generator=g))
            for t in range(length):
                rr, cc = (r0 + t, c0) if direction == 0 else ((r0, c0 + t) if direction == 1 else (r0 + t, c0 + t))
                img[:, rr % h:rr % h + width, cc % w:cc % w + width] = ink[:, :, None]
    else:
        raise ValueError(kind)
    return img.to(torch.uint8)


def mixed_batch(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """B = 7: every kind, and two more noise images."""
    kinds = list(KINDS) + ["noise", "noise"]
    return torch.stack([make_image(k, h, w, seed + i) for i, k in enumerate(kinds)])


# ----- the anchors' path -------------------------------------------------------------------------------------------

def pil_path(batch: torch.Tensor, size: int = 224, crop: int = 224, horizontal_first: bool = False) -> torch.Tensor:
    """uint8 (B, 3, H, W) → PIL → resize(BICUBIC) → centre crop (transformers' offsets) → 0..1, (B, 3, crop, crop).

    ``horizontal_first``: resize the width, then the height, in two PIL calls (one pass each): Pillow ≤ 12's order
    for every shape, which Pillow 13 changes for images that lose far more rows than columns (see
    ``fastgrpo.reference.preprocess``)."""
    H, W = batch.shape[-2:]
    new_h, new_w = resized_size(H, W, size)
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    out = []
    for img in batch:
        pil = Image.fromarray(img.permute(1, 2, 0).numpy())
        if horizontal_first:
            pil = pil.resize((new_w, H), Image.BICUBIC).resize((new_w, new_h), Image.BICUBIC)
        else:
            pil = pil.resize((new_w, new_h), Image.BICUBIC)
        arr = np.asarray(pil)[top:top + crop, left:left + crop]
        out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
    return torch.stack(out).float() / 255


def clip_image_processor():
    """transformers' PIL-backed CLIP processor, configured in code (no download)."""
    import transformers
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3,
               do_resize=True, do_center_crop=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
               image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_convert_rgb=True)


def unnormalise(out: torch.Tensor) -> torch.Tensor:
    return out.float().cpu() * STD + MEAN


def max_error(out: torch.Tensor, batch: torch.Tensor) -> float:
    return (unnormalise(out) - pil_path(batch)).abs().max().item()


# ----- parity with PIL ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("kind", KINDS)
def test_matches_pil_one_image(kind, shape, path):
    batch = make_image(kind, *SHAPES[shape])[None]
    out = clip_preprocess(batch, backend=path)
    assert out.shape == (1, 3, 224, 224) and out.dtype == torch.float32
    assert max_error(out, batch) <= EXACT


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_matches_pil_batch_of_seven_float_input(shape, path):
    batch = mixed_batch(*SHAPES[shape])
    out = clip_preprocess(batch.float() / 255, backend=path)  # the float a pipeline returns, quantised in the op
    assert out.shape == (7, 3, 224, 224)
    assert max_error(out, batch) <= EXACT


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", ["512", "768x512", "128_up"])
def test_matches_clip_image_processor(shape, path):
    batch = mixed_batch(*SHAPES[shape], seed=3)
    images = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in batch]
    want = clip_image_processor()(images=images, return_tensors="pt")["pixel_values"]
    got = clip_preprocess(batch, backend=path)
    assert got.shape == want.shape
    assert ((got - want).abs() * STD).max().item() <= EXACT


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 70), w=st.integers(1, 70), size=st.integers(1, 48), crop_frac=st.floats(0.05, 1.0),
       seed=st.integers(0, 2**16))
def test_small_shapes_match_pil_and_paths_agree(h, w, size, crop_frac, seed):
    """Odd sizes, 1-pixel images, strong up- and downscaling: every path equals PIL's passes (horizontal first)."""
    crop = max(1, int(size * crop_frac))
    batch = torch.randint(0, 256, (2, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    want = pil_path(batch, size, crop, horizontal_first=True)
    outs = [clip_preprocess(batch, size, crop, backend="torch")]
    if extension_available("cpu"):
        outs.append(clip_preprocess(batch, size, crop, backend="cpp"))
        assert torch.equal(outs[0], outs[1])  # the same integer arithmetic: bit for bit
    for out in outs:
        assert (unnormalise(out) - want).abs().max().item() <= EXACT


@pytest.mark.parametrize("path", PATHS)
def test_tall_images_run_horizontal_first(path):
    """A 3:1 portrait: exactly Pillow ≤ 12's passes. (Pillow 13 runs this one vertically first: on noise and
    checkerboards its result is then up to ~20 levels away, from the clipping between the passes.)"""
    batch = torch.stack([make_image(k, 900, 300) for k in ("noise", "checker3", "strokes")])
    out = clip_preprocess(batch, backend=path)
    assert (unnormalise(out) - pil_path(batch, horizontal_first=True)).abs().max().item() < 1e-5


# ----- the C++ kernel against the fallback -------------------------------------------------------------------------

@needs_ext
@pytest.mark.parametrize("input_range", ["0_1", "-1_1"])
@pytest.mark.parametrize("shape", [(3, 3, 97, 130), (2, 3, 300, 41), (1, 3, 224, 224)])
def test_cpp_equals_fallback(shape, input_range):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.1  # some pixels out of range
    if input_range == "-1_1":
        x = x * 2 - 1
    got = clip_preprocess(x, 64, 56, input_range=input_range, backend="cpp")
    want = clip_preprocess(x, 64, 56, input_range=input_range, backend="torch")
    assert torch.equal(got, want)
    got = clip_preprocess(x, 64, 56, input_range=input_range, quantize=False, backend="cpp")
    want = clip_preprocess(x, 64, 56, input_range=input_range, quantize=False, backend="torch")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("path", PATHS)
def test_quantize_false_is_the_unrounded_resize(path):
    # mid-range noise: the bicubic overshoot stays inside 0..255, so nothing is clipped either way
    x = torch.rand(3, 3, 96, 80, generator=torch.Generator().manual_seed(9)) * 0.5 + 0.25
    exact = clip_preprocess(x, 64, 64, quantize=False, backend=path)
    rounded = clip_preprocess(x, 64, 64, backend=path)
    diff = ((exact - rounded).abs() * STD).max().item()
    assert 0 < diff <= 1.5 / 255  # rounding of the input (½ level) and of each pass (½ level each), nothing else
    edges = make_image("edges", 96, 80)[None].float() / 255
    overshoot = unnormalise(clip_preprocess(edges, 64, 64, quantize=False, backend=path))
    assert overshoot.min() < 0 and overshoot.max() > 1  # not clipped: a linear resize of the clamped image


# ----- dtypes, ranges, strides, layouts ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_input_dtypes_are_read_as_float32(dtype, path):
    x = torch.rand(2, 3, 90, 70, generator=torch.Generator().manual_seed(2)).to(dtype)
    assert torch.equal(clip_preprocess(x, 48, 40, backend=path), clip_preprocess(x.float(), 48, 40, backend=path))


@pytest.mark.parametrize("path", PATHS)
def test_uint8_and_float_inputs_agree(path):
    batch = mixed_batch(120, 100)
    assert torch.equal(clip_preprocess(batch, 64, 64, backend=path),
                       clip_preprocess(batch.float() / 255, 64, 64, backend=path))


@pytest.mark.parametrize("path", PATHS)
def test_minus_one_to_one_range(path):
    x = torch.rand(2, 3, 80, 96, generator=torch.Generator().manual_seed(4)) * 2 - 1  # a VAE decode
    got = clip_preprocess(x, 64, 64, input_range="-1_1", backend=path)
    assert torch.equal(got, clip_preprocess((x + 1) / 2, 64, 64, backend=path))


@pytest.mark.parametrize("path", PATHS)
def test_non_contiguous_inputs(path):
    base = torch.rand(4, 3, 130, 110, generator=torch.Generator().manual_seed(5))
    want = clip_preprocess(base, 64, 60, backend=path)
    views = {
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "hwc_permuted": base.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2),
        "batch_strided": torch.stack([base, base], 1).flatten(0, 1)[::2],
        "padded_rows_cols": torch.nn.functional.pad(base, (3, 5, 2, 1))[:, :, 2:-1, 3:-5],
    }
    for name, view in views.items():
        assert not view.is_contiguous()
        assert torch.equal(clip_preprocess(view, 64, 60, backend=path), want), name
    every_other = torch.rand(2, 3, 260, 220, generator=torch.Generator().manual_seed(6))
    strided = every_other[:, :, ::2, ::2]
    assert torch.equal(clip_preprocess(strided, 64, 60, backend=path),
                       clip_preprocess(strided.contiguous(), 64, 60, backend=path))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16])
def test_out_dtype_and_channels_last(out_dtype, path):
    x = torch.rand(3, 3, 100, 120, generator=torch.Generator().manual_seed(7))
    ref = clip_preprocess(x, 64, 64, backend=path)
    got = clip_preprocess(x, 64, 64, out_dtype=out_dtype, channels_last=True, backend=path)
    assert got.dtype == out_dtype and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, ref.to(out_dtype))  # round-to-nearest-even of the same float32 values


@pytest.mark.parametrize("path", PATHS)
def test_empty_batch_and_custom_normalisation(path):
    assert clip_preprocess(torch.rand(0, 3, 50, 50), 32, 32, backend=path).shape == (0, 3, 32, 32)
    batch = mixed_batch(64, 64)
    plain = clip_preprocess(batch, 32, 32, mean=(0, 0, 0), std=(1, 1, 1), backend=path)
    assert (unnormalise(clip_preprocess(batch, 32, 32, backend=path)) - plain).abs().max().item() < 1e-6


# ----- bad input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
def test_nan_pixels(path):
    x = torch.rand(2, 3, 64, 64)
    x[1, 2, 30, 31] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        clip_preprocess(x, 32, 32, backend=path)
    unchecked = clip_preprocess(x, 32, 32, check=False, backend=path)  # NaN counts as 0
    assert torch.equal(unchecked, clip_preprocess(torch.nan_to_num(x, nan=0.0), 32, 32, backend=path))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("images, kwargs, message", [
    (torch.rand(2, 4, 32, 32), {}, "3 channels .RGB., got 4"),
    (torch.rand(2, 1, 32, 32), {}, "3 channels .RGB., got 1"),
    (torch.rand(3, 32, 32), {}, r"\(B, 3, H, W\)"),
    (torch.rand(2, 3, 0, 32), {}, "zero-sized"),
    (torch.rand(2, 3, 32, 0), {}, "zero-sized"),
    (torch.randint(0, 9, (1, 3, 8, 8), dtype=torch.int32), {}, "uint8 or floating"),
    (torch.rand(1, 3, 8, 8), {"crop_size": 40, "size": 32}, "crop_size"),
    (torch.rand(1, 3, 8, 8), {"size": 0}, "size"),
    (torch.rand(1, 3, 8, 8), {"input_range": "0_255"}, "input_range"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), {"input_range": "-1_1"}, "uint8"),
    (torch.rand(1, 3, 8, 8), {"mean": (0.5, 0.5)}, "mean"),
    (torch.rand(1, 3, 8, 8), {"std": (0.5, 0.0, 0.5)}, "std"),
    (torch.rand(1, 3, 8, 8), {"out_dtype": torch.int8}, "out_dtype"),
])
def test_bad_input_names_the_problem(images, kwargs, message, path):
    with pytest.raises(ValueError, match=message):
        clip_preprocess(images, **{"size": 8, "crop_size": 8, **kwargs}, backend=path)


# ----- path selection, logging, build ------------------------------------------------------------------------------

def test_backend_selection(monkeypatch):
    monkeypatch.delenv("FASTGRPO_BACKEND", raising=False)
    assert preprocess_backend("cpu") == ("cpp" if extension_available("cpu") else "torch")
    monkeypatch.setenv("FASTGRPO_BACKEND", "torch")
    assert preprocess_backend("cpu") == "torch"
    monkeypatch.setenv("FASTGRPO_BACKEND", "bogus")
    with pytest.raises(ValueError, match="FASTGRPO_BACKEND"):
        preprocess_backend("cpu")
    monkeypatch.delenv("FASTGRPO_BACKEND")
    with pytest.raises(ValueError, match="cannot run on cpu"):
        preprocess_backend("cpu", backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        preprocess_backend("cpu", backend="triton")


def test_fastgrpo_backend_torch_forces_the_fallback(monkeypatch):
    x = torch.rand(1, 3, 40, 40)
    monkeypatch.setenv("FASTGRPO_BACKEND", "torch")
    assert torch.equal(clip_preprocess(x, 32, 32), clip_preprocess(x, 32, 32, backend="torch"))


def test_first_use_is_logged_once(caplog, monkeypatch):
    monkeypatch.delenv("FASTGRPO_BACKEND", raising=False)
    path = preprocess_backend("cpu")
    _announced.discard(("clip_preprocess", path))
    with caplog.at_level(logging.INFO, logger="fastgrpo"):
        for _ in range(3):
            clip_preprocess(torch.rand(1, 3, 20, 20), 16, 16)
    lines = [r.getMessage() for r in caplog.records if "clip_preprocess runs on" in r.getMessage()]
    assert len(lines) == 1 and f"the {path} path" in lines[0]


@pytest.mark.skipif(os.environ.get("FASTGRPO_BUILD_EXT", "auto").lower() == "off",
                    reason="FASTGRPO_BUILD_EXT=off: installed without the extension")
def test_extension_is_built_and_used_on_cpu(monkeypatch):
    """CI installs with a C++ compiler: the CPU kernel must be there (the install itself never fails)."""
    monkeypatch.delenv("FASTGRPO_BACKEND", raising=False)
    assert extension_available("cpu"), "fastgrpo._C did not build; see the warnings of `pip install`"
    assert preprocess_backend("cpu") == "cpp"


def test_ops_exports():
    import fastgrpo.ops as ops
    assert ops.clip_preprocess is clip_preprocess and ops.preprocess_backend is preprocess_backend


def test_cuda_source_compiles():
    """The .cu kernels have no torch headers: nvcc compiles them for sm_90 without a GPU or a CUDA torch."""
    run = subprocess.run(["bash", str(REPO / "csrc" / "check_cuda_compiles.sh")], capture_output=True, text=True,
                         timeout=300)
    if run.returncode == 77:
        pytest.skip(f"nvcc not found: {run.stderr.strip()}")
    assert run.returncode == 0, run.stdout + run.stderr


# ----- CUDA (pytest -m gpu) ----------------------------------------------------------------------------------------

CUDA = "cuda"


@pytest.mark.gpu
@pytest.mark.parametrize("shape", list(SHAPES))
def test_cuda_matches_pil_and_cpu(shape):
    batch = mixed_batch(*SHAPES[shape])
    got = clip_preprocess(batch.float().div(255).to(CUDA), backend="cuda")
    assert got.device.type == "cuda" and preprocess_backend(CUDA) == "cuda"
    assert max_error(got, batch) <= TOL
    assert torch.equal(got.cpu(), clip_preprocess(batch, backend="torch"))
    if extension_available("cpu"):
        assert torch.equal(got.cpu(), clip_preprocess(batch, backend="cpp"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("input_range", ["0_1", "-1_1"])
@pytest.mark.parametrize("quantize", [True, False])
def test_cuda_equals_fallback(dtype, input_range, quantize):
    if dtype == torch.uint8 and input_range == "-1_1":
        pytest.skip("uint8 images are levels")
    g = torch.Generator().manual_seed(8)
    x = torch.randint(0, 256, (5, 3, 333, 517), generator=g, dtype=torch.uint8) if dtype == torch.uint8 else (
        torch.rand(5, 3, 333, 517, generator=g) * 1.2 - 0.1).to(dtype)
    if input_range == "-1_1":
        x = x * 2 - 1
    kw = dict(input_range=input_range, quantize=quantize)
    got = clip_preprocess(x.to(CUDA), backend="cuda", **kw).cpu()
    want = clip_preprocess(x, backend="torch", **kw)
    if quantize:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("quantize", [True, False])
@pytest.mark.parametrize("geometry", [
    (7, 512, 512, 224, 224),   # the reward case: one tile row of blocks per 16 output rows
    (7, 512, 768, 224, 224),   # window starts at column 125: scalar head and tail around the 16-byte loads
    (7, 768, 512, 224, 224),   # tall
    (7, 128, 128, 224, 224),   # upsampling
    (2, 250, 1100, 384, 300),  # 300 crop columns: more columns than threads
    (3, 100, 90, 40, 24),      # fewer crop columns than threads; the last tile holds 8 of 24 rows
])
def test_cuda_tiles_match_fallback(geometry, quantize, dtype):
    """The fused kernel's tiling (row tiles, streamed chunks, 16-byte or scalar loads) on every input dtype."""
    B, H, W, size, crop = geometry
    g = torch.Generator().manual_seed(H + W)
    x = torch.randint(0, 256, (B, 3, H, W), generator=g, dtype=torch.uint8)
    if dtype != torch.uint8:
        x = (torch.rand(B, 3, H, W, generator=g, dtype=torch.float64) * 1.2 - 0.1).to(dtype)
    got = clip_preprocess(x.to(CUDA), size, crop, quantize=quantize, backend="cuda").cpu()
    want = clip_preprocess(x, size, crop, quantize=quantize, backend="torch")
    if quantize:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [24, 96])
def test_cuda_reward_batches_match_fallback(batch):
    x = torch.rand(batch, 3, 512, 512, device=CUDA)
    x[-1] = make_image("checker3", 512, 512).to(CUDA).float() / 255  # high frequencies: overshoot clipped twice
    assert torch.equal(clip_preprocess(x).cpu(), clip_preprocess(x.cpu(), backend="torch"))


@pytest.mark.gpu
def test_cuda_unaligned_and_strided_views():
    """Views that rule out the 16-byte loads (odd offset, odd row stride, channels last) give the same result."""
    base = torch.randint(0, 256, (3, 3, 300, 420), generator=torch.Generator().manual_seed(11), dtype=torch.uint8)
    want = clip_preprocess(base[..., 1:], backend="torch")
    for view in (base.to(CUDA)[..., 1:], base.to(CUDA).contiguous(memory_format=torch.channels_last)[..., 1:],
                 base[..., 1:].contiguous().to(CUDA), base.float().div(255).to(CUDA)[..., 1:]):
        assert torch.equal(clip_preprocess(view).cpu(), want)


@pytest.mark.gpu
def test_cuda_strides_layouts_and_dtypes():
    base = torch.rand(4, 3, 700, 900, device=CUDA)
    want = clip_preprocess(base)
    for view in (base.contiguous(memory_format=torch.channels_last),
                 base.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2),
                 torch.nn.functional.pad(base, (3, 5, 2, 1))[:, :, 2:-1, 3:-5]):
        assert torch.equal(clip_preprocess(view), want)
    got = clip_preprocess(base, out_dtype=torch.bfloat16, channels_last=True)
    assert got.is_contiguous(memory_format=torch.channels_last) and torch.equal(got, want.to(torch.bfloat16))


@pytest.mark.gpu
def test_cuda_nan_check_and_graph_capture():
    x = torch.rand(2, 3, 256, 256, device=CUDA)
    x[0, 1, 100, 100] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        clip_preprocess(x)
    x = torch.rand(8, 3, 512, 512, device=CUDA)
    eager = clip_preprocess(x, check=False)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # check=False: no host sync, so the op can be captured
        captured = clip_preprocess(x, check=False)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)


@pytest.mark.gpu
def test_cuda_wide_rows_use_more_shared_memory():
    # the crop reads the whole 12800-pixel rows: 51 kB of float levels per row (over the default 48 kB)
    x = torch.rand(1, 3, 12800, 12800, device=CUDA)
    got = clip_preprocess(x, 32, 32, quantize=False).cpu()
    # ~1600 taps per output summed in float32: allow 0.2 levels
    torch.testing.assert_close(got, clip_preprocess(x.cpu(), 32, 32, quantize=False, backend="torch"),
                               rtol=0, atol=3e-3)
    assert torch.equal(clip_preprocess(x, 32, 32).cpu(), clip_preprocess(x.cpu(), 32, 32, backend="torch"))


@pytest.mark.gpu
def test_cuda_large_batch_matches_fallback():
    x = torch.rand(48, 3, 1024, 1024, device=CUDA)
    got = clip_preprocess(x)
    assert torch.equal(got[:6].cpu(), clip_preprocess(x[:6].cpu(), backend="torch"))
    # the fallback on CUDA: the same levels; torch divides by a scalar through its reciprocal there (last bit)
    torch.testing.assert_close(got, clip_preprocess(x, backend="torch"), rtol=0, atol=1e-6)
