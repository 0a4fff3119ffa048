"""Every recipe config trains two iterations on the embedded world through the ``fastgrpo`` command line (issue 7):
argv → config file + overrides → Trainer.run → metrics.jsonl, config.yaml and a checkpoint. Each run is shrunk
(T = 4 steps, groups of 3, 2 of 4 candidates kept) in ways its recipe allows. The default recipe runs through the
installed console script in a new process (the entry point users run); the others call the same ``main(argv)`` in
this process, which spares each one the start-up (importing diffusers, peft and matplotlib: ≈ 7 s on 2 cores)."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fastgrpo import cli
from fastgrpo.train import checkpoint as ckpt
from fastgrpo.train import load_config

CONFIGS = Path(__file__).parents[1] / "configs"
RECIPES = sorted(p.stem for p in CONFIGS.glob("*.yaml")  # the pipeline models' recipes: tests/test_model_recipes.py
                 if (yaml.safe_load(p.read_text()).get("model") or {}).get("kind", "world") == "world")
SMALL = ("sampling.steps=4", "group_size=3", "adagrpo.candidates=4", "adagrpo.keep=2", "iterations=2",
         "eval_every=1000", "eval_seeds=1", "checkpoint_every=1000")


def _overrides(recipe: str) -> tuple[str, ...]:
    """SMALL, plus a window that keeps the recipe's shape at T = 4: SDE on every step but the last stays so
    (Flow-GRPO's int(T·0.99), DanceGRPO, Flow-CPS, Stepwise), a sliding or random window shrinks to 2; G²RPO
    branches at steps 0 and 1 (its points must lie in 0..T-2)."""
    cfg = load_config(str(CONFIGS / f"{recipe}.yaml"))
    if cfg.method == "dgpo":  # its timesteps come from the first trunc_steps + 1 schedule indices
        return SMALL + ("dgpo.trunc_steps=3",)
    if cfg.method != "grpo":  # no window, no branches
        return SMALL
    size = 3 if cfg.window.size == cfg.sampling.steps - 1 else min(cfg.window.size, 2)
    extra = (f"window.size={size}",) + (("branch.points=0,1",) if cfg.branch.enabled else ())
    return SMALL + extra


def _fastgrpo() -> list[str]:
    """The installed console script (the entry point users run); ``python -m fastgrpo.cli`` without one."""
    script = shutil.which("fastgrpo", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "fastgrpo.cli"]


def test_every_config_is_covered():
    assert {"default", "flow_grpo", "mixgrpo", "g2rpo", "stepwise_flow_grpo", "diffusion_nft", "awm",
            "dgpo"} <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_two_iterations_through_the_cli(recipe, tmp_path, monkeypatch):
    out = tmp_path / recipe
    overrides = _overrides(recipe) + (f"out_dir={out}",)
    config = str(CONFIGS / f"{recipe}.yaml")
    argv = ["train", "--config", config, *overrides]
    if recipe == "default":
        env = dict(os.environ, FASTGRPO_BACKEND="torch")
        done = subprocess.run([*_fastgrpo(), *argv], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    else:
        monkeypatch.setenv("FASTGRPO_BACKEND", "torch")
        assert cli.main(argv) == 0

    # the run used the recipe's file with the overrides on top
    assert load_config(str(out / "config.yaml")) == load_config(config, overrides)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["iteration"] for r in steps] == [1, 2]
    method = load_config(config).method
    for r in steps:
        if method == "grpo":  # one AdamW step per rollout batch: the replayed policy is the rollout's
            assert r["first_ratio_max_dev"] == 0.0, r
        elif method == "nft":  # DiffusionNFT: no ratio; the optimality probability of its samples
            assert 0.0 <= r["optimality"] <= 1.0, r
        elif method == "awm":  # AWM: the flow-matching error of its noised clean samples
            assert r["fm_error"] > 0 and r["ema_gap"] >= 0, r
        else:  # DGPO: the group scores and the clip against the EMA copy
            assert math.isfinite(r["group_score"]) and 0.0 <= r["clipfrac"] <= 1.0, r
        assert math.isfinite(r["reward"]) and math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"])
    evals = [r for r in records if "eval_train_reward" in r]
    assert [r["iteration"] for r in evals] == [0, 2]
    for r in evals:
        assert all(0.0 <= r[k] <= 1.0 for k in ("eval_train_reward", "eval_train_correct", "eval_heldout_reward",
                                                 "eval_heldout_correct")), r
    weights, state = ckpt.load(out)
    assert state["iteration"] == 2 and weights
    assert (out / "reward_curve.png").is_file()
