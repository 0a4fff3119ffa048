"""Triton kernel: DPM-Solver++ 2M step in flow form, fused with the x̂0 prediction it needs.

Math: ``fastgrpo/reference/dpm_solver.py``. The kernel uses the log-free form of the first-order coefficient,
α'·(1 − e^{−h}) = α' − α_a·σ'/σ_a, and the second-order weight q = 1/(2r) = h/(2(λ_a − λ_b)), so
x' = (σ'/σ_a)·x + (α' − α_a·σ'/σ_a)·((1 + q)·D_a − q·D_b), with q = 0 for a first-order or final (σ' = 0) step.
Reads v, x (and D_b), writes x' and D_a = x − σ_a·v for the next step's history.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .flow_step import _block, _sample_stride, row_view


@triton.jit
def _dpm_2m_fwd_kernel(v_ptr, x_ptr, x0_prev_ptr, sigma_ptr, sigma_next_ptr, sigma_prev_ptr, x_out_ptr, x0_ptr,
                       N, stride_v, stride_x, stride_prev, stride_sigma, stride_sigma_next, stride_sigma_prev,
                       HAS_PREV: tl.constexpr, BLOCK: tl.constexpr):
    pid_n = tl.program_id(0)
    row = tl.program_id(1)
    row64 = row.to(tl.int64)
    s_a = tl.load(sigma_ptr + row * stride_sigma).to(tl.float32)
    s_n = tl.load(sigma_next_ptr + row * stride_sigma_next).to(tl.float32)
    c_x = s_n / s_a
    k = (1.0 - s_n) - (1.0 - s_a) * c_x
    offs = pid_n * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    v = tl.load(v_ptr + row64 * stride_v + offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + row64 * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    d_a = x - s_a * v
    d = d_a
    if HAS_PREV:
        s_b = tl.load(sigma_prev_ptr + row * stride_sigma_prev).to(tl.float32)
        # q → 0 when σ' = 0 (final step) or σ_b = 1 (λ_b = −∞); safe values keep the logs finite there
        use = (s_n > 0.0) & (s_b < 1.0)
        s_n_safe = tl.where(use, s_n, 0.5)
        s_b_safe = tl.where(use, s_b, 0.5)
        lam_a = tl.log((1.0 - s_a) / s_a)
        h = tl.log((1.0 - s_n_safe) / s_n_safe) - lam_a
        q = tl.where(use, h / (2.0 * (lam_a - tl.log((1.0 - s_b_safe) / s_b_safe))), 0.0)
        d_b = tl.load(x0_prev_ptr + row64 * stride_prev + offs, mask=mask, other=0.0).to(tl.float32)
        d = d_a + q * (d_a - d_b)
    tl.store(x_out_ptr + row64 * N + offs, (c_x * x + k * d).to(x_out_ptr.dtype.element_ty), mask=mask)
    tl.store(x0_ptr + row64 * N + offs, d_a, mask=mask)


def dpm_2m_fwd(v, x, sigma, sigma_next, x0_prev, sigma_prev, out_dtype):
    B = v.shape[0]
    N = v.numel() // B if B else 0
    block, warps = _block(N)
    x_out = torch.empty(v.shape, device=v.device, dtype=out_dtype)
    x0 = torch.empty(v.shape, device=v.device, dtype=torch.float32)
    v, sv = row_view(v)
    x, sx = row_view(x)
    has_prev = x0_prev is not None
    if has_prev:
        x0_prev, sp = row_view(x0_prev)
    if B and N:
        _dpm_2m_fwd_kernel[(triton.cdiv(N, block), B)](
            v, x, x0_prev if has_prev else v, sigma, sigma_next, sigma_prev if has_prev else sigma, x_out, x0,
            N, sv, sx, sp if has_prev else 0, _sample_stride(sigma), _sample_stride(sigma_next),
            _sample_stride(sigma_prev) if has_prev else 0,
            HAS_PREV=has_prev, BLOCK=block, num_warps=warps)
    return x_out, x0
