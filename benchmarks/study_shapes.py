"""The alignment study on the embedded shapes world: every recipe config under the same training-time budget and
seeds, evaluated on fixed seeds (training and held-out prompts), plus AdaGRPO's prompt-difficulty ablation.

    python -m benchmarks.study_shapes --budget 60 --seeds 1        # what was run for the committed results
    python -m benchmarks.study_shapes --budget 600 --seeds 3       # the full study

Budgets count training time only (rollouts, rewards, advantages, updates); evaluations are excluded and run every
``budget/5`` seconds of training. Writes results/<device>/study_shapes.{json,md} and a plot of eval reward
against training time.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fastgrpo.train import load_config
from fastgrpo.train.loop import Trainer
from fastgrpo.train.report import save_curve

try:
    from benchmarks import common
except ImportError:  # run as a script
    import common

CONFIGS = Path(__file__).parents[1] / "configs"
RECIPES = ["flow_grpo", "flow_grpo_fast", "dance_grpo", "flow_cps", "g2rpo", "stepwise_flow_grpo", "mixgrpo",
           "mixgrpo_flash", "adagrpo_flow_grpo", "default"]
ABLATION = ["random", "easiest", "hardest", "median"]  # "curriculum" is the default recipe itself
KEYS = ("eval_train_reward", "eval_train_correct", "eval_heldout_reward", "eval_heldout_correct")


def run_one(recipe: str, overrides: tuple[str, ...], seed: int, budget: float, tmp: str) -> list[dict]:
    cfg = load_config(str(CONFIGS / f"{recipe}.yaml"), overrides + (f"seed={seed}", "iterations=100000",
                                                                    f"out_dir={tmp}/{recipe}-{seed}"))
    trainer = Trainer(cfg)
    curve = [{"time": 0.0, "iteration": 0, **trainer.evaluate()}]
    spent, next_eval = 0.0, budget / 5
    while spent < budget:
        t0 = time.perf_counter()
        trainer.step()
        trainer.iteration += 1
        spent += time.perf_counter() - t0
        if spent >= next_eval or spent >= budget:
            curve.append({"time": spent, "iteration": trainer.iteration, **trainer.evaluate()})
            next_eval += budget / 5
    return curve


def _mean(curves: list[list[dict]], key: str, point: int = -1) -> float:
    return statistics.mean(c[point][key] for c in curves)


def main(budget: float = 60.0, seeds: int = 1, out_dir: str | None = None):
    device = common.pick_device()
    results: dict[str, list[list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in RECIPES:
            results[recipe] = [run_one(recipe, (), s, budget, tmp) for s in range(seeds)]
            print(f"{recipe}: train reward {_mean(results[recipe], 'eval_train_reward'):.3f}", flush=True)
        for mode in ABLATION:
            name = f"default:{mode}"
            results[name] = [run_one("default", (f"adagrpo.selection={mode}",), s, budget, tmp) for s in range(seeds)]
            print(f"{name}: train reward {_mean(results[name], 'eval_train_reward'):.3f}", flush=True)
    target = _mean(results["flow_grpo"], "eval_train_reward")
    rows = []
    for name, curves in results.items():
        row = {"run": name, "seeds": len(curves),
               **{k.removeprefix("eval_") + "_start": _mean(curves, k, 0) for k in KEYS[:2]},
               **{k.removeprefix("eval_"): _mean(curves, k) for k in KEYS},
               "iterations": statistics.mean(c[-1]["iteration"] for c in curves),
               "s_per_iteration": statistics.mean(c[-1]["time"] / max(1, c[-1]["iteration"]) for c in curves)}
        reach = [next((p["time"] for p in c if p["eval_train_reward"] >= target), None) for c in curves]
        row["s_to_flow_grpo_final"] = statistics.mean(reach) if all(r is not None for r in reach) else None
        rows.append(row)
    default = next(r for r in rows if r["run"] == "default")
    flow = next(r for r in rows if r["run"] == "flow_grpo")
    notes = [
        f"Training-time budget {budget:.0f} s per run, {seeds} seed(s), fixed-seed ODE evaluation of the 64 training "
        "and 11 held-out prompts; *_start is before training. s_to_flow_grpo_final: training seconds until the "
        "eval train reward first reached Flow-GRPO's final value (– if never).",
        f"Goal (issue 7): the default (AdaGRPO + MixGRPO) beats Flow-GRPO's final reward ({flow['train_reward']:.3f}) "
        f"and reaches it in ≤ 50% of the time: final {default['train_reward']:.3f} → "
        f"{'beats' if default['train_reward'] > flow['train_reward'] else 'does NOT beat'} it; reached after "
        f"{default['s_to_flow_grpo_final'] if default['s_to_flow_grpo_final'] is not None else 'never'} s of "
        f"{budget:.0f} s.",
        "default:<mode> rows are AdaGRPO's prompt-difficulty ablation (its paper, HPS-v3 on FLUX: random 14.71, "
        "easiest 14.39, hardest 14.73, medium 14.87, curriculum 14.99).",
    ]
    common.write_results("study_shapes", rows, notes, out_dir, device=device)
    folder = Path(out_dir) if out_dir else common.RESULTS / common.device_slug(device)
    history = []
    for name in ("flow_grpo", "mixgrpo", "default"):
        for point in results[name][0]:
            history.append({"iteration": point["time"], name: point["eval_train_reward"]})
    save_curve(history, ("flow_grpo", "mixgrpo", "default"), folder / "study_shapes_reward_vs_time.png")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    main(args.budget, args.seeds, args.out)
