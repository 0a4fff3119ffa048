"""Benchmark of ``model.attention_backend``: one MM-DiT joint attention — softmax(QKᵀ/√d)V over image and text
tokens together, through fastgrpo's dispatching processor — forward and forward + backward, for every backend that
runs on this device (installed, and CUDA-only ones on a GPU only), with its error against a float64 write-out.

Cases: the embedded world's transformer attention (rollout batch 12 = 4 prompts × 3; 64 image + 16 text tokens,
4 heads × 32) and SD3.5-Medium's at 512² (1024 image + 333 text tokens, 24 heads × 64; batch 2 on CPU, 8 on CUDA),
fp32 on CPU, bf16 on CUDA. Prediction (written before measuring): on CPU native (which chooses the fused CPU flash
kernel) beats native_math by 1.2–2× at SD3.5 sizes and ties at the world's (overhead-bound); on an H100 flash3 >
flash ≈ native (SDPA's flash) > xformers > math.
Result (2-core CPU, 2026-12-07, ``fastgrpo bench attention``, three runs): native beat native_math at both sizes
— forward 1.45–1.8× (world) and 1.9–2.1× (SD3.5-M), forward + backward 1.27–1.69× — so the half about the world's
size was wrong (the math kernel's separate softmax costs even at 80 tokens). GPU: pending.
"""
from __future__ import annotations

import torch

from fastgrpo.models.attention import BACKENDS, DispatchJointAttnProcessor, check_backend

try:
    from benchmarks import common
except ImportError:  # run as a script
    import common

CASES = {"world": dict(batch=12, image=64, text=16, heads=4, dim=32),
         "sd35m_512": dict(batch=2, image=1024, text=333, heads=24, dim=64)}


def _attention_module(heads: int, dim: int, device, dtype):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    width = heads * dim
    return Attention(query_dim=width, cross_attention_dim=None, added_kv_proj_dim=width, dim_head=dim, heads=heads,
                     out_dim=width, context_pre_only=False, bias=True, qk_norm="rms_norm",
                     eps=1e-6).to(device, dtype)


def _float64_error(attn, x, context, got) -> float:
    """max |got − float64 softmax(QKᵀ/√d)V path| / max |reference| on the image stream."""
    import copy

    ref_attn = copy.deepcopy(attn).double()
    with torch.no_grad():
        from diffusers.models.attention_dispatch import AttentionBackendName
        ref = DispatchJointAttnProcessor(AttentionBackendName("_native_math"))(ref_attn, x.double(), context.double())[0]
    return float((got.double() - ref).abs().max() / ref.abs().max())


def main(quick: bool = False, out_dir: str | None = None):
    device = common.pick_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    from diffusers.models.attention_dispatch import AttentionBackendName

    notes = ["Each row: one joint attention module (QK RMS norms, image and text projections, output projections) "
             "through fastgrpo's DispatchJointAttnProcessor; fwd = forward without grad (rollout), fwd_bwd = "
             "forward + backward of the mean square (training). err = max |out − float64| / max |float64| "
             "(the float64 reference runs the math kernel).",
             f"dtype {str(dtype).removeprefix('torch.')}; speedup_vs_native = native's ms / this row's ms."]
    runnable = []
    for name in BACKENDS:
        try:
            check_backend(name, device)
            runnable.append(name)
        except (RuntimeError, ValueError) as err:
            notes.append(f"not measured: {str(err)[:200]}")
    if quick:
        runnable = [n for n in runnable if n in ("native", "native_math")]
    rows = []
    for case, size in CASES.items():
        if quick and case != "world":
            continue
        batch = size["batch"] * (4 if device.type == "cuda" and case != "world" else 1)
        attn = _attention_module(size["heads"], size["dim"], device, dtype)
        g = torch.Generator(device="cpu").manual_seed(1)
        width = size["heads"] * size["dim"]
        x = torch.randn(batch, size["image"], width, generator=g).to(device, dtype)
        context = torch.randn(batch, size["text"], width, generator=g).to(device, dtype)
        for name in runnable:
            processor = DispatchJointAttnProcessor(AttentionBackendName(BACKENDS[name].dispatch))

            def forward():
                with torch.no_grad():
                    return processor(attn, x, context)

            def train():
                xi = x.detach().requires_grad_(True)
                image, text = processor(attn, xi, context)
                (image.float().square().mean() + text.float().square().mean()).backward()

            label = f"{name} ({case}, batch {batch})"
            if not common.try_provider(label, train, notes):
                continue
            row = {"case": case, "batch": batch, "provider": name,
                   "fwd_ms": common.bench(forward, device), "fwd_bwd_ms": common.bench(train, device),
                   "peak_mib": common.peak_memory_mib(train, device),
                   "err": _float64_error(attn, x, context, forward()[0])}
            attn.zero_grad(set_to_none=True)
            rows.append(row)
            print(f"{label}: fwd {row['fwd_ms']:.3f} ms, fwd+bwd {row['fwd_bwd_ms']:.3f} ms, err {row['err']:.2e}",
                  flush=True)
        del attn, x, context
        common.release(device)
    for row in rows:
        base = next(r for r in rows if r["case"] == row["case"] and r["provider"] == "native") \
            if any(r["case"] == row["case"] and r["provider"] == "native" for r in rows) else None
        for key in ("fwd_ms", "fwd_bwd_ms"):
            row[f"speedup_{key[:-3]}_vs_native"] = base[key] / row[key] if base else None
    common.write_results("attention", rows, notes, out_dir, device=device)
    return 0


if __name__ == "__main__":
    main()
