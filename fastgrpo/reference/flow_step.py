"""Reference flow-matching sampling step fused with its Gaussian log-prob (plain PyTorch, fp32 math).

Notation (Flow-GRPO, arXiv 2505.05470, on SD3's rectified flow): the model predicts velocity v; noise level σ
runs 1 → 0; a step goes σ → σ' < σ; Δ = σ' − σ < 0; x̂0 = x − σ·v (predicted data);
x̂1 = x + (1 − σ)·v (predicted noise). Every family is Gaussian, x' = μ + s·ε with ε ~ N(0, I), element-wise
mean μ and one scalar std s per sample:

| family      | used by                                   | μ                                  | s                   |
|-------------|-------------------------------------------|------------------------------------|---------------------|
| flow_sde    | Flow-GRPO 2505.05470, MixGRPO, G²RPO, AdaGRPO | x + Δ·(v + g²/(2σ)·x̂1), g = η·sqrt(σ/(1−σ)) | g·sqrt(−Δ) |
| dance_sde   | DanceGRPO 2505.07818                      | x + Δ·(v + η²/(2σ)·x̂1)             | η·sqrt(−Δ)          |
| cps         | Flow-CPS 2509.05952, Flow-GRPO `cps`      | (1−σ')·x̂0 + sqrt(σ'² − s²)·x̂1     | σ'·sin(η·π/2)       |
| ddim_sde    | Stepwise-Flow-GRPO 2603.28718 §5.5        | (1−σ')·x̂0 + sqrt(σ'² − s²)·x̂1     | η·σ'·sqrt(1−σ)      |
| ode         | Euler; MixGRPO outside its window         | x + Δ·v                            | 0                   |

`flow_sde` at σ = 1 divides by zero: 1 − σ is replaced by 1 − σ' there (AdaGRPO's choice; Flow-GRPO's 1 − σ_1 is the
same number because σ = 1 only at the first step, whose σ' is σ_1).

Log-prob of x' under N(μ, s²I), per element, then averaged over all non-batch dims → (B,):
- ``full``:      −(x'−μ)²/(2s²) − log s − log sqrt(2π)   (Flow-GRPO `sde`, DanceGRPO, MixGRPO, G²RPO)
- ``quadratic``: −(x'−μ)²/(2s²)                         (AdaGRPO's released code)
- ``cps``:       −(x'−μ)²                               (Flow-GRPO `cps`, Flow-CPS)
Where s = 0 (η = 0 or the `ode` family) the Gaussian is degenerate: ``full`` and ``quadratic`` give 0 (finite, no
gradient) instead of the anchors' NaN; ``cps`` is computed as written.

Optional KL to a reference mean μ_ref (Flow-GRPO's form): kl = mean((μ − μ_ref)²)/D per sample, with
D = 2·ĝ² (``flow_grpo``: ĝ is Flow-GRPO's returned `std_dev_t`, g for flow_sde and s for the other families),
D = 2·s² (``step_std``, TempFlow-GRPO) or D = 1 (``none``, Flow-CPS); 0 where D = 0.

Gradients flow through μ into v and x; x' is a constant (it is sampled, or it is the stored rollout sample).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

FAMILIES = ("flow_sde", "dance_sde", "cps", "ddim_sde", "ode")
LOGPROBS = ("full", "quadratic", "cps")
KL_DIVISORS = ("flow_grpo", "step_std", "none")
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class FlowStepOutput(NamedTuple):
    x_next: Tensor
    """x' (the stored sample: `out_dtype`, or the given `x_next`)."""
    log_prob: Tensor
    """(B,) fp32 log-prob of x' in the chosen convention, averaged over non-batch dims."""
    mean: Optional[Tensor]
    """μ in fp32, only when ``return_mean=True``."""
    std: Tensor
    """(B,) fp32 noise std s actually applied (including sqrt(−Δ))."""
    kl: Optional[Tensor]
    """(B,) fp32 KL term against ``mu_ref``, only when ``mu_ref`` is given."""


def step_coefficients(sigma: Tensor, sigma_next: Tensor, eta: float, family: str):
    """Per-sample scalars of the step, written as μ = a·x + b·v.

    Returns ``(a, b, std, g_hat)``, each shaped like ``sigma`` (fp32), where g_hat is Flow-GRPO's `std_dev_t`.
    This is the algebra the Triton kernel evaluates; `flow_step` below keeps the papers' form instead, and the
    tests check one against the other.
    """
    sigma = sigma.float()
    sigma_next = sigma_next.float()
    delta = sigma_next - sigma
    if family == "flow_sde":
        one_minus = 1.0 - torch.where(sigma >= 1.0, sigma_next, sigma)
        h = eta * eta / (2.0 * one_minus)  # g²/(2σ)
        a = 1.0 + delta * h
        b = delta * (1.0 + h * (1.0 - sigma))
        g = torch.sqrt(eta * eta * sigma / one_minus)
        return a, b, g * torch.sqrt(-delta), g
    if family == "dance_sde":
        h = eta * eta / (2.0 * sigma)
        std = eta * torch.sqrt(-delta)
        return 1.0 + delta * h, delta * (1.0 + h * (1.0 - sigma)), std, std
    if family in ("cps", "ddim_sde"):
        std = _cps_std(sigma, sigma_next, eta, family)
        c = torch.sqrt(torch.clamp(sigma_next * sigma_next - std * std, min=0.0))
        return (1.0 - sigma_next) + c, c * (1.0 - sigma) - (1.0 - sigma_next) * sigma, std, std
    if family == "ode":
        zero = torch.zeros_like(sigma)
        return torch.ones_like(sigma), delta, zero, zero
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def _cps_std(sigma: Tensor, sigma_next: Tensor, eta: float, family: str) -> Tensor:
    if family == "cps":
        return sigma_next * math.sin(eta * math.pi / 2.0)
    return eta * sigma_next * torch.sqrt(1.0 - sigma)


def _compute_dtype(v: Tensor) -> torch.dtype:
    """fp32 math for fp32/bf16/fp16 inputs (μ overflows in bf16); fp64 stays fp64 (gradcheck)."""
    return torch.float64 if v.dtype == torch.float64 else torch.float32


def _per_sample(t: Tensor, ndim: int) -> Tensor:
    return t.reshape(-1, *([1] * (ndim - 1)))


def flow_step(v: Tensor, x: Tensor, sigma: Tensor, sigma_next: Tensor, eta: float, *, family: str = "flow_sde",
              logprob: str = "full", noise: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
              x_next: Optional[Tensor] = None, mu_ref: Optional[Tensor] = None, kl_divisor: str = "flow_grpo",
              out_dtype: torch.dtype = torch.float32, return_mean: bool = False) -> FlowStepOutput:
    """One step in the papers' form. ``sigma``/``sigma_next``: fp32 tensors of shape (B,) (or broadcastable).

    Exactly one source of x': ``x_next`` (training replay), ``noise`` (ε given), else ε ~ N(0, I) from
    ``generator`` (torch's RNG; the Triton path uses in-kernel Philox, a different stream).
    """
    nd = v.dim()
    B = v.shape[0]
    ct = _compute_dtype(v)
    sigma_b = sigma.to(ct).expand(B)
    sigma_next_b = sigma_next.to(ct).expand(B)
    s = _per_sample(sigma_b, nd)
    s_next = _per_sample(sigma_next_b, nd)
    v32, x32 = v.to(ct), x.to(ct)
    delta = s_next - s
    x0_hat = x32 - s * v32
    x1_hat = x32 + (1.0 - s) * v32

    if family == "flow_sde":
        one_minus = 1.0 - torch.where(s >= 1.0, s_next, s)  # σ = 1: use 1 − σ' (finite)
        g = eta * torch.sqrt(s / one_minus)
        mu = x32 + delta * (v32 + g * g / (2.0 * s) * x1_hat)
        std = g * torch.sqrt(-delta)
        g_hat = g
    elif family == "dance_sde":
        mu = x32 + delta * (v32 + eta * eta / (2.0 * s) * x1_hat)
        std = eta * torch.sqrt(-delta)
        g_hat = std
    elif family in ("cps", "ddim_sde"):
        std = _cps_std(s, s_next, eta, family)
        mu = (1.0 - s_next) * x0_hat + torch.sqrt(torch.clamp(s_next ** 2 - std ** 2, min=0.0)) * x1_hat
        g_hat = std
    elif family == "ode":
        mu = x32 + delta * v32
        std = torch.zeros_like(s)
        g_hat = std
    else:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

    if x_next is None:
        eps = noise.to(ct) if noise is not None else torch.randn(
            v.shape, generator=generator, device=v.device, dtype=torch.float32).to(ct)
        x_out = (mu.detach() + std * eps).to(out_dtype)
        x_used = x_out.to(ct)  # the log-prob of the sample as stored, so replay gives the same number
    else:
        x_out = x_next
        x_used = x_next.to(ct)

    dims = tuple(range(1, nd))
    sq = (x_used - mu).pow(2)
    if logprob == "cps":
        log_prob = -sq.mean(dims)
    elif logprob in ("full", "quadratic"):
        positive = std > 0
        safe = torch.where(positive, std, torch.ones_like(std))
        elem = -sq / (2.0 * safe * safe)
        if logprob == "full":
            elem = elem - torch.log(safe) - _LOG_SQRT_2PI
        log_prob = torch.where(positive.reshape(-1), elem.mean(dims), torch.zeros_like(sigma_b))
    else:
        raise ValueError(f"logprob must be one of {LOGPROBS}, got {logprob!r}")

    kl = None
    if mu_ref is not None:
        if kl_divisor == "flow_grpo":
            div = 2.0 * g_hat * g_hat
        elif kl_divisor == "step_std":
            div = 2.0 * std * std
        elif kl_divisor == "none":
            div = torch.ones_like(std)
        else:
            raise ValueError(f"kl_divisor must be one of {KL_DIVISORS}, got {kl_divisor!r}")
        div = div.reshape(-1)
        msq = (mu - mu_ref.to(ct)).pow(2).mean(dims)
        kl = torch.where(div > 0, msq / torch.where(div > 0, div, torch.ones_like(div)), torch.zeros_like(div))

    return FlowStepOutput(x_out, log_prob, mu if return_mean else None, std.reshape(-1).expand(B).clone(), kl)
