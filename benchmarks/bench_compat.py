"""Benchmark of the drop-in shims (``fastgrpo.compat``) against the anchors' own functions, side by side.

Each ``anchor`` provider is the anchor's function written out in this file as the anchor computes it (its
per-sample ``index_for_timestep(t)`` + ``.item()`` lookups, its dtype casts and one temporary per element-wise
operation), never its code; ``fastgrpo`` is the shim. Workloads at the anchors' own shapes:
- Flow-GRPO ``sde_step_with_logprob`` (``sde`` and ``cps``): SD3.5-M 512² latents, 8 × 16 × 64 × 64, fp32 latents,
  fp32 or bf16 model output, per-sample timesteps (B,) as the train scripts pass them;
- DanceGRPO ``flux_step``: FLUX-packed 8 × 1024 × 64 fp32 latents, bf16 model output, an int index;
- AdaGRPO ``flowsde_prob_func``: a (1, 1024, 64) bf16 anchor latent and velocity, the log-prob of a group of 12
  bf16 branch latents (its ``compute_loss``);
- MixGRPO ``flow_grpo_step`` (8 × 1024 × 64, bf16 output) and ``dpm_step`` (MixGRPO-Flash's DPM-Solver++ 2M ODE
  step after the window, second order), through ``fastgrpo.compat.mix_grpo``.
Modes: ``rollout`` (a generator draws ε; no grad), ``replay`` (log-prob of a given prev_sample, no grad) and
``training`` (the same with the gradient of Σ log p w.r.t. the model output: forward + backward).

Timing: the two providers of a workload run interleaved (one call each, alternately) within a budget and each
gets the median: on a shared machine both see the same load. ``speedup`` = anchor ms / fastgrpo ms.
"""
from __future__ import annotations

import math
import os
import statistics
import time
import types

import torch

try:
    from benchmarks import common
except ImportError:  # run as a script: python benchmarks/bench_compat.py
    import common

ETA = 0.7
SD3 = (8, 16, 64, 64)
FLUX = (8, 1024, 64)
ADA_GROUP = 12
STEPS, STEP_INDEX, SHIFT = 10, 3, 3.0
MODES = ("rollout", "replay", "training")

PREDICTION = (
    "Prediction (written before optimising, from pass counts at 8×16×64×64 on 2 cores, where one fp32 pass over "
    "the latents costs ~0.1 ms and drawing ε ~2 ms): the anchor's Flow-GRPO step makes ~9 full passes plus one "
    "temporary each (and 8 per-sample lookups with a host sync each); the shim's PyTorch path 4 (μ in two, x' − μ, "
    "a norm) plus one for x'. Expected: replay ~2×, training ~2× (backward: 2 passes vs ~8), rollout ~1.3× "
    "(ε dominates both); DanceGRPO ~2× (the anchor adds the score form's 4 passes); AdaGRPO ~1.5×.")
BEFORE = (
    "Measured before the rewrite (the shims of commit fb983db, same machine and script, 2026-12-06, load ~1): "
    "anchor vs old shim, ms — Flow-GRPO sde fp32 rollout 6.29 vs 8.48, replay 2.04 vs 4.06, training 4.40 vs "
    "6.38; bf16 output rollout 5.45 vs 9.06, replay 1.91 vs 2.92, training 4.94 vs 7.47; DanceGRPO rollout 6.33 "
    "vs 7.13, replay 2.46 vs 2.64, training 7.50 vs 5.85 (the old DanceGRPO log-prob also lacked its constants).")


# --- the anchors, as they compute (see the module docstring) -------------------------------------------------------

def anchor_flow_grpo(scheduler, model_output, timestep, sample, noise_level=ETA, prev_sample=None, generator=None,
                     sde_type="sde"):
    """Flow-GRPO's step (yifan123/flow_grpo@54809b5): upcasts, σ per sample by ``index_for_timestep``, the mean
    and log-prob element by element."""
    from diffusers.utils.torch_utils import randn_tensor
    model_output, sample = model_output.float(), sample.float()
    if prev_sample is not None:
        prev_sample = prev_sample.float()
    step = [scheduler.index_for_timestep(t) for t in timestep]
    view = (-1,) + (1,) * (sample.dim() - 1)
    sigma = scheduler.sigmas[step].view(view)
    sigma_prev = scheduler.sigmas[[i + 1 for i in step]].view(view)
    sigma_max = scheduler.sigmas[1].item()
    dt = sigma_prev - sigma
    if sde_type == "sde":
        std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * noise_level
        mean = (sample * (1 + std_dev_t**2 / (2 * sigma) * dt)
                + model_output * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt)
        scale = std_dev_t * torch.sqrt(-1 * dt)
    else:
        std_dev_t = sigma_prev * math.sin(noise_level * math.pi / 2)
        x0, x1 = sample - sigma * model_output, sample + model_output * (1 - sigma)
        mean = x0 * (1 - sigma_prev) + x1 * torch.sqrt(sigma_prev**2 - std_dev_t**2)
        scale = std_dev_t
    if prev_sample is None:
        noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                             dtype=model_output.dtype)
        prev_sample = mean + scale * noise
    if sde_type == "sde":
        log_prob = (-((prev_sample.detach() - mean) ** 2) / (2 * scale**2) - torch.log(scale)
                    - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi))))
    else:
        log_prob = -((prev_sample.detach() - mean) ** 2)
    return prev_sample, log_prob.mean(dim=tuple(range(1, log_prob.ndim))), mean, std_dev_t


def anchor_dance(model_output, latents, eta, sigmas, index, prev_sample, grpo, sde_solver):
    """DanceGRPO's ``flux_step`` (XueZeyue/DanceGRPO@15cc71d): 0-dim σ times the bf16 output stays bf16."""
    sigma = sigmas[index]
    dsigma = sigmas[index + 1] - sigma
    mean = latents + dsigma * model_output
    x0 = latents - sigma * model_output
    std = eta * math.sqrt(sigma - sigmas[index + 1])
    if sde_solver:
        score = -(latents - x0 * (1 - sigma)) / sigma**2
        mean = mean + (-0.5 * eta**2 * score) * dsigma
    if not grpo:
        return mean, x0
    if prev_sample is None:
        prev_sample = mean + torch.randn_like(mean) * std
    log_prob = (-((prev_sample.detach().float() - mean.float()) ** 2) / (2 * std**2) - math.log(std)
                - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi))))
    return prev_sample, x0, log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


def anchor_adagrpo(image_latents, pred_velocity, sigma_input, sigma_target, eta):
    """AdaGRPO's ``flowsde_prob_func`` (Bujiazi/GRPO-Series@c4028f9)."""
    std = torch.sqrt(sigma_input / (1 - torch.where(sigma_input == 1, sigma_target, sigma_input))) * eta
    dt = sigma_target - sigma_input
    mean = (image_latents.float() * (1 + std**2 / (2 * sigma_input) * dt)
            + pred_velocity.float() * (1 + std**2 * (1 - sigma_input) / (2 * sigma_input)) * dt)
    denom = 2 * (std**2) * dt.abs()
    return (lambda latents, m: -((latents.detach().float() - m) ** 2).mean(dim=(1, 2)) / denom), mean


def anchor_mix_flow_grpo(model_output, latents, eta, sigmas, index, prev_sample, generator=None):
    """MixGRPO's ``flow_grpo_step`` (Tencent-Hunyuan/MixGRPO@e5cdd6a): ε in the model output's dtype."""
    from diffusers.utils.torch_utils import randn_tensor
    device = model_output.device
    sigma, sigma_prev = sigmas[index].to(device), sigmas[index + 1].to(device)
    sigma_max = sigmas[1].item()
    dt = sigma_prev - sigma
    x0 = latents - sigma * model_output
    std = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * eta
    mean = latents * (1 + std**2 / (2 * sigma) * dt) + model_output * (1 + std**2 * (1 - sigma) / (2 * sigma)) * dt
    if prev_sample is None:
        noise = randn_tensor(model_output.shape, generator=generator, device=device, dtype=model_output.dtype)
        prev_sample = mean + std * torch.sqrt(-1 * dt) * noise
    log_prob = (-((prev_sample.detach() - mean) ** 2) / (2 * ((std * torch.sqrt(-1 * dt)) ** 2))
                - torch.log(std * torch.sqrt(-1 * dt)) - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi))))
    return prev_sample, x0, log_prob.mean(dim=tuple(range(1, log_prob.ndim))), mean, std * torch.sqrt(-1 * dt)


def anchor_mix_dpm(model_output, sample, step_index, sigmas, history):
    """MixGRPO's ``dpm_step`` for Flash's ODE (DPM-Solver++, midpoint, second order, ``sde_solver=False``): x̂0 into
    the history, the SDE mean and its log-prob computed anyway, the ODE update, x' cast to the output's dtype."""
    x0 = sample - sigmas[step_index] * model_output
    history[:] = history[1:] + [x0]
    sample = sample.to(torch.float32)

    def alpha_sigma(s):
        return 1 - s, s

    alpha_t, sigma_t = alpha_sigma(sigmas[step_index + 1])
    alpha_s0, sigma_s0 = alpha_sigma(sigmas[step_index])
    alpha_s1, sigma_s1 = alpha_sigma(sigmas[step_index - 1])
    lambda_t = torch.log(alpha_t) - torch.log(sigma_t)
    lambda_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
    lambda_s1 = torch.log(alpha_s1) - torch.log(sigma_s1)
    m0, m1 = history[-1], history[-2]
    h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
    r0 = h_0 / h
    d0, d1 = m0, (1.0 / r0) * (m0 - m1)
    mean = ((sigma_t / sigma_s0 * torch.exp(-h)) * sample + (alpha_t * (1 - torch.exp(-2.0 * h))) * d0
            + 0.5 * (alpha_t * (1 - torch.exp(-2.0 * h))) * d1)
    std, dt_sqrt = sigma_t, torch.sqrt(1.0 - torch.exp(-2 * h))
    x_t = (sigma_t / sigma_s0) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * d0 \
        - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1
    x_t = x_t.to(x0.dtype)
    log_prob = (-((x_t.detach() - mean) ** 2) / (2 * ((std * dt_sqrt) ** 2)) - torch.log(std * dt_sqrt)
                - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi))))
    return x_t, x0, log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


# --- workloads ---------------------------------------------------------------------------------------------------

def _grad(fn, leaf):
    """Forward + backward of Σ log p into the model output (``fn`` returns the log-prob)."""
    return torch.autograd.grad(fn().sum(), leaf)


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler
    scheduler = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    scheduler.set_timesteps(STEPS)
    return scheduler


def flow_grpo_workloads(model_dtype, sde_type):
    from fastgrpo.compat.flow_grpo import sde_step_with_logprob
    scheduler = _scheduler()
    v = common.randn(SD3, model_dtype, torch.device("cpu"))
    x = common.randn(SD3, torch.float32, torch.device("cpu"))
    t = scheduler.timesteps[[STEP_INDEX] * SD3[0]]
    gen = torch.Generator().manual_seed(0)
    prev = anchor_flow_grpo(scheduler, v, t, x, generator=gen, sde_type=sde_type)[0]
    leaf = v.detach().clone().requires_grad_(True)
    case = f"flow_grpo_{sde_type}_{'bf16' if model_dtype == torch.bfloat16 else 'fp32'}"

    def ours(**kw):
        return lambda: sde_step_with_logprob(scheduler, **kw, timestep=t, sample=x, noise_level=ETA,
                                             sde_type=sde_type)

    def theirs(**kw):
        return lambda: anchor_flow_grpo(scheduler, **kw, timestep=t, sample=x, sde_type=sde_type)

    yield case, "rollout", theirs(model_output=v, generator=gen), ours(model_output=v, generator=gen)
    yield case, "replay", theirs(model_output=v, prev_sample=prev), ours(model_output=v, prev_sample=prev)
    yield (case, "training", lambda: _grad(lambda: theirs(model_output=leaf, prev_sample=prev)()[1], leaf),
           lambda: _grad(lambda: ours(model_output=leaf, prev_sample=prev)()[1], leaf))


def dance_workloads():
    from fastgrpo.compat.dance_grpo import flux_step
    sigmas = _shifted_sigmas(16)
    v = common.randn(FLUX, torch.bfloat16, torch.device("cpu"))
    x = common.randn(FLUX, torch.float32, torch.device("cpu"))
    prev = anchor_dance(v, x, ETA, sigmas, STEP_INDEX, None, True, True)[0]
    leaf = v.detach().clone().requires_grad_(True)
    case = "dance_flux_step_bf16"
    yield (case, "rollout", lambda: anchor_dance(v, x, ETA, sigmas, STEP_INDEX, None, True, True),
           lambda: flux_step(v, x, ETA, sigmas, STEP_INDEX, None, True, True))
    yield (case, "replay", lambda: anchor_dance(v, x, ETA, sigmas, STEP_INDEX, prev, True, True),
           lambda: flux_step(v, x, ETA, sigmas, STEP_INDEX, prev, True, True))
    yield (case, "training", lambda: _grad(lambda: anchor_dance(leaf, x, ETA, sigmas, STEP_INDEX, prev, True,
                                                                True)[2], leaf),
           lambda: _grad(lambda: flux_step(leaf, x, ETA, sigmas, STEP_INDEX, prev, True, True)[2], leaf))


def adagrpo_workloads():
    from fastgrpo.compat.adagrpo import flowsde_prob_func
    sigmas = _shifted_sigmas(16)
    s, sn = sigmas[2], sigmas[3]
    x = common.randn((1,) + FLUX[1:], torch.bfloat16, torch.device("cpu"))
    v = common.randn((1,) + FLUX[1:], torch.bfloat16, torch.device("cpu"))
    group = common.randn((ADA_GROUP,) + FLUX[1:], torch.bfloat16, torch.device("cpu"))
    leaf = v.detach().clone().requires_grad_(True)

    def run(fn, velocity):
        log_prob_fn, mean = fn(x, velocity, s, sn, ETA)
        return log_prob_fn(group, mean)

    case = "adagrpo_flowsde_bf16"
    yield case, "replay", lambda: run(anchor_adagrpo, v), lambda: run(flowsde_prob_func, v)
    yield (case, "training", lambda: _grad(lambda: run(anchor_adagrpo, leaf), leaf),
           lambda: _grad(lambda: run(flowsde_prob_func, leaf), leaf))


def mix_workloads():
    from fastgrpo.compat import mix_grpo
    sigmas = _shifted_sigmas(25)
    v = common.randn(FLUX, torch.bfloat16, torch.device("cpu"))
    x = common.randn(FLUX, torch.float32, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    prev = anchor_mix_flow_grpo(v, x, ETA, sigmas, STEP_INDEX, None, generator=gen)[0]
    leaf = v.detach().clone().requires_grad_(True)
    case = "mix_flow_grpo_step_bf16"
    yield (case, "rollout", lambda: anchor_mix_flow_grpo(v, x, ETA, sigmas, STEP_INDEX, None, generator=gen),
           lambda: mix_grpo.flow_grpo_step(v, x, ETA, sigmas, STEP_INDEX, None, generator=gen))
    yield (case, "replay", lambda: anchor_mix_flow_grpo(v, x, ETA, sigmas, STEP_INDEX, prev),
           lambda: mix_grpo.flow_grpo_step(v, x, ETA, sigmas, STEP_INDEX, prev))
    yield (case, "training", lambda: _grad(lambda: anchor_mix_flow_grpo(leaf, x, ETA, sigmas, STEP_INDEX,
                                                                        prev)[2], leaf),
           lambda: _grad(lambda: mix_grpo.flow_grpo_step(leaf, x, ETA, sigmas, STEP_INDEX, prev)[2], leaf))
    args = types.SimpleNamespace(dpm_algorithm_type="dpmsolver++", dpm_solver_order=2, dpm_solver_type="midpoint")
    history = [None, x - sigmas[STEP_INDEX - 1] * v.float()]
    state = mix_grpo.DPMState(order=2)
    for _ in range(2):  # warm the solver's history: second-order steps from here on
        mix_grpo.dpm_step(args, v, x, STEP_INDEX, sigmas[:-1], sigmas, dpm_state=state)
    yield ("mix_dpm_step_bf16", "rollout", lambda: anchor_mix_dpm(v, x, STEP_INDEX, sigmas, history),
           lambda: mix_grpo.dpm_step(args, v, x, STEP_INDEX, sigmas[:-1], sigmas, dpm_state=state))


def _shifted_sigmas(steps: int) -> torch.Tensor:
    """σ_i = shift·t/(1 + (shift − 1)·t), t = linspace(1, 0, steps + 1), as DanceGRPO/MixGRPO/AdaGRPO build it."""
    t = torch.linspace(1, 0, steps + 1)
    return SHIFT * t / (1 + (SHIFT - 1) * t)


def paired_ms(fns: dict, budget_s: float, grad: bool) -> dict:
    """Median ms per provider, calling the providers alternately, in alternating order (two warm-up rounds, then
    ≥ 5 and ≤ 200 rounds within ``budget_s``); without ``grad`` under ``torch.no_grad()`` (sampling, replay)."""
    names = list(fns)
    times: dict = {name: [] for name in names}
    with torch.set_grad_enabled(grad):
        for _ in range(2):
            for fn in fns.values():
                fn()
        stop = time.perf_counter() + budget_s
        rounds = 0
        while rounds < 5 or (rounds < 200 and time.perf_counter() < stop):
            for name in (names if rounds % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - t0)
            rounds += 1
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def main(quick: bool = False, out_dir: str | None = None):
    """Measure every workload (anchor vs shim) on the CPU; write results/<device>/compat.*"""
    device = torch.device("cpu")
    budget = 1.0 if quick else 3.0
    notes = [
        "CPU, the shims' PyTorch path (the path CPU users get; on CUDA the Flow-GRPO and DanceGRPO shims run the "
        "fused Triton kernels instead). Each row's anchor is that anchor's function written out in this file as it "
        "computes; ms = median of interleaved calls; speedup = anchor ms / fastgrpo ms.",
        "rollout: ε drawn from a generator (Flow-GRPO, MixGRPO) or torch's global RNG (DanceGRPO), the same draws "
        "as the anchor; replay: the log-prob of a stored prev_sample, no grad; training: replay plus the gradient "
        "of Σ log p w.r.t. the model output.",
        PREDICTION, BEFORE,
    ]
    groups = [lambda: flow_grpo_workloads(torch.float32, "sde"), lambda: flow_grpo_workloads(torch.bfloat16, "sde"),
              lambda: flow_grpo_workloads(torch.float32, "cps"), lambda: flow_grpo_workloads(torch.bfloat16, "cps"),
              dance_workloads, adagrpo_workloads, mix_workloads]
    if quick:
        groups = [groups[1], groups[4]]
    rows = []
    load_start = os.getloadavg()[0]
    for make in groups:
        for case, mode, anchor_fn, ours_fn in make():
            label = f"{case} {mode}"
            fns = {"anchor": anchor_fn, "fastgrpo": ours_fn}
            with torch.set_grad_enabled(mode == "training"):
                if not all(common.try_provider(f"{name} ({label})", fn, notes) for name, fn in fns.items()):
                    continue
            ms = paired_ms(fns, budget, grad=mode == "training")
            for name in fns:
                rows.append({"case": case, "mode": mode, "provider": name, "ms": ms[name],
                             "speedup": ms["anchor"] / ms[name]})
            print(f"{label}: anchor {ms['anchor']:.3f} ms, fastgrpo {ms['fastgrpo']:.3f} ms", flush=True)
    ours = [r for r in rows if r["provider"] == "fastgrpo"]
    for mode in MODES:
        got = sorted(r["speedup"] for r in ours if r["mode"] == mode)
        if got:
            notes.append(f"Result, {mode}: the shims are {got[0]:.2f}–{got[-1]:.2f}× the anchors' speed "
                         f"({len(got)} workloads).")
    notes.append(f"1-minute load average at the start / end of the run: {load_start:.2f} / {os.getloadavg()[0]:.2f} "
                 "(2 cores; this process counts 1–2).")
    slower = [f"{r['case']} {r['mode']}" for r in ours if r["speedup"] < 1.0]
    notes.append("Target (the shim at least as fast as the anchor on every row): "
                 + ("met" if not slower else "NOT met at " + ", ".join(slower)) + ".")
    common.write_results("compat", rows, notes, out_dir, device=device)
    return 0


if __name__ == "__main__":
    main()
