"""Drop-in for MixGRPO's steps (Tencent-Hunyuan/MixGRPO, ``fastvideo/utils/sampling_utils.py``).

    from fastgrpo.compat.mix_grpo import DPMState, dpm_step, flow_grpo_step

``flow_grpo_step`` keeps the original signature (and accepts the newer ``sde_type``/``noise_level`` keywords);
``dpm_step`` covers what MixGRPO-Flash runs after its window: DPM-Solver++ (``args.dpm_algorithm_type =
"dpmsolver++"``), first or second order (``args.dpm_solver_order`` ≤ 2, midpoint), deterministic
(``sde_solver=False``); other settings raise a ValueError naming the ``args`` attribute. Differences: fp32 math
(the anchor rounds σ·v in bf16 with a bf16 model output); finite log-probs where the anchor's are NaN
(η = 0; the ODE steps of ``dpm_step`` return a log-prob of 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import Tensor

from ..ops import dpm_solver_2m_step, flow_step
from ._common import randn_like_anchor, schedule_value

_FAMILY = {"sde": ("flow_sde", "full"), "cps": ("cps", "cps")}


def flow_grpo_step(model_output: Tensor, latents: Tensor, eta: float, sigmas: Tensor, index: int, prev_sample,
                   generator=None, determistic: bool = False, sde_type: str = "sde",
                   noise_level: Optional[float] = None):
    """Flow-GRPO step with one σ for the batch: σ = sigmas[index] → σ' = sigmas[index+1].

    sde (noise level λ = ``noise_level`` or η): μ = x + Δ(v + g²/(2σ)·x̂1), g = λ·sqrt(σ/(1−σ)), std = g·sqrt(−Δ),
    full-Gaussian log-prob. cps (λ = ``noise_level`` or 0.8): std = σ'·sin(λπ/2), log p = mean(−(x'−μ)²).
    ε is drawn like the anchor: ``randn_tensor`` in the model output's dtype with ``generator``. ``determistic``
    replaces x' by the Euler step x + Δ·v (after drawing ε, as the anchor does).
    Returns ``(prev_sample, pred_original_sample, log_prob, prev_sample_mean, std)``; std is the applied one.
    """
    if prev_sample is not None and generator is not None:
        raise ValueError("Cannot pass both generator and prev_sample. Please make sure that either `generator` "
                         "or `prev_sample` stays `None`.")
    if sde_type not in _FAMILY:
        raise ValueError(f"sde_type must be 'sde' or 'cps', got {sde_type!r}")
    family, logprob = _FAMILY[sde_type]
    level = noise_level if noise_level is not None else (eta if sde_type == "sde" else 0.8)
    device = model_output.device
    sigma = schedule_value(sigmas, index, device)
    sigma_next = schedule_value(sigmas, index + 1, device)
    dtype = torch.promote_types(latents.dtype, model_output.dtype)
    x0_hat = latents.to(dtype) - sigma * model_output.to(dtype)
    noise = None
    if prev_sample is None:
        noise = randn_like_anchor(model_output.shape, generator, device, model_output.dtype)
    if determistic:  # the anchor overrides x' (drawn or given) by the Euler step, after drawing ε
        prev_sample, noise = latents.to(dtype) + (sigma_next - sigma) * model_output.to(dtype), None
    out = flow_step(model_output, latents, sigma, sigma_next, float(level), family=family, logprob=logprob,
                    noise=noise, x_next=prev_sample, out_dtype=dtype, return_mean=True)
    return out.x_next, x0_hat, out.log_prob, out.mean, out.std.reshape(-1)[0]


@dataclass
class DPMState:
    """History of x̂0 predictions for the multistep solver; ``model_outputs[-1]`` is the newest."""

    order: int
    model_outputs: List[Optional[Tensor]] = None
    lower_order_nums = 0

    def __post_init__(self):
        self.model_outputs = [None] * self.order

    def update(self, model_output: Tensor) -> None:
        self.model_outputs = self.model_outputs[1:] + [model_output]

    def update_lower_order(self) -> None:
        if self.lower_order_nums < self.order:
            self.lower_order_nums += 1


def _setting(args, name: str, default):
    return getattr(args, name, default)


def dpm_step(args, model_output: Tensor, sample: Tensor, step_index: int, timesteps, sigmas: Tensor,
             dpm_state: Optional[DPMState] = None, generator=None, variance_noise=None, sde_solver: bool = False):
    """DPM-Solver++ step σ_s = sigmas[step_index] → σ_t = sigmas[step_index+1] (flow form, α = 1−σ).

    x̂0 = x − σ_s·v is pushed into ``dpm_state``. First order x_t = (σ_t/σ_s)x − α_t(e^{−h}−1)·x̂0; second order
    (midpoint) D = m0 + (m0 − m1)/(2·r0), r0 = (λ_s0 − λ_s1)/h. Order rules as the anchor: first order without a
    state, for the first step and the last (``lower_order_final``); second when history allows.
    Returns ``(prev_sample, x0, log_prob)`` (log_prob: zeros, the step is deterministic).
    """
    algorithm = _setting(args, "dpm_algorithm_type", "dpmsolver++")
    if algorithm != "dpmsolver++":
        raise ValueError(f"args.dpm_algorithm_type={algorithm!r} is not supported (only 'dpmsolver++')")
    if _setting(args, "dpm_solver_type", "midpoint") != "midpoint":
        raise ValueError("args.dpm_solver_type must be 'midpoint'")
    if sde_solver:
        raise ValueError("sde_solver=True is not supported by fastgrpo's dpm_step (MixGRPO-Flash uses the ODE)")
    solver_order = int(_setting(args, "dpm_solver_order", 2))
    if solver_order not in (1, 2):
        raise ValueError(f"args.dpm_solver_order={solver_order} is not supported (1 or 2)")
    device = sample.device
    n = len(timesteps)
    lower_order_final = step_index == n - 1
    lower_order_second = step_index == n - 2 and n < 15
    second = False
    if dpm_state is not None:
        first = solver_order == 1 or dpm_state.lower_order_nums < 1 or lower_order_final
        second = not first and (solver_order == 2 or dpm_state.lower_order_nums < 2 or lower_order_second)
    sigma = schedule_value(sigmas, step_index, device)
    sigma_next = schedule_value(sigmas, step_index + 1, device)
    x0_prev = sigma_prev = None
    if second:
        x0_prev = dpm_state.model_outputs[-1]
        sigma_prev = schedule_value(sigmas, step_index - 1, device)
    prev_sample, x0 = dpm_solver_2m_step(model_output, sample, sigma, sigma_next, x0_prev, sigma_prev)
    if dpm_state is not None:
        dpm_state.update(x0)
        dpm_state.update_lower_order()
    log_prob = torch.zeros(sample.shape[0], device=device, dtype=torch.float32)
    return prev_sample, x0, log_prob
