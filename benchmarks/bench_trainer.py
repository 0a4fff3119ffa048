"""Benchmark of one training iteration by stage: full SDE on all steps vs MixGRPO's window vs MixGRPO-Flash.

Same model (the embedded shapes world; on CUDA the same loop), MixGRPO's T = 25, same prompts and group size; only
the stochastic/trained steps differ: ``full_sde`` (SDE and training on 14 of the 25 steps, as DanceGRPO trains
on FLUX — MixGRPO Table 1's baseline), ``mixgrpo`` (w = 4), ``flash`` (w = 4, then DPM-Solver++ 2M on a grid of
r = 0.4), ``flash_star`` (r = 0.2) — both on MixGRPO's own grids (``window.flash_min_steps=1``) — and
``flash_star_min4``: Flash* with fastgrpo's default minimum of 4 tail steps (3 on r = 0.2's grid), the cost of a
faithful tail (fastgrpo/train/schedule.py). Each runs a warm-up iteration
and then ``ITERATIONS`` measured ones (``Trainer.step``, no evaluation or checkpoint); the stages are the loop's
own timers: select (candidates' ODE anchors + curriculum), rollout, advantage, update (replay + backward + step).
"""
from __future__ import annotations

import statistics
import tempfile


from fastgrpo.train import load_config
from fastgrpo.train.loop import Trainer

try:
    from benchmarks import common
except ImportError:  # run as a script
    import common

ITERATIONS = 4
VARIANTS = {
    "full_sde": ("window.size=14", "window.schedule=frozen", "window.flash=false"),
    "mixgrpo": ("window.size=4", "window.schedule=frozen", "window.flash=false"),
    "flash": ("window.size=4", "window.schedule=frozen", "window.flash=true", "window.flash_ratio=0.4",
              "window.flash_min_steps=1"),
    "flash_star": ("window.size=4", "window.schedule=frozen", "window.flash=true", "window.flash_ratio=0.2",
                   "window.flash_min_steps=1"),
    "flash_star_min4": ("window.size=4", "window.schedule=frozen", "window.flash=true", "window.flash_ratio=0.2",
                        "window.flash_min_steps=4"),
}
STAGES = ("t_select", "t_rollout", "t_advantage", "t_update")
QUICK = ("adagrpo.candidates=2", "adagrpo.keep=1", "group_size=4")
"""--quick (the README test's smoke run): one prompt × 4 samples instead of 4 × 8, the same schedules."""
TARGETS = (("mixgrpo", 0.5), ("flash_star", 0.3))


def measure(trainer: Trainer, iterations: int) -> dict:
    """A warm-up iteration, then the median of ``iterations`` measured ones: seconds per stage and in all."""
    trainer.step()
    trainer.iteration += 1
    runs = []
    for _ in range(iterations):
        runs.append(trainer.step())
        trainer.iteration += 1
    row = {s[2:]: statistics.median(r[s] for r in runs) for s in STAGES}
    row["iteration"] = sum(row.values())
    for stage in (s[2:] for s in STAGES):  # CUDA with sync_stages: each stage's peak memory, the largest run
        if f"peak_{stage}_gib" in runs[0]:
            row[f"peak_{stage}_gib"] = max(r[f"peak_{stage}_gib"] for r in runs)
    return row


def compare(rows: list[dict], notes: list[str]) -> None:
    """Each row's iteration time as a fraction of full SDE's, and the issue's targets as notes."""
    full = next(r["iteration"] for r in rows if r["variant"] == "full_sde")
    for row in rows:
        row["vs_full_sde"] = row["iteration"] / full
    for variant, goal in TARGETS:
        ratio = next((r["vs_full_sde"] for r in rows if r["variant"] == variant), None)
        if ratio is None:  # a run without that variant
            continue
        notes.append(f"target: {variant} ≤ {goal}× the full-SDE iteration time: {ratio:.2f}× → "
                     f"{'met' if ratio <= goal else 'NOT met'}")


def main(quick: bool = False, out_dir: str | None = None):
    device = common.pick_device()
    iterations = 2 if quick else ITERATIONS
    rows, notes = [], [
        (f"Embedded shapes world, T = 25, shift 3, quick: {' '.join(QUICK)}, on {device.type}; " if quick else
         f"Embedded shapes world, T = 25, shift 3, 8 candidates (4-step DPM-Solver++ anchors, the default) → 4 "
         f"prompts × 8 samples per iteration, on {device.type}; ") +
        f"median of {iterations} iterations after one warm-up. Stages are the trainer's own timers (seconds).",
    ]
    size = QUICK if quick else ("adagrpo.candidates=8", "adagrpo.keep=4", "group_size=8")
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in VARIANTS.items():
            cfg = load_config(None, overrides + ("sampling.steps=25", *size, f"device={device.type}",
                                                 f"out_dir={tmp}/{name}"))
            row = {"variant": name, **measure(Trainer(cfg), iterations)}
            rows.append(row)
            print(f"{name}: {row['iteration']:.2f} s/iteration", flush=True)
    compare(rows, notes)
    notes.append("MixGRPO reports −49% (w = 4) and −71% (Flash*) against DanceGRPO on FLUX with 32 GPUs, where the "
                 "transformer dominates every stage. Here the window cuts the trained steps (update) and Flash the "
                 "rollout's function evaluations; the candidates' ODE anchors (AdaGRPO's selection, 4 DPM steps each) "
                 "cost the same in every variant.")
    common.write_results("trainer", rows, notes, out_dir, device=device)
    return 0


if __name__ == "__main__":
    main()
