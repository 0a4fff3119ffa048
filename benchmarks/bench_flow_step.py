"""Benchmark of the Flow-GRPO SDE step (``flow_step``, family ``flow_sde``, full Gaussian log-prob, η = 0.7).

Workloads, per case (SD3.5-M latents 16×64×64 / 16×128×128, packed FLUX latents 4096×64; batch 1, 8, 24, 48):
- ``rollout``: v, x, σ, σ', ε → x' and log p (B,);
- ``training``: log p of the stored x' given v, x, σ, σ', then its gradient w.r.t. v (forward + backward).
v is bf16 (an autocast transformer's output), x, ε, x' are fp32, as in the recipes.

Providers: ``anchor_eager`` (Flow-GRPO's step as ``.notes/anchors.md`` §1 specifies it: per-sample σ lookup through
diffusers' ``index_for_timestep``, one host sync each), ``torch_compile`` (the same math with σ, σ' as device
tensors, under ``torch.compile``), ``fastgrpo`` (the Triton kernels), ``fastgrpo_torch`` (the op's PyTorch
reference path) and ``compat_flow_grpo`` (the drop-in shim, rollout only; it draws its own ε).

Achieved bandwidth counts the bytes a fused kernel must move (``ideal_bytes``), against the copy bandwidth
measured in the same run.
"""
from __future__ import annotations

import math

import torch

from fastgrpo.ops import flow_step

try:
    from benchmarks import common
except ImportError:  # run as a script: python benchmarks/bench_flow_step.py
    import common

ETA = 0.7
STEPS, STEP_INDEX, SHIFT = 10, 3, 3.0  # a mid-schedule step of a 10-step SD3 schedule
WORKLOADS = ("rollout", "training")


def shifted_sigmas(steps: int = STEPS, shift: float = SHIFT) -> torch.Tensor:
    """diffusers' SD3 schedule, without diffusers: t = linspace(1, shifted(1/1000), steps), σ = shifted(t), then 0;
    shifted(t) = shift·t/(1 + (shift − 1)·t)."""
    def shifted(t):
        return shift * t / (1.0 + (shift - 1.0) * t)
    t = torch.linspace(1.0, shifted(1.0 / 1000), steps, dtype=torch.float64)
    return torch.cat([shifted(t).float(), torch.zeros(1)])


def anchor_sde_step(scheduler, v, timestep, x, eta=ETA, noise=None, x_next=None):
    """Flow-GRPO's ``sde`` step written out eagerly from the spec (the baseline the kernels replace).

    fp32 upcasts of v and x; σ, σ' per sample via ``scheduler.index_for_timestep`` (``.item()``: a host sync per
    sample); ``sigma_max = sigmas[1]`` stands in for σ in 1 − σ where σ = 1; g = η·sqrt(σ/(1 − σ̃)),
    μ = x·(1 + g²·dt/(2σ)) + v·(1 + g²(1 − σ)/(2σ))·dt, τ = g·sqrt(−dt), x' = μ + τ·ε unless given;
    log p = mean over non-batch dims of −(x' − μ)²/(2τ²) − log τ − log sqrt(2π).
    """
    v, x = v.float(), x.float()
    index = [scheduler.index_for_timestep(t) for t in timestep]
    view = (-1,) + (1,) * (x.dim() - 1)
    sigma = scheduler.sigmas[index].view(view)
    sigma_next = scheduler.sigmas[[i + 1 for i in index]].view(view)
    sigma_max = scheduler.sigmas[1].item()
    dt = sigma_next - sigma
    g = eta * torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma)))
    mu = x * (1 + g**2 / (2 * sigma) * dt) + v * (1 + g**2 * (1 - sigma) / (2 * sigma)) * dt
    std = g * torch.sqrt(-dt)
    x_next = mu + std * noise if x_next is None else x_next.float()
    log_prob = (-((x_next.detach() - mu) ** 2) / (2 * std**2) - torch.log(std)
                - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi))))
    return x_next, log_prob.mean(dim=tuple(range(1, x.dim())))


def _mean_std(v, x, sigma, sigma_next, eta):
    """The anchor's μ and τ with σ, σ' given as (B,) device tensors (no lookup, no sync); 1 − σ' at σ = 1."""
    view = (-1,) + (1,) * (x.dim() - 1)
    sigma, sigma_next = sigma.view(view), sigma_next.view(view)
    v, x = v.float(), x.float()
    dt = sigma_next - sigma
    g = eta * torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_next, sigma)))
    mu = x * (1 + g**2 / (2 * sigma) * dt) + v * (1 + g**2 * (1 - sigma) / (2 * sigma)) * dt
    return mu, g * torch.sqrt(-dt)


def _log_prob(x_next, mu, std):
    elem = -((x_next.detach() - mu) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return elem.mean(dim=tuple(range(1, mu.dim())))


def rollout_math(v, x, sigma, sigma_next, noise, eta=ETA):
    mu, std = _mean_std(v, x, sigma, sigma_next, eta)
    x_next = mu + std * noise
    return x_next, _log_prob(x_next, mu, std)


def training_math(v, x, sigma, sigma_next, x_next, eta=ETA):
    mu, std = _mean_std(v, x, sigma, sigma_next, eta)
    return _log_prob(x_next.float(), mu, std)


def ideal_bytes(workload: str, v, x, other) -> int:
    """Minimum traffic of a fused kernel. rollout: read v, x, ε, write x' (fp32). training: forward reads v, x, x';
    backward reads v, x, x' again and writes grad_v (v's dtype). ``other``: ε (rollout) or x' (training)."""
    n = v.numel()
    if workload == "rollout":
        return n * (v.element_size() + x.element_size() + other.element_size() + 4)
    return n * (2 * (v.element_size() + x.element_size() + other.element_size()) + v.element_size())


def providers(workload, scheduler, v, x, sigma, sigma_next, timestep, other, notes):
    """name → zero-argument callable running one step of ``workload``; ``other`` is ε or the stored x'."""
    compiled = torch.compile(rollout_math if workload == "rollout" else training_math, dynamic=False)
    if workload == "rollout":
        fns = {
            "anchor_eager": lambda: anchor_sde_step(scheduler, v, timestep, x, noise=other),
            "torch_compile": lambda: compiled(v, x, sigma, sigma_next, other),
            "fastgrpo": lambda: flow_step(v, x, sigma, sigma_next, ETA, noise=other, backend="triton"),
            "fastgrpo_torch": lambda: flow_step(v, x, sigma, sigma_next, ETA, noise=other, backend="torch"),
            # ε drawn in-kernel (Philox): no ε tensor to generate, write and read back
            "fastgrpo_seed": lambda: flow_step(v, x, sigma, sigma_next, ETA, seed=1234, backend="triton"),
        }
        try:
            from fastgrpo.compat.flow_grpo import sde_step_with_logprob
        except ImportError as err:
            common.note_once(notes, f"compat_flow_grpo skipped: fastgrpo.compat.flow_grpo not importable ({err})")
        else:
            gen = torch.Generator(device=v.device).manual_seed(0)
            fns["compat_flow_grpo"] = lambda: sde_step_with_logprob(scheduler, v, timestep, x, noise_level=ETA,
                                                                    prev_sample=None, generator=gen)
        return fns
    leaf = v.detach().requires_grad_(True)

    def grad(log_prob):
        return torch.autograd.grad(log_prob.sum(), leaf)

    return {
        "anchor_eager": lambda: grad(anchor_sde_step(scheduler, leaf, timestep, x, x_next=other)[1]),
        "torch_compile": lambda: grad(compiled(leaf, x, sigma, sigma_next, other)),
        "fastgrpo": lambda: grad(flow_step(leaf, x, sigma, sigma_next, ETA, x_next=other, backend="triton").log_prob),
        "fastgrpo_torch": lambda: grad(flow_step(leaf, x, sigma, sigma_next, ETA, x_next=other,
                                                 backend="torch").log_prob),
    }


TARGETS = (  # (the target, (case, batch) pairs it is judged at, row key, threshold)
    ("≥85% of copy bandwidth at SD3.5-M 1024², batch ≥24 (GPU time)", {("sd3_1024", 24), ("sd3_1024", 48)},
     "gpu_copy_frac", 0.85),
    ("≥5× over anchor_eager at 512², batch 24 (do_bench)", {("sd3_512", 24)}, "speedup_vs_anchor_eager", 5.0),
    ("≥1.5× over torch_compile, GPU time (judged at 512² batch 24 and 1024² batch ≥24)",
     {("sd3_512", 24), ("sd3_1024", 24), ("sd3_1024", 48)}, "gpu_speedup_vs_torch_compile", 1.5),
    ("≥1.5× over torch_compile, do_bench (same cases)",
     {("sd3_512", 24), ("sd3_1024", 24), ("sd3_1024", 48)}, "speedup_vs_torch_compile", 1.5),
)


def target_notes(rows: list[dict], device_slug: str) -> list[str]:
    """The issue's targets (on H100/H200, for the fused rollout step), judged from the fastgrpo rows of this run;
    the training rows are held to the same thresholds for information."""
    if not any(r["provider"] == "fastgrpo" for r in rows):
        return [f"Targets (H100/H200, fastgrpo Triton provider): not evaluated on {device_slug} (no fastgrpo rows)."]
    out = []
    for workload in WORKLOADS:
        tag = "target" if workload == "rollout" else "same threshold, not a stated target"
        for what, where, key, goal in TARGETS:
            found = [r for r in rows if r["provider"] == "fastgrpo" and r["workload"] == workload
                     and (r["case"], r["batch"]) in where and r.get(key) is not None]
            if not found:
                verdict = "not measured in this run"
            else:
                shown = ", ".join(f"{r['case']} b{r['batch']}: " + (f"{100 * r[key]:.0f}%" if key.endswith("copy_frac")
                                                                   else f"{r[key]:.2f}×") for r in found)
                verdict = f"{shown} → {'met' if all(r[key] >= goal for r in found) else 'NOT met'}"
            out.append(f"{workload} on {device_slug} ({tag}): {what}: {verdict}")
    return out


def make_scheduler(device: torch.device):
    """The anchor's diffusers scheduler (SD3: shift 3), or None when diffusers is not installed."""
    try:
        from diffusers import FlowMatchEulerDiscreteScheduler
    except ImportError:
        return None
    scheduler = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    scheduler.set_timesteps(STEPS, device=device)
    return scheduler


def main(quick: bool = False, out_dir: str | None = None):
    """Measure every case × workload × provider on the default device; write results/<device>/flow_step.*"""
    device = common.pick_device()
    copy_gbps = common.copy_bandwidth(device)
    scheduler = make_scheduler(device)
    sig = scheduler.sigmas if scheduler is not None else shifted_sigmas().to(device)
    notes = [
        f"Step {STEP_INDEX} of a {STEPS}-step SD3 schedule (shift 3), η = {ETA}; v bf16, x / ε / x' fp32 (the "
        "recipes' dtypes); every provider gets the same ε (RNG cost excluded) except compat_flow_grpo, which "
        "draws its own with a torch.Generator like the anchor.",
        "Ideal bytes per element: rollout 2 (v) + 4 (x) + 4 (ε) + 4 (x') = 14; training forward 2 + 4 + 4 (v, x, "
        "x') + backward 2 + 4 + 4 + 2 (grad_v, bf16) = 22. gbps = ideal bytes / median time; copy_frac = gbps / "
        "copy bandwidth.",
        "torch_compile: default mode, compiled afresh per case (dynamic=False shapes); training compiles the "
        "log-prob and backpropagates through it. speedup_vs_* = that provider's ms / this row's ms.",
        "ms: do_bench median (CUDA events, L2 flushed between calls); where a call's host time (Python, launch) "
        "exceeds the flush, ms includes it. loop_ms (CUDA): 50 back-to-back eager calls / 50. gpu_ms (CUDA): GPU "
        "time per call from a CUDA graph of 20 calls — the kernel cost when launches run ahead, as in training "
        "(anchor_eager and compat_flow_grpo sync the host per sample and cannot be captured). gpu_copy_frac: "
        "ideal bytes / gpu_ms against the copy bandwidth; gpu_speedup_vs_torch_compile compares gpu_ms.",
        "fastgrpo_seed draws ε in-kernel from a seed: it moves 10 B/elem, not 14; its gbps/copy_frac use the same "
        "14 B/elem as the others, so they read as the effective rate of the whole rollout step.",
        "peak_mib (CUDA, training): extra memory at the peak of one forward+backward (includes the bf16 grad_v); "
        "an fp32 copy of the latents would add 4 B/elem per copy.",
    ]
    skipped = set()
    if scheduler is None:
        skipped |= {"anchor_eager", "compat_flow_grpo"}
        notes.append("anchor_eager and compat_flow_grpo skipped: diffusers is not installed (they take its "
                     "FlowMatchEulerDiscreteScheduler); σ, σ' from the same SD3 schedule, computed directly.")
    if device.type != "cuda":
        skipped |= {"fastgrpo", "fastgrpo_seed"}
        notes.append(common.CPU_NOTE)
    rows = []
    for case in common.select_cases(quick, device):
        B = case.batch
        v = common.randn(case.shape, torch.bfloat16, device)
        x = common.randn(case.shape, torch.float32, device)
        noise = common.randn(case.shape, torch.float32, device)
        sigma = sig[STEP_INDEX].expand(B).contiguous()
        sigma_next = sig[STEP_INDEX + 1].expand(B).contiguous()
        # the anchor looks σ up by exact equality with the schedule's timesteps: pass them, one per sample
        timestep = scheduler.timesteps[STEP_INDEX].expand(B).contiguous() if scheduler is not None else None
        x_next = flow_step(v, x, sigma, sigma_next, ETA, noise=noise, backend="torch").x_next
        for workload in WORKLOADS:
            common.release(device)
            other = noise if workload == "rollout" else x_next
            fns = providers(workload, scheduler, v, x, sigma, sigma_next, timestep, other, notes)
            nbytes = ideal_bytes(workload, v, x, other)
            for name, fn in fns.items():
                if name in skipped:
                    continue
                label = f"{name} ({case.name}, batch {B}, {workload})"
                if common.try_provider(label, fn, notes):
                    rows.append(common.measure(case, workload, name, fn, nbytes, copy_gbps, device,
                                               memory=workload == "training",
                                               graphable=name not in ("anchor_eager", "compat_flow_grpo")))
                    print(f"{label}: {rows[-1]['ms']:.3f} ms", flush=True)
        del v, x, noise, x_next
    common.release(device)
    common.add_speedups(rows, {"speedup_vs_anchor_eager": "anchor_eager",
                               "speedup_vs_torch_compile": "torch_compile"})
    if device.type == "cuda":
        common.add_speedups(rows, {"gpu_speedup_vs_torch_compile": "torch_compile"}, key="gpu_ms")
    notes += target_notes(rows, common.device_slug(device))
    common.write_results("flow_step", rows, notes, out_dir, copy_gbps=copy_gbps, device=device)
    return 0


if __name__ == "__main__":
    main()
