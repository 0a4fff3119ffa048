"""Drop-in for MixGRPO's sampling steps and window state (Tencent-Hunyuan/MixGRPO, checked at commit
e5cdd6a427778d8c8b2e7a48ce16972141adbe7c: ``fastvideo/utils/sampling_utils.py`` for ``flow_grpo_step``,
``dpm_step`` and ``DPMState``; ``fastvideo/utils/grpo_states.py`` for ``GRPOTrainingStates``).

    from fastgrpo.compat.mix_grpo import DPMState, GRPOTrainingStates, dpm_step, flow_grpo_step

Same signatures, return tuples, shapes, dtypes and devices; the same generator draws (diffusers' ``randn_tensor``,
in the anchor's dtype and shape) and RNG state after; every ``dpm_step`` setting the anchor runs (DPM-Solver and
DPM-Solver++, first/second/third order, midpoint and heun, ODE and SDE, with ``variance_noise`` or a generator)
with the same ``DPMState`` updates and lower-order warm-up; the settings the anchor fails on fail at the same
point with the same exception type (also a ValueError naming the setting). Gradients flow as in the anchor.

Deliberate differences:
- fp32 math: the anchor multiplies σ, Δ, the DPM coefficients and the noise std into a bf16 model output in bf16;
  fastgrpo upcasts first (results agree within bf16 rounding; returned dtypes are the anchor's). Scalar
  coefficients are evaluated in fp64.
- Finite where the anchor is NaN: the log-prob is 0 where the step's noise std is 0 (η = 0, σ' = σ, and
  ``dpm_step`` into σ = 0, whose std σ_t·√(1−e^{−2h}) vanishes); a negative η gives the sample the anchor gives and
  the log-prob of its |std|; ``flow_grpo_step`` at σ = 0 uses g²/(2σ) = η²/(2(1−σ)); DPM-Solver (not ++) into
  σ = 0 uses σ_t·e^h = α_t·σ_s/α_s. Where the anchor's update itself diverges (DPM-Solver from σ = 1, where
  α_s = 0; a second- or third-order step into σ = 0, which its lower-order-final rule avoids) so does this one.
- An index (``index``/``step_index``) selecting more than one σ raises a ValueError (the anchor broadcasts the
  σ's against the latents' last dimension); latents need a batch dimension and at least one more.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
from torch import Tensor

from ._common import randn_like_anchor
from .grpo_states import GRPOTrainingStates

__all__ = ["DPMState", "GRPOTrainingStates", "dpm_step", "flow_grpo_step"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_ALGORITHMS = ("dpmsolver++", "dpmsolver")
_SOLVER_TYPES = ("midpoint", "heun")


class _AnchorUnboundLocalError(UnboundLocalError, ValueError):
    """A setting the anchor fails on with UnboundLocalError (a variable its branches never assign)."""


class _AnchorAssertionError(AssertionError, ValueError):
    """A setting the anchor rejects with an assert."""


class _AnchorIndexError(IndexError, ValueError):
    """An index torch cannot index ``sigmas`` with."""


# ---------------------------------------------------------------------------------------------------------------
# scalars: fp64, as Python floats for a host schedule (numpy; no device work), else as 0-dim fp64 tensors on the
# schedule's device (no host sync: the anchor's dpm_step does not sync either). ``xp`` is numpy or torch.


def _host(sigmas: Tensor) -> bool:
    return sigmas.device.type == "cpu"


def _as_index(name: str, index):
    """An int from an int, a numpy integer or a one-element integer tensor; its tensor shape (σ's shape)."""
    shape = tuple(index.shape) if isinstance(index, Tensor) else ()
    if isinstance(index, Tensor) and index.numel() != 1:
        raise ValueError(f"{name} must select one sigma (the same for the whole batch), got shape {shape}")
    try:
        return operator.index(index), shape
    except TypeError:
        raise _AnchorIndexError(f"{name} must be an integer, got {index!r}") from None


def _sigma_values(sigmas: Tensor, indices, host: bool):
    if host:
        return [np.float64(sigmas[i].item()) for i in indices]
    return [sigmas[i].to(torch.float64) for i in indices]


def _finish(values, host: bool, device: torch.device):
    if host:
        return [float(v) for v in values]
    return [v.to(device) for v in values]


def _log_prob_scalars(xp, std):
    """(k, c) with log p = −k·mean(x'−μ)² − c per sample; (0, 0) where std = 0 (the anchor's NaN)."""
    positive = std != 0
    safe = xp.where(positive, std, 1.0)
    k = xp.where(positive, 1.0 / (2.0 * safe * safe), 0.0)
    c = xp.where(positive, xp.log(xp.abs(safe)) + _LOG_SQRT_2PI, 0.0)
    return k, c


def _flow_scalars(xp, sigma, sigma_next, sigma_1, eta):
    """Flow-GRPO ``sde``: μ = a·x + b·v, std s = g·√(−Δ), x̂0 = x − σ·v, Euler = x + Δ·v."""
    delta = sigma_next - sigma
    one_minus = 1.0 - xp.where(sigma == 1.0, sigma_1, sigma)  # the anchor's 1 − σ_1 at σ = 1
    half_g2_over_sigma = eta * eta / (2.0 * one_minus)       # g²/(2σ), finite at σ = 0
    a = 1.0 + half_g2_over_sigma * delta
    b = (1.0 + half_g2_over_sigma * (1.0 - sigma)) * delta
    std = eta * xp.sqrt(sigma / one_minus) * xp.sqrt(-delta)
    return a, b, std, delta


def _lambda(xp, sigma):
    return xp.log(1.0 - sigma) - xp.log(sigma)


def _dpm_scalars(xp, algorithm: str, solver_type: str, order: int, s_t, s_0, s_1=None, s_2=None):
    """Coefficients of one multistep DPM-Solver(++) update in flow form (α = 1 − σ, λ = log(α/σ)).

    h = λ_t − λ_0, r0 = (λ_0 − λ_1)/h, r1 = (λ_1 − λ_2)/h with histories m0 (newest), m1, m2 (x̂0 predictions);
    D0 = m0, D1 = (m0 − m1)/r0 (second order); third order: D1_0 = (m0 − m1)/r0, D1_1 = (m1 − m2)/r1,
    D1 = D1_0 + r0/(r0 + r1)·(D1_0 − D1_1), D2 = (D1_0 − D1_1)/(r0 + r1). With φ = e^{−h}:
    DPM-Solver++: ODE x' = (σ_t/σ_0)x + α_t(1−φ)D0 + k1·D1 + k2·D2, SDE mean (σ_t/σ_0)φ·x + α_t(1−φ²)D0 + ...,
    noise std σ_t·√(1−φ²); DPM-Solver: ODE x' = (α_t/α_0)x − σ_t(e^h−1)D0 − ..., SDE mean (α_t/α_0)x
    − 2σ_t(e^h−1)D0 − ..., std σ_t·√(e^{2h}−1); k1, k2 per ``solver_type`` and order (DPM-Solver 2206.00927,
    DPM-Solver++ 2211.01095, as MixGRPO's sampling_utils writes them).

    Returns (x-coefficient, [weights of m0, m1, m2]) for the SDE mean and for the ODE sample, and the std.
    """
    a_t, a_0 = 1.0 - s_t, 1.0 - s_0
    lam_t, lam_0 = _lambda(xp, s_t), _lambda(xp, s_0)
    h = lam_t - lam_0
    # weights of (m0, m1, m2) in D0, D1, D2
    d0 = (1.0, 0.0, 0.0)
    d1 = d2 = (0.0, 0.0, 0.0)
    if order >= 2:
        inv_r0 = h / (lam_0 - _lambda(xp, s_1))
        d10 = (inv_r0, -inv_r0, 0.0)
        d1 = d10
        if order == 3:
            inv_r1 = h / (_lambda(xp, s_1) - _lambda(xp, s_2))
            r0, r1 = 1.0 / inv_r0, 1.0 / inv_r1
            d11 = (0.0, inv_r1, -inv_r1)
            gap = tuple(p - q for p, q in zip(d10, d11))
            d1 = tuple(p + r0 / (r0 + r1) * q for p, q in zip(d10, gap))
            d2 = tuple(q / (r0 + r1) for q in gap)
    if algorithm == "dpmsolver++":
        phi = xp.exp(-h)
        one_minus_phi = -xp.expm1(-h)
        one_minus_phi2 = -xp.expm1(-2.0 * h)
        ode_x, sde_x = s_t / s_0, s_t / s_0 * phi
        ode_k, sde_k = [a_t * one_minus_phi], [a_t * one_minus_phi2]
        if order == 2 and solver_type == "midpoint":
            ode_k.append(0.5 * a_t * one_minus_phi)
            sde_k.append(0.5 * a_t * one_minus_phi2)
        elif order >= 2:  # heun, and the third order's D1 term
            ode_k.append(a_t * (-one_minus_phi / h + 1.0))
            sde_k.append(a_t * (one_minus_phi2 / (-2.0 * h) + 1.0))
        if order == 3:
            ode_k.append(-a_t * ((h - one_minus_phi) / (h * h) - 0.5))
            sde_k.append(a_t * ((one_minus_phi2 - 2.0 * h) / (4.0 * h * h) - 0.5))
        std = s_t * xp.sqrt(one_minus_phi2)
    else:  # dpmsolver; its third order never gets here (the anchor rejects it)
        # σ_t·e^h = α_t·σ_0/α_0: finite into σ_t = 0, where the anchor's 0·∞ is NaN
        s_e_h = a_t * s_0 / a_0
        s_expm1 = xp.where(s_t > 0, s_t * xp.expm1(h), s_e_h - s_t)  # σ_t(e^h − 1)
        ode_x = sde_x = a_t / a_0
        ode_k, sde_k = [-s_expm1], [-2.0 * s_expm1]
        if order == 2 and solver_type == "midpoint":
            ode_k.append(-0.5 * s_expm1)
            sde_k.append(-s_expm1)
        elif order == 2:
            ode_k.append(-(s_expm1 / h - s_t))
            sde_k.append(-2.0 * (s_expm1 / h - s_t))
        std = xp.sqrt(xp.where(s_t > 0, s_t * s_t * xp.expm1(2.0 * h), s_e_h * s_e_h))

    def weights(ks):
        ds = (d0, d1, d2)[:len(ks)]
        return [sum(k * d[j] for k, d in zip(ks, ds)) for j in range(order)]

    return (sde_x, weights(sde_k)), (ode_x, weights(ode_k)), std


# ---------------------------------------------------------------------------------------------------------------
# element-wise work: each pass writes one fresh or owned buffer; in place only where autograd allows it


def _fma_(out: Tensor, t: Tensor, c) -> Tensor:
    """out += c·t for a float or a 0-dim tensor c."""
    return out.addcmul_(t, c) if isinstance(c, Tensor) else out.add_(t, alpha=c)


def _combine(terms) -> Tensor:
    """Σ c·t over (c, t) pairs (the first t sets the dtype), in len(terms) passes and one buffer."""
    (c, t), rest = terms[0], terms[1:]
    out = torch.mul(t, c)
    for c, t in rest:
        _fma_(out, t, c)
    return out


def _add_scaled_noise(mean: Tensor, noise: Tensor, std, owned: bool) -> Tensor:
    """mean + std·noise in one pass, written into ``noise``'s buffer when it is this call's own (drawn here or
    upcast here) and autograd does not need a fresh output."""
    eps = noise.to(mean.dtype)
    reuse = ((owned or eps is not noise) and eps.shape == mean.shape
             and not (mean.requires_grad and torch.is_grad_enabled()))
    out = {"out": eps} if reuse else {}
    if isinstance(std, Tensor):
        return torch.addcmul(mean, eps, std, **out)
    return torch.add(mean, eps, alpha=std, **out)


def _log_prob(x_stored: Tensor, mean: Tensor, k, c, dtype: torch.dtype) -> Tensor:
    """−k·mean(x' − μ)² − c per sample (x' as stored, detached): one difference pass and one norm pass."""
    diff = torch.sub(x_stored.detach(), mean)
    flat = diff.reshape(diff.shape[0], -1)
    sq = torch.linalg.vector_norm(flat, dim=1).square()
    scale = -k / flat.shape[1]
    return (sq * scale if sq.requires_grad else sq.mul_(scale)).sub(c).to(dtype)


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _check_latent(name: str, t) -> None:
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point torch.Tensor, got "
                         f"{t.dtype if isinstance(t, Tensor) else type(t).__name__}")
    if t.dim() < 2:
        raise ValueError(f"{name} must have a batch dim and at least one more, got shape {tuple(t.shape)}")


def _check_sigmas(sigmas) -> None:
    if not isinstance(sigmas, Tensor) or not sigmas.is_floating_point() or sigmas.dim() != 1:
        raise ValueError("sigmas must be a 1-D floating-point torch.Tensor (the σ schedule), got "
                         f"{tuple(sigmas.shape) if isinstance(sigmas, Tensor) else type(sigmas).__name__}")


# ---------------------------------------------------------------------------------------------------------------


def flow_grpo_step(model_output: Tensor, latents: Tensor, eta: float, sigmas: Tensor, index: int, prev_sample,
                   generator: Optional[torch.Generator] = None, determistic: bool = False):
    """Flow-GRPO ``sde`` step σ = sigmas[index] → σ' = sigmas[index + 1] with its log-prob (MixGRPO's copy).

    Δ = σ' − σ, g = η·√(σ/(1 − σ̃)) with σ̃ = sigmas[1] where σ = 1, else σ;
    μ = x·(1 + g²Δ/(2σ)) + v·(1 + g²(1−σ)/(2σ))·Δ, s = g·√(−Δ), x' = μ + s·ε (ε: ``randn_tensor`` in the model
    output's dtype from ``generator``, drawn whenever ``prev_sample`` is None); ``determistic``: x' = x + Δ·v
    (ε is still drawn). log p = mean over non-batch dims of −(x'−μ)²/(2s²) − log s − log √(2π), x' as returned.
    ``prev_sample`` with ``generator`` raises ValueError, as the anchor.

    Returns ``(prev_sample, pred_original_sample = x − σ·v, log_prob (B,), prev_sample_mean, s)``: s a tensor of
    σ's shape (0-dim for an int index) in the schedule's dtype on the model output's device; the others in the
    latents'/model output's promoted dtype (a given ``prev_sample`` is returned as is). Deliberate differences
    (module docstring): fp32 math; log p = 0 where s = 0 (η = 0) and |s| in the log where η < 0, where the
    anchor's is NaN; μ finite at σ = 0; one σ per call (an index of one element).
    Anchor: Tencent-Hunyuan/MixGRPO@e5cdd6a427778d8c8b2e7a48ce16972141adbe7c fastvideo/utils/sampling_utils.py.
    """
    if prev_sample is not None and generator is not None:
        raise ValueError("Cannot pass both generator and prev_sample. Please make sure that either `generator` or"
                         " `prev_sample` stays `None`.")
    _check_latent("model_output", model_output)
    _check_latent("latents", latents)
    if prev_sample is not None:
        _check_latent("prev_sample", prev_sample)
    _check_sigmas(sigmas)
    i, index_shape = _as_index("index", index)
    device = model_output.device
    host = _host(sigmas)

    xp = np if host else torch
    sigma, sigma_next, sigma_1 = _sigma_values(sigmas, (i, i + 1, 1), host)
    with np.errstate(all="ignore"):
        a, b, std, delta = _flow_scalars(xp, sigma, sigma_next, sigma_1, float(eta))
        k, c = _log_prob_scalars(xp, std)
    # a fill, not a host→device copy, for a host schedule
    std_out = (torch.full(index_shape, float(std), dtype=sigmas.dtype, device=device) if host
               else std.to(device=device, dtype=sigmas.dtype).reshape(index_shape))
    sigma, a, b, std, delta, k, c = _finish((sigma, a, b, std, delta, k, c), host, device)

    dtype = torch.promote_types(latents.dtype, model_output.dtype)
    ct = _compute_dtype(dtype, prev_sample.dtype if prev_sample is not None else dtype)
    x, v = latents.to(ct), model_output.to(ct)
    x0 = torch.add(x, v, alpha=-sigma) if host else torch.sub(x, v * sigma)
    mean = _combine(((a, x), (b, v)))
    noise = None
    if prev_sample is None:
        noise = randn_like_anchor(model_output.shape, generator, device, model_output.dtype)
    if determistic:
        prev_sample = (torch.add(x, v, alpha=delta) if host else torch.add(x, v * delta)).to(dtype)
    elif prev_sample is None:
        prev_sample = _add_scaled_noise(mean, noise, std, owned=True).to(dtype)
    log_prob = _log_prob(prev_sample, mean, k, c, torch.promote_types(prev_sample.dtype, dtype))
    return prev_sample, x0.to(dtype), log_prob, mean.to(dtype), std_out


@dataclass
class DPMState:
    """History of x̂0 predictions for the multistep solver: ``model_outputs`` holds ``order`` slots, newest last
    (None until filled); ``update`` shifts it in place; ``lower_order_nums`` counts updates up to ``order`` (a class
    attribute until first incremented, as the anchor's). No deliberate differences.
    Anchor: Tencent-Hunyuan/MixGRPO@e5cdd6a427778d8c8b2e7a48ce16972141adbe7c fastvideo/utils/sampling_utils.py."""

    order: int
    model_outputs: List[Optional[Tensor]] = None
    lower_order_nums = 0

    def __post_init__(self):
        self.model_outputs = [None] * self.order

    def update(self, model_output: Tensor):
        for j in range(self.order - 1):
            self.model_outputs[j] = self.model_outputs[j + 1]
        self.model_outputs[-1] = model_output

    def update_lower_order(self):
        if self.lower_order_nums < self.order:
            self.lower_order_nums += 1


def dpm_step(args, model_output: Tensor, sample: Tensor, step_index: int, timesteps: list, sigmas: Tensor,
             dpm_state: Optional[DPMState] = None, generator=None, variance_noise: Optional[Tensor] = None,
             sde_solver: bool = False):
    """One multistep DPM-Solver(++) step σ_0 = sigmas[step_index] → σ_t = sigmas[step_index + 1], flow form.

    x̂0 = x − σ_0·v is pushed into ``dpm_state`` (before the update, as the anchor). Order, as the anchor: first
    without a state, while ``lower_order_nums`` < 1, when ``args.dpm_solver_order == 1`` and on the last step
    (``step_index == len(timesteps) − 1``); else second while ``lower_order_nums`` < 2, when the order is 2, and on
    the second-to-last step of a schedule shorter than 15; else third. ``args.dpm_algorithm_type``:
    "dpmsolver++" or "dpmsolver"; ``args.dpm_solver_type`` (second order only): "midpoint" or "heun". Coefficients:
    ``_dpm_scalars``. ``sde_solver``: x' = μ_SDE + s·ε with ε = ``variance_noise`` (as fp32) or fp32
    ``randn_tensor`` from ``generator``; else x' is the ODE update. Either way log p = mean over non-batch dims of
    −(x'−μ_SDE)²/(2s²) − log s − log √(2π) with x' as returned (on the ODE path x' ≠ μ_SDE, as in the anchor).
    DPM-Solver's third order raises AssertionError (SDE) or UnboundLocalError (ODE), and an unknown algorithm or
    (second-order) solver type UnboundLocalError, after the state update and the draw, as the anchor; each is also
    a ValueError.

    Returns ``(prev_sample, x̂0, log_prob (B,))``: x' and x̂0 in the promoted dtype of sample and model output,
    log_prob in fp32 (fp64 for fp64 inputs). Deliberate differences (module docstring): fp32 math; log p = 0 into
    σ = 0 (std 0), where the anchor's is NaN; DPM-Solver finite into σ = 0; one σ per call (an index of one
    element). Anchor: Tencent-Hunyuan/MixGRPO@e5cdd6a427778d8c8b2e7a48ce16972141adbe7c
    fastvideo/utils/sampling_utils.py.
    """
    _check_latent("model_output", model_output)
    _check_latent("sample", sample)
    _check_sigmas(sigmas)
    i, _ = _as_index("step_index", step_index)
    n = len(timesteps)
    lower_order_final = i == n - 1
    lower_order_second = i == n - 2 and n < 15
    host = _host(sigmas)
    device = sample.device

    dtype = torch.promote_types(sample.dtype, model_output.dtype)
    ct = _compute_dtype(dtype)
    x = sample.to(ct)
    (sigma,) = _finish(_sigma_values(sigmas, (i,), host), host, device)
    x0 = (torch.add(x, model_output.to(ct), alpha=-sigma) if host
          else torch.sub(x, model_output.to(ct) * sigma)).to(dtype)
    if dpm_state is not None:
        dpm_state.update(x0)

    noise, owned = None, False
    if sde_solver and variance_noise is None:
        noise, owned = randn_like_anchor(x0.shape, generator, x0.device, torch.float32), True
    elif sde_solver:
        noise = variance_noise.to(device=x0.device, dtype=torch.float32)

    if dpm_state:
        if args.dpm_solver_order == 1 or dpm_state.lower_order_nums < 1 or lower_order_final:
            order = 1
        elif args.dpm_solver_order == 2 or dpm_state.lower_order_nums < 2 or lower_order_second:
            order = 2
        else:
            order = 3
        # newest first; a state shorter than the order raises IndexError, as the anchor
        history = [x0] if order == 1 else [dpm_state.model_outputs[-j] for j in range(1, order + 1)]
    else:
        order, history = 1, [x0]
    algorithm = args.dpm_algorithm_type
    solver_type = args.dpm_solver_type if order == 2 else None
    if algorithm not in _ALGORITHMS or (order == 2 and solver_type not in _SOLVER_TYPES):
        bad = (f"args.dpm_algorithm_type={algorithm!r} (one of {_ALGORITHMS})" if algorithm not in _ALGORITHMS
               else f"args.dpm_solver_type={solver_type!r} (one of {_SOLVER_TYPES})")
        raise _AnchorUnboundLocalError(f"{bad}: the anchor's update assigns no sample for it")
    if algorithm == "dpmsolver" and order == 3:
        if sde_solver:
            raise _AnchorAssertionError("SDE solver is not supported for DPMSolver (args.dpm_algorithm_type="
                                        "'dpmsolver' at third order, args.dpm_solver_order="
                                        f"{args.dpm_solver_order!r})")
        raise _AnchorUnboundLocalError("args.dpm_algorithm_type='dpmsolver' at third order (args.dpm_solver_order="
                                       f"{args.dpm_solver_order!r}): the anchor's update leaves its mean unset")

    xp = np if host else torch
    s_idx = (i + 1, i, i - 1, i - 2)[:order + 1]
    with np.errstate(all="ignore"):
        (sde_x, sde_w), (ode_x, ode_w), std = _dpm_scalars(xp, algorithm, solver_type, order,
                                                           *_sigma_values(sigmas, s_idx, host))
        k, c = _log_prob_scalars(xp, std)
    sde_x, ode_x, std, k, c = _finish((sde_x, ode_x, std, k, c), host, device)
    sde_w, ode_w = _finish(sde_w, host, device), _finish(ode_w, host, device)

    ct = _compute_dtype(ct, *(getattr(m, "dtype", ct) for m in history))
    x = x.to(ct)
    mean = _combine([(sde_x, x)] + list(zip(sde_w, history)))
    if sde_solver:
        x_next = _add_scaled_noise(mean, noise, std, owned)
    else:
        x_next = _combine([(ode_x, x)] + list(zip(ode_w, history)))
    if dpm_state is not None:
        dpm_state.update_lower_order()
    prev_sample = x_next.to(dtype)
    return prev_sample, x0, _log_prob(prev_sample, mean, k, c, ct)
