"""``dpm_solver_2m_step``: DPM-Solver++ 2M (midpoint) in flow form, the ODE after MixGRPO-Flash's window.

Math: ``fastgrpo.reference.dpm_solver``. A sampling-only op (no autograd): the steps after the window are not
trained. Registered as ``fastgrpo::dpm_solver_2m`` so it runs inside ``torch.compile`` / CUDA graphs.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import reference
from .._backend import pick_backend
from ._args import Scalar, check_latent, check_schedule, per_sample


@torch.library.custom_op("fastgrpo::dpm_solver_2m", mutates_args=())
def _dpm_op(v: Tensor, x: Tensor, sigma: Tensor, sigma_next: Tensor, x0_prev: Optional[Tensor],
            sigma_prev: Optional[Tensor], out_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    from fastgrpo.kernels import dpm_solver as k
    return k.dpm_2m_fwd(v, x, sigma, sigma_next, x0_prev, sigma_prev, out_dtype)


@_dpm_op.register_fake
def _(v, x, sigma, sigma_next, x0_prev, sigma_prev, out_dtype):
    return v.new_empty(v.shape, dtype=out_dtype), v.new_empty(v.shape, dtype=torch.float32)


def dpm_solver_2m_step(v: Tensor, x: Tensor, sigma: Scalar, sigma_next: Scalar, x0_prev: Optional[Tensor] = None,
                       sigma_prev: Optional[Scalar] = None, *, out_dtype: torch.dtype = torch.float32,
                       backend: Optional[str] = None, check: bool = False) -> tuple[Tensor, Tensor]:
    """One DPM-Solver++ 2M step σ → σ' from velocity ``v`` at sample ``x``.

    α = 1−σ, λ = log(α/σ), D_a = x − σ·v, D_b = ``x0_prev`` (the previous step's x̂0, at ``sigma_prev``):
    h = λ' − λ_a, r = (λ_a − λ_b)/h, D = D_a + (D_a − D_b)/(2r), x' = (σ'/σ)·x − α'·(e^{−h} − 1)·D.
    First order (D = D_a) without ``x0_prev`` and on the final step to σ' = 0.

    Returns ``(x_next, x0_hat)``: pass ``x0_hat`` and this ``sigma`` as the next call's ``x0_prev``/``sigma_prev``.
    """
    check_latent("v", v)
    check_latent("x", x, like=v)
    if (x0_prev is None) != (sigma_prev is None):
        raise ValueError("give x0_prev and sigma_prev together (the previous x̂0 and its sigma)")
    if x0_prev is not None:
        check_latent("x0_prev", x0_prev, like=v)
    B = v.shape[0]
    sigma_t = per_sample("sigma", sigma, B, v.device)
    sigma_next_t = per_sample("sigma_next", sigma_next, B, v.device)
    sigma_prev_t = per_sample("sigma_prev", sigma_prev, B, v.device) if sigma_prev is not None else None
    check_schedule(sigma_t, sigma_next_t, force=check)
    if pick_backend("dpm_solver_2m_step", v.device, backend) == "torch":
        return reference.dpm_solver_2m_step(v, x, sigma_t, sigma_next_t, x0_prev, sigma_prev_t, out_dtype)
    if torch.compiler.is_compiling():
        return _dpm_op(v, x, sigma_t, sigma_next_t, x0_prev, sigma_prev_t, out_dtype)
    from fastgrpo.kernels import dpm_solver as k  # eagerly: the launcher itself, no dispatcher cost
    return k.dpm_2m_fwd(v, x, sigma_t, sigma_next_t, x0_prev, sigma_prev_t, out_dtype)
