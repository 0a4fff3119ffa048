"""``flow_step``: one flow-matching SDE/ODE sampling step fused with its Gaussian log-prob, for every recipe.

Math (per family and log-prob convention): ``fastgrpo.reference.flow_step`` — the PyTorch twin, readable beside
the papers, and the CPU path. This module checks arguments, picks the path (``fastgrpo._backend``), and exposes the
Triton kernels as ``torch.library`` custom ops (``fastgrpo::flow_step_fwd`` / ``fastgrpo::flow_step_bwd``) with
autograd, so the step works inside ``torch.compile`` and CUDA-graph capture without graph breaks.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import reference
from .._backend import pick_backend
from ..reference.flow_step import FAMILIES, KL_DIVISORS, LOGPROBS, FlowStepOutput
from ._args import Scalar, check_choice, check_finite, check_latent, check_schedule, per_sample

_EMPTY = (0,)


def _kernels():
    from fastgrpo.kernels import flow_step as k  # imported on first use: triton is optional on CPU
    return k


@torch.library.custom_op("fastgrpo::flow_step_fwd", mutates_args=())
def _fwd_op(v: Tensor, x: Tensor, sigma: Tensor, sigma_next: Tensor, eta: float, noise: Optional[Tensor],
            x_given: Optional[Tensor], mu_ref: Optional[Tensor], seed: int, family: str, logprob: str,
            kl_divisor: str, out_dtype: torch.dtype, write_mean: bool
            ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _kernels().flow_step_fwd(v, x, sigma, sigma_next, eta, noise, x_given, mu_ref, seed, family, logprob,
                                    kl_divisor, out_dtype, write_mean)


@_fwd_op.register_fake
def _(v, x, sigma, sigma_next, eta, noise, x_given, mu_ref, seed, family, logprob, kl_divisor, out_dtype,
      write_mean):
    B = v.shape[0]
    f32 = torch.float32
    return (v.new_empty(v.shape if x_given is None else _EMPTY, dtype=out_dtype),
            v.new_empty((B,), dtype=f32),
            v.new_empty(v.shape if write_mean else _EMPTY, dtype=f32),
            v.new_empty((B,), dtype=f32),
            v.new_empty((B,) if mu_ref is not None else _EMPTY, dtype=f32))


@torch.library.custom_op("fastgrpo::flow_step_bwd", mutates_args=())
def _bwd_op(grad_lp: Tensor, grad_kl: Optional[Tensor], grad_mean: Optional[Tensor], v: Tensor, x: Tensor,
            x_next: Tensor, mu_ref: Optional[Tensor], sigma: Tensor, sigma_next: Tensor, eta: float, family: str,
            logprob: str, kl_divisor: str, need_grad_x: bool) -> tuple[Tensor, Tensor]:
    return _kernels().flow_step_bwd(grad_lp, grad_kl, grad_mean, v, x, x_next, mu_ref, sigma, sigma_next, eta,
                                    family, logprob, kl_divisor, need_grad_x)


@_bwd_op.register_fake
def _(grad_lp, grad_kl, grad_mean, v, x, x_next, mu_ref, sigma, sigma_next, eta, family, logprob, kl_divisor,
      need_grad_x):
    return torch.empty_like(v), (torch.empty_like(x) if need_grad_x else x.new_empty(_EMPTY))


def _setup_context(ctx, inputs, output):
    v, x, sigma, sigma_next, eta, noise, x_given, mu_ref = inputs[:8]
    ctx.eta, ctx.family, ctx.logprob, ctx.kl_divisor = eta, inputs[9], inputs[10], inputs[11]
    # only inputs and the stored sample are kept: μ is recomputed in the backward kernel
    ctx.save_for_backward(v, x, x_given if x_given is not None else output[0], mu_ref, sigma, sigma_next)


def _backward(ctx, g_x_next, g_lp, g_mean, g_std, g_kl, bwd=_bwd_op):
    v, x, x_next, mu_ref, sigma, sigma_next = ctx.saved_tensors
    B = v.shape[0]
    # autograd hands expanded (stride-0) grads for sums; the kernel reads one value per sample
    g_lp = v.new_zeros((B,), dtype=torch.float32) if g_lp is None else g_lp.float().contiguous()
    g_kl = g_kl.float().contiguous() if (g_kl is not None and mu_ref is not None) else None
    g_mean = g_mean if (g_mean is not None and g_mean.numel() == v.numel()) else None
    need_x = ctx.needs_input_grad[1]
    grad_v, grad_x = bwd(g_lp, g_kl, g_mean, v, x, x_next, mu_ref, sigma, sigma_next, ctx.eta, ctx.family,
                         ctx.logprob, ctx.kl_divisor, need_x)
    return (grad_v, grad_x if need_x else None) + (None,) * 12


class FlowStepFunction(torch.autograd.Function):
    """The eager path: the same launchers and backward as the custom op, without the dispatcher's per-call cost
    (measured on an H100 host: the custom-op route added ~75 µs to a rollout call and ~1 ms to a training call)."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _kernels().flow_step_fwd(*inputs)
        _setup_context(ctx, inputs, output)
        ctx.mark_non_differentiable(output[0], output[3])
        return output

    @staticmethod
    def backward(ctx, *grads):
        return _backward(ctx, *grads, bwd=_kernels().flow_step_bwd)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _check_generator(generator, v: Tensor, noise, seed, x_next) -> None:
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    given = [name for name, t in (("noise", noise), ("seed", seed), ("x_next", x_next)) if t is not None]
    if given:
        raise ValueError(f"generator draws ε, which {given[0]} already fixes: give one of them")
    if generator.device.type not in ("cpu", v.device.type):
        raise ValueError(f"generator is on {generator.device}; it must be a CPU generator or on v's device "
                         f"({v.device})")


def seed_from_generator(generator: torch.Generator) -> int:
    """The kernel's Philox seed drawn from ``generator`` on the host, advancing it, so the same generator state gives
    the same ε (a different stream from ``torch.randn``'s). A CPU generator draws an integer. A CUDA generator is
    Philox (seed, offset) held on the host: the pair is mixed (splitmix64) into the seed and the offset moves on by
    one draw's 4, with no device work or sync."""
    if generator.device.type == "cpu":
        return int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
    offset = generator.get_offset()
    generator.set_offset(offset + 4)
    z = (generator.initial_seed() * 0x9E3779B97F4A7C15 + offset + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) % (2**31 - 1)


def flow_step(v: Tensor, x: Tensor, sigma: Scalar, sigma_next: Scalar, eta: float = 0.7, *,
              family: str = "flow_sde", logprob: str = "full", noise: Optional[Tensor] = None,
              seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
              x_next: Optional[Tensor] = None, mu_ref: Optional[Tensor] = None, kl_divisor: str = "flow_grpo",
              out_dtype: torch.dtype = torch.float32, return_mean: bool = False, backend: Optional[str] = None,
              check: bool = False) -> FlowStepOutput:
    """One step x → x' of a flow-matching sampler, fused with the Gaussian log-prob of x' (and optional KL).

    Δ = σ' − σ, x̂0 = x − σ·v, x̂1 = x + (1 − σ)·v;  x' = μ + s·ε, ε ~ N(0, I)
    flow_sde (Flow-GRPO 2505.05470):  μ = x + Δ·(v + g²/(2σ)·x̂1), g = η·sqrt(σ/(1−σ)), s = g·sqrt(−Δ)
    dance_sde (DanceGRPO 2505.07818): μ = x + Δ·(v + η²/(2σ)·x̂1), s = η·sqrt(−Δ)
    cps (Flow-CPS 2509.05952):        μ = (1−σ')·x̂0 + sqrt(σ'²−s²)·x̂1, s = σ'·sin(ηπ/2)
    ddim_sde (Stepwise-Flow-GRPO):    same μ, s = η·σ'·sqrt(1−σ)
    ode (Euler):                      μ = x + Δ·v, s = 0
    log p (B,) = mean over non-batch dims of  −(x'−μ)²/(2s²) − log s − log sqrt(2π)   (``logprob="full"``),
    −(x'−μ)²/(2s²) (``"quadratic"``) or −(x'−μ)² (``"cps"``); 0 for full/quadratic where s = 0.

    Args:
        v, x: model output (velocity) and sample, (B, ...) of any rank ≥ 2 and float dtype; math is fp32.
        sigma, sigma_next: σ and σ' per sample — floats or tensors of 1 or B elements (never synced).
        eta: noise level η ≥ 0.
        x' comes from exactly one of: ``x_next`` (training: the stored rollout sample), ``noise`` (ε given),
            ``seed`` (ε drawn in-kernel by Philox; on the torch path, a torch.Generator seeded with it), or
            neither (ε from ``generator`` — CPU or v's device; on the Triton path the Philox seed is drawn from
            it — or else torch's global RNG).
        mu_ref: reference mean for the fused KL term ``kl = mean((μ − μ_ref)²)/D`` (see ``kl_divisor``).
        out_dtype: storage dtype of x'. The log-prob is of x' *as stored*, so a replay matches it exactly.
        return_mean: also return μ (fp32; differentiable).
        backend: ``"triton"``/``"torch"``/``"auto"`` (default: ``FASTGRPO_BACKEND`` or auto).
        check: also validate device-tensor schedules and inputs for NaN (costs a host sync).

    Returns ``FlowStepOutput(x_next, log_prob, mean, std, kl)``. Gradients (of log_prob, kl and mean) flow to
    v and x; x' is a constant; σ, σ', η and μ_ref get none.
    """
    check_latent("v", v)
    check_latent("x", x, like=v)
    for name, t in (("noise", noise), ("x_next", x_next), ("mu_ref", mu_ref)):
        if t is not None:
            check_latent(name, t, like=v)
    check_choice("family", family, FAMILIES)
    check_choice("logprob", logprob, LOGPROBS)
    check_choice("kl_divisor", kl_divisor, KL_DIVISORS)
    if sum(t is not None for t in (noise, seed, x_next)) > 1:
        raise ValueError("give at most one of noise, seed and x_next")
    if generator is not None:
        _check_generator(generator, v, noise, seed, x_next)
    if not isinstance(eta, (float, int)) or isinstance(eta, bool):
        raise ValueError(f"eta must be a float, got {type(eta).__name__}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if not (isinstance(out_dtype, torch.dtype) and out_dtype.is_floating_point):
        raise ValueError(f"out_dtype must be a floating-point torch.dtype, got {out_dtype!r}")
    B = v.shape[0]
    sigma_t = per_sample("sigma", sigma, B, v.device)
    sigma_next_t = per_sample("sigma_next", sigma_next, B, v.device)
    check_schedule(sigma_t, sigma_next_t, force=check)
    if check:
        for name, t in (("v", v), ("x", x), ("noise", noise), ("x_next", x_next), ("mu_ref", mu_ref)):
            if t is not None:
                check_finite(name, t)

    if pick_backend("flow_step", v.device, backend) == "torch":
        if seed is not None:
            generator = torch.Generator(device=v.device).manual_seed(int(seed))
        return reference.flow_step(v, x, sigma_t, sigma_next_t, float(eta), family=family, logprob=logprob,
                                   noise=noise, generator=generator, x_next=x_next, mu_ref=mu_ref,
                                   kl_divisor=kl_divisor, out_dtype=out_dtype, return_mean=return_mean)
    if x_next is None and noise is None and seed is None:
        # a host-side draw: reproducible under torch.manual_seed / generator, no device sync
        seed = (int(torch.randint(0, 2**31 - 1, (1,)).item()) if generator is None
                else seed_from_generator(generator))
    # under torch.compile the registered custom op (traceable, no graph break); eagerly the autograd.Function
    step = _fwd_op if torch.compiler.is_compiling() else FlowStepFunction.apply
    x_out, log_prob, mean, std, kl = step(v, x, sigma_t, sigma_next_t, float(eta), noise, x_next, mu_ref,
                                          int(seed or 0), family, logprob, kl_divisor, out_dtype, return_mean)
    return FlowStepOutput(x_next if x_next is not None else x_out, log_prob, mean if return_mean else None, std,
                          kl if mu_ref is not None else None)
