"""Reference DPM-Solver++ 2M (midpoint) step in flow form — the ODE MixGRPO-Flash runs after its SDE window.

Flow form (DPM-Solver++, Lu et al., arXiv 2211.01095, with α_t = 1 − σ and σ_t = σ): α = 1 − σ, λ = log(α/σ),
x̂0 = x − σ·v. With the newest prediction D_a = x̂0 at σ_a (the current step) and the previous D_b at σ_b:
    h = λ' − λ_a,  r = (λ_a − λ_b)/h,  D = D_a + (D_a − D_b)/(2r),
    x' = (σ'/σ_a)·x − α'·(e^{−h} − 1)·D.
Without a previous prediction, and on the final step to σ' = 0 (``lower_order_final``), the step is first order:
D = D_a (at σ' = 0 this is x' = D_a).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _lam(sigma: Tensor) -> Tensor:
    return torch.log((1.0 - sigma) / sigma)


def dpm_solver_2m_step(v: Tensor, x: Tensor, sigma: Tensor, sigma_next: Tensor,
                       x0_prev: Optional[Tensor] = None, sigma_prev: Optional[Tensor] = None,
                       out_dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Return ``(x_next, x0_hat)``; keep ``x0_hat`` (fp32) as the next call's ``x0_prev``.

    ``sigma``, ``sigma_next``, ``sigma_prev``: fp32 tensors of shape (B,) (or broadcastable).
    """
    B, nd = v.shape[0], v.dim()
    shape = (-1,) + (1,) * (nd - 1)
    ct = torch.float64 if v.dtype == torch.float64 else torch.float32
    s_a = sigma.to(ct).expand(B).reshape(shape)
    s_next = sigma_next.to(ct).expand(B).reshape(shape)
    x32 = x.to(ct)
    d_a = x32 - s_a * v.to(ct)
    final = s_next == 0
    # where σ' = 0 the first-order step is exactly x' = D_a; keep the logs finite there
    s_next_safe = torch.where(final, torch.full_like(s_next, 0.5), s_next)
    h = _lam(s_next_safe) - _lam(s_a)
    D = d_a
    if x0_prev is not None:
        s_b = sigma_prev.to(ct).expand(B).reshape(shape)
        r = (_lam(s_a) - _lam(s_b)) / h
        D = torch.where(final, d_a, d_a + (d_a - x0_prev.to(ct)) / (2.0 * r))
    x_next = (s_next_safe / s_a) * x32 - (1.0 - s_next_safe) * torch.expm1(-h) * D
    x_next = torch.where(final, d_a, x_next)
    return x_next.to(out_dtype), d_a
