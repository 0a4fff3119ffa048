"""``reward.schedule`` on the default job: rewards scored per group as sampled (inline), all at once after the
rollout (batched), or in a worker thread while the next group rolls out (overlap).

One trainer per schedule, same config and seed; their iterations are interleaved (round r steps each trainer once)
so that drift in the machine's speed falls on every schedule alike; the median over ``ROUNDS`` rounds after a first
one. Also timed: one group's decode + reward alone (what overlap can hide at most, per group).

Prediction (written before measuring): on the world the reward is a small fraction of the rollout (decode of 32²
latents and a programmatic score), and on 2 CPU cores the sampling already keeps both cores busy, so overlap gains
nothing and may lose to thread contention; batched saves a little of the per-call overhead (4 calls → 1). On a GPU
with real reward models (PickScore / HPS at 224², a VAE decode at 512²) the reward is 10–20% of a rollout and
overlap should hide most of it: pending.

Result (2-core CPU, 2026-12-07, ``fastgrpo bench reward_schedule``): one group's decode + reward 1.1 ms (5 ms of a
2.3 s iteration); inline 2.31 s, batched 2.29 s (1.01×, inside the min–max spread), overlap 3.22 s (0.72×). The
prediction held in direction, not in size: overlap lost 39%, far more than the reward it could hide. Cause, checked
once: the worker thread's OpenMP team spins after each parallel region and takes the two cores from the rollout —
with ``OMP_WAIT_POLICY=PASSIVE`` overlap lost only 6% (4.39 vs 4.12 s, 5 rounds) but passive waiting slowed the
inline iteration itself by 78%. Default: inline.
"""
from __future__ import annotations

import statistics
import tempfile
import time

import torch

from fastgrpo.train import load_config
from fastgrpo.train.loop import Trainer
from fastgrpo.train.overlap import SCHEDULES

try:
    from benchmarks import common
except ImportError:  # run as a script
    import common

ROUNDS = 12
QUICK = ("adagrpo.candidates=4", "adagrpo.keep=2", "group_size=4", "sampling.steps=4", "window.size=2")


def _reward_alone(trainer: Trainer, repeats: int = 10) -> float:
    """Seconds of one group's decode + reward (the group's size of noise latents)."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(trainer.cfg.group_size, *trainer.backbone.latent_shape, generator=g).to(trainer.device)
    prompts = trainer.train_prompts.take([0]).repeat(trainer.cfg.group_size)
    trainer.reward(latents, prompts)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        trainer.reward(latents, prompts)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(quick: bool = False, out_dir: str | None = None):
    device = common.pick_device()
    rounds = 2 if quick else ROUNDS
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {s: Trainer(load_config(None, (QUICK if quick else ()) + (
            f"reward.schedule={s}", f"device={device.type}", f"out_dir={tmp}/{s}"))) for s in SCHEDULES}
        for trainer in trainers.values():
            trainer.sync_stages = True
        times = {s: [] for s in SCHEDULES}
        rollout = {s: [] for s in SCHEDULES}
        for r in range(rounds + 1):
            for schedule, trainer in trainers.items():
                start = time.perf_counter()
                metrics = trainer.step()
                trainer.iteration += 1
                if r:  # the first round warms up
                    times[schedule].append(time.perf_counter() - start)
                    rollout[schedule].append(metrics["t_rollout"])
        reward_s = _reward_alone(trainers["inline"])
        cfg = trainers["inline"].cfg
    rows = []
    for schedule in SCHEDULES:
        rows.append({"schedule": schedule, "iteration_s": statistics.median(times[schedule]),
                     "rollout_s": statistics.median(rollout[schedule]),
                     "min_s": min(times[schedule]), "max_s": max(times[schedule])})
    for row in rows:
        row["speedup_vs_inline"] = rows[0]["iteration_s"] / row["iteration_s"]
    notes = [f"Default job{' (quick: ' + ' '.join(QUICK) + ')' if quick else ''} on {device.type}, "
             f"{cfg.adagrpo.keep} groups of {cfg.group_size}; median of {rounds} interleaved rounds after a first "
             "one; rollout_s is the rollout stage with its rewards.",
             f"One group's decode + reward alone: {reward_s * 1e3:.1f} ms, {cfg.adagrpo.keep} groups per rollout: "
             f"{cfg.adagrpo.keep * reward_s * 1e3:.0f} ms per iteration is all that overlap could hide."]
    common.write_results("reward_schedule", rows, notes, out_dir, device=device)
    return 0


if __name__ == "__main__":
    main()
