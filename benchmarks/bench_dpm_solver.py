"""Benchmark of one DPM-Solver++ 2M (midpoint) step in flow form (``dpm_solver_2m_step``, second order).

The ODE MixGRPO-Flash runs after its SDE window; sampling only (no backward). Per case (same cases as
``bench_flow_step``): v (bf16), x and the previous x̂0 D_b (fp32) → x' and D_a (fp32).

Providers: ``eager`` (the math below in plain PyTorch), ``torch_compile`` (the same under ``torch.compile``),
``fastgrpo`` (the Triton kernel), ``fastgrpo_torch`` (the op's PyTorch reference path).
Ideal bytes per element: read v (2), x (4), D_b (4); write x' (4), D_a (4) = 18.
"""
from __future__ import annotations

import torch

from fastgrpo.ops import dpm_solver_2m_step

try:
    from benchmarks import common
except ImportError:  # run as a script: python benchmarks/bench_dpm_solver.py
    import common

STEPS, STEP_INDEX, SHIFT = 10, 5, 3.0


def shifted_sigmas(steps: int = STEPS, shift: float = SHIFT) -> torch.Tensor:
    """σ_i = shift·t/(1 + (shift − 1)·t), t = linspace(1, 0, steps + 1): the SD3 schedule."""
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * t / (1.0 + (shift - 1.0) * t)).float()


def dpm_2m_eager(v, x, sigma, sigma_next, x0_prev, sigma_prev):
    """DPM-Solver++ 2M midpoint, flow form, eagerly: α = 1 − σ, λ = log(α/σ), D_a = x − σ_a·v,
    h = λ' − λ_a, r = (λ_a − λ_b)/h, D = D_a + (D_a − D_b)/(2r), x' = (σ'/σ_a)·x − α'·(e^{−h} − 1)·D.
    σ's are (B,) device tensors. Returns (x', D_a)."""
    view = (-1,) + (1,) * (x.dim() - 1)
    s_a, s_next, s_b = (s.view(view) for s in (sigma, sigma_next, sigma_prev))
    lam_a, lam_next, lam_b = (torch.log((1 - s) / s) for s in (s_a, s_next, s_b))
    x = x.float()
    d_a = x - s_a * v.float()
    h = lam_next - lam_a
    r = (lam_a - lam_b) / h
    d = d_a + (d_a - x0_prev) / (2 * r)
    return (s_next / s_a) * x - (1 - s_next) * (torch.exp(-h) - 1) * d, d_a


def ideal_bytes(v, x, x0_prev) -> int:
    return v.numel() * (v.element_size() + x.element_size() + x0_prev.element_size() + 4 + 4)


def main(quick: bool = False, out_dir: str | None = None):
    """Measure every case × provider on the default device; write results/<device>/dpm_solver.*"""
    device = common.pick_device()
    copy_gbps = common.copy_bandwidth(device)
    sig = shifted_sigmas().to(device)
    notes = [
        f"Second-order step {STEP_INDEX} of a {STEPS}-step SD3 schedule (shift {SHIFT}): σ_b, σ_a, σ' = "
        f"{sig[STEP_INDEX - 1].item():.4f}, {sig[STEP_INDEX].item():.4f}, {sig[STEP_INDEX + 1].item():.4f}; "
        "v bf16, x / D_b / x' / D_a fp32.",
        "Ideal bytes per element: read v 2 + x 4 + D_b 4, write x' 4 + D_a 4 = 18. gbps = ideal bytes / median "
        "time; copy_frac = gbps / copy bandwidth; speedup_vs_* = that provider's ms / this row's ms.",
        "torch_compile: default mode, compiled afresh per case (dynamic=False).",
    ]
    if device.type != "cuda":
        notes.append(common.CPU_NOTE)
    rows = []
    for case in common.select_cases(quick, device):
        B = case.batch
        v = common.randn(case.shape, torch.bfloat16, device)
        x = common.randn(case.shape, torch.float32, device)
        x0_prev = common.randn(case.shape, torch.float32, device)
        sigma_prev, sigma, sigma_next = (sig[i].expand(B).contiguous() for i in
                                         (STEP_INDEX - 1, STEP_INDEX, STEP_INDEX + 1))
        args = (v, x, sigma, sigma_next, x0_prev, sigma_prev)
        common.release(device)
        compiled = torch.compile(dpm_2m_eager, dynamic=False)
        fns = {
            "eager": lambda: dpm_2m_eager(*args),
            "torch_compile": lambda: compiled(*args),
            "fastgrpo": lambda: dpm_solver_2m_step(*args, backend="triton"),
            "fastgrpo_torch": lambda: dpm_solver_2m_step(*args, backend="torch"),
        }
        for name, fn in fns.items():
            if name == "fastgrpo" and device.type != "cuda":
                continue
            label = f"{name} ({case.name}, batch {B})"
            if common.try_provider(label, fn, notes):
                rows.append(common.measure(case, "sample", name, fn, ideal_bytes(v, x, x0_prev), copy_gbps, device))
                print(f"{label}: {rows[-1]['ms']:.3f} ms", flush=True)
        del v, x, x0_prev, args, fns
    common.release(device)
    common.add_speedups(rows, {"speedup_vs_eager": "eager", "speedup_vs_torch_compile": "torch_compile"})
    if device.type == "cuda":
        notes.append("gpu_ms: GPU time per call from a CUDA graph of 20 calls (no host overhead); gpu_speedup_* "
                     "compare gpu_ms.")
        common.add_speedups(rows, {"gpu_speedup_vs_eager": "eager", "gpu_speedup_vs_torch_compile": "torch_compile"},
                            key="gpu_ms")
    common.write_results("dpm_solver", rows, notes, out_dir, copy_gbps=copy_gbps, device=device)
    return 0


if __name__ == "__main__":
    main()
