"""Benchmark of group advantages: Flow-GRPO's tracker algorithm vs an eager per-group loop vs fastgrpo.

Cases (prompts × group size): 48×24, 512×24, 4096×16 samples, prompts as strings (what the anchors receive).
Providers, each end to end from (prompt strings, rewards) to advantages, prompt → group-id mapping included:
- ``anchor_numpy``: Flow-GRPO's ``PerPromptStatTracker.update`` algorithm (numpy; for each unique prompt a boolean
  comparison over the whole prompt array — quadratic in the number of prompts), written from its source
  (yifan123/flow_grpo, flow_grpo/stat_tracking.py);
- ``torch_loop``: an eager PyTorch loop over groups (rewards on the device);
- ``compat_tracker``: ``fastgrpo.compat.flow_grpo.PerPromptStatTracker.update`` (host, fp64);
- ``fastgrpo``: dict mapping of prompts to int ids + ``group_advantages`` on the device (Triton on CUDA; the
  PyTorch path on CPU). ``fastgrpo_ids``: the op alone, ids already on the device (what fastgrpo's trainer does).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from fastgrpo.compat.flow_grpo import PerPromptStatTracker
from fastgrpo.ops import group_advantages, keys_to_group_ids

try:
    from benchmarks import common
except ImportError:  # run as a script
    import common

CASES = [(48, 24), (512, 24), (4096, 16)]


def anchor_numpy(prompts, rewards):
    """Flow-GRPO's tracker: per unique prompt, mask the prompt array, population std + 1e-4."""
    prompts = np.array(prompts)
    rewards = np.asarray(rewards, dtype=np.float64)
    advantages = np.empty_like(rewards) * 0.0
    for prompt in np.unique(prompts):
        mask = prompts == prompt
        group = rewards[mask]
        advantages[mask] = (group - np.mean(group)) / (np.std(group) + 1e-4)
    return advantages


def torch_loop(ids, rewards):
    adv = torch.empty_like(rewards)
    for g in torch.unique(ids).tolist():
        mask = ids == g
        r = rewards[mask]
        adv[mask] = (r - r.mean()) / (r.std(correction=0) + 1e-4)
    return adv


def fastgrpo_end_to_end(prompts, rewards, device):
    ids = keys_to_group_ids(prompts).to(device, non_blocking=True)
    return group_advantages(rewards, ids, eps=1e-4, check_finite=False).advantages


def _time_host(fn, repeat_budget_s: float, device) -> float:
    """Median wall time (ms), synchronising CUDA after each call; fewer repeats for slow providers."""
    times = []
    stop = time.perf_counter() + repeat_budget_s
    while not times or (len(times) < 20 and time.perf_counter() < stop):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main(quick: bool = False, out_dir: str | None = None):
    device = common.pick_device()
    rng = np.random.default_rng(0)
    rows, notes = [], [
        "Each provider maps prompt strings to advantages (population std, ε = 1e-4, as Flow-GRPO); times are "
        "medians of wall time with a device sync per call. fastgrpo_ids is the op alone with ids on the device.",
    ]
    for n_prompts, group in CASES[:2] if quick else CASES:
        n = n_prompts * group
        # caption-length prompts (~90 characters, like Flow-GRPO's PickScore/OCR prompts): the anchor's cost grows
        # with prompt length (numpy compares fixed-width unicode), a hash map's barely
        prompts = [f"a photorealistic picture of a small red fox sitting beside an old wooden boat at dawn, #{i}"
                   for i in rng.permutation(np.repeat(np.arange(n_prompts), group))]
        rewards_np = rng.normal(size=n)
        rewards = torch.from_numpy(rewards_np).float().to(device)
        ids = torch.tensor([int(p.rsplit("#", 1)[1]) for p in prompts], device=device)
        want = anchor_numpy(prompts, rewards_np)
        got = fastgrpo_end_to_end(prompts, rewards, device).cpu().double().numpy()
        assert np.allclose(got, want, rtol=1e-4, atol=1e-4), "fastgrpo disagrees with the anchor's algorithm"
        providers = {
            "anchor_numpy": lambda: anchor_numpy(prompts, rewards_np),
            "torch_loop": lambda: torch_loop(ids, rewards),
            "compat_tracker": lambda: PerPromptStatTracker().update(prompts, rewards_np),
            "fastgrpo": lambda: fastgrpo_end_to_end(prompts, rewards, device),
            "fastgrpo_ids": lambda: group_advantages(rewards, ids, eps=1e-4, check_finite=False),
        }
        for name, fn in providers.items():
            fn()  # warm-up (compiles the kernel on first use)
            budget = 3.0 if name in ("anchor_numpy", "torch_loop") else 1.0
            ms = _time_host(fn, budget, device)
            rows.append({"case": f"{n_prompts}x{group}", "samples": n, "provider": name, "ms": ms})
            print(f"{name} {n_prompts}x{group}: {ms:.3f} ms", flush=True)
    for row in rows:
        base = next(r["ms"] for r in rows if r["case"] == row["case"] and r["provider"] == "anchor_numpy")
        row["speedup_vs_anchor_numpy"] = base / row["ms"]
    targets = [("compat_tracker", "512x24", 50.0, "cpu"), ("compat_tracker", "4096x16", 500.0, "cpu"),
               ("fastgrpo", "4096x16", 100.0, "cuda"), ("fastgrpo", "512x24", 100.0, "cuda")]
    for provider, case, goal, kind in targets:
        found = [r for r in rows if r["provider"] == provider and r["case"] == case]
        if kind != device.type:
            continue
        verdict = (f"{found[0]['speedup_vs_anchor_numpy']:.0f}× → {'met' if found[0]['speedup_vs_anchor_numpy'] >= goal else 'NOT met'}"
                   if found else "not measured (quick run)")
        notes.append(f"target ({kind}): {provider} ≥ {goal:.0f}× over anchor_numpy at {case}: {verdict}")
    common.write_results("advantages", rows, notes, out_dir, device=device)
    return 0


if __name__ == "__main__":
    main()
