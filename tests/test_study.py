"""The recipe study (benchmarks/study_shapes.py): its aggregation on synthetic curves with known answers, its run
specifications, its evaluation schedule and its outputs, with a fake trainer on a fake clock (no training)."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from benchmarks import study_shapes as study  # noqa: E402


def _curve(times, rewards, iterations):
    return [{"time": t, "iteration": i, "eval_train_reward": r, "eval_train_correct": r / 2,
             "eval_heldout_reward": r - 0.1, "eval_heldout_correct": 0.5}
            for t, r, i in zip(times, rewards, iterations)]


def test_mean_and_sample_std():
    assert study.mean_std([1.0, 2.0, 3.0, None]) == (2.0, 1.0)
    assert study.mean_std([0.5]) == (0.5, None)
    assert study.mean_std([None, None]) == (None, None)
    mean, std = study.mean_std([0.70, 0.80])
    assert math.isclose(mean, 0.75) and math.isclose(std, 0.1 / math.sqrt(2))


def test_time_to_target_is_the_first_evaluation_that_reaches_it():
    curve = _curve([0, 10, 20, 30], [0.70, 0.74, 0.73, 0.80], [0, 1, 2, 3])
    assert study.time_to(curve, 0.70) == 0
    assert study.time_to(curve, 0.74) == 10
    assert study.time_to(curve, 0.75) == 30  # not 20: the reward fell back below the target there
    assert study.time_to(curve, 0.81) is None


def test_mean_curve_averages_the_kth_evaluation_over_seeds():
    a = _curve([0, 10, 21], [0.70, 0.72, 0.76], [0, 1, 2])
    b = _curve([0, 12, 19, 30], [0.70, 0.74, 0.78, 0.90], [0, 1, 2, 3])
    got = study.mean_curve([a, b])
    assert [t for t, _ in got] == [0, 11, 20]  # the fourth point is missing from one seed: left out
    assert all(math.isclose(y, want) for (_, y), want in zip(got, [0.70, 0.73, 0.77]))


def test_summary_row_over_seeds():
    seeds = [_curve([0, 10, 20], [0.70, 0.75, 0.80], [0, 4, 8]),
             _curve([0, 12, 24], [0.70, 0.72, 0.76], [0, 3, 6])]
    row = study.summarize("x", seeds, target=0.75)
    assert row["seeds"] == 2 and row["train_reward_start"] == 0.70
    assert math.isclose(row["train_reward"], 0.78) and math.isclose(row["train_reward_std"], 0.02 * math.sqrt(2))
    assert math.isclose(row["heldout_reward"], 0.68) and row["heldout_correct_std"] == 0.0
    assert row["iterations"] == 7 and math.isclose(row["iterations_std"], math.sqrt(2))
    assert row["s_per_iteration"] == 3.25  # 20 s / 8 and 24 s / 6
    assert row["s_to_flow_grpo_final"] == 17 and math.isclose(row["s_to_flow_grpo_final_std"], 7 * math.sqrt(2))
    assert row["reached"] == 2
    assert study.cell(row, "train_reward") == "0.780 ± 0.028"
    assert study.table([row])[0]["s_to_flow_grpo_final"] == "17 ± 10 (2/2)"

    once = study.summarize("x", seeds, target=0.79)  # only the first seed gets there
    assert once["s_to_flow_grpo_final"] == 20 and once["s_to_flow_grpo_final_std"] is None and once["reached"] == 1
    assert study.table([once])[0]["s_to_flow_grpo_final"] == "20 (1/2)"
    never = study.summarize("x", seeds, target=0.95)
    assert never["s_to_flow_grpo_final"] is None and never["reached"] == 0
    assert study.table([never])[0]["s_to_flow_grpo_final"] == "– (0/2)"
    assert "s_to_flow_grpo_final" not in study.summarize("x", seeds, target=None)


def test_extra_run_specifications():
    assert study.parse_extra("default_lr=default:optim.lr=5e-5,adagrpo.keep=4") == study.Run(
        "default_lr", "default", ("optim.lr=5e-5", "adagrpo.keep=4"))
    # a comma not followed by key= belongs to the value
    assert study.parse_extra("g=g2rpo:branch.points=0,1, group_size=4").overrides == ("branch.points=0,1",
                                                                                      "group_size=4")
    assert study.parse_extra("copy=mixgrpo") == study.Run("copy", "mixgrpo", ())
    for bad in ("no_equals", "=default:optim.lr=1", "x=", "x=no_such_recipe:optim.lr=1"):
        with pytest.raises(ValueError):
            study.parse_extra(bad)


def test_run_selection():
    everything = study.select_runs(None, [])
    assert [r.name for r in everything] == study.RECIPES + study.ABLATION_RUNS
    assert everything[-1] == study.Run("default:median", "default", ("adagrpo.selection=median",))
    picked = study.select_runs("default, flow_grpo,default:easiest", ["fast=flow_grpo:optim.lr=1e-4"])
    assert [r.name for r in picked] == ["flow_grpo", "default", "default:easiest", "fast"]  # the study's order
    with pytest.raises(ValueError, match="unknown"):
        study.select_runs("default,flow_grpoo", [])
    with pytest.raises(ValueError, match="twice"):
        study.select_runs("default", ["default=default:optim.lr=1e-4"])
    with pytest.raises(ValueError, match="window.size"):  # configs are checked before any training
        study.select_runs("default", ["wide=default:window.size=40"])


class _Clock:
    now = 0.0


class _FakeTrainer:
    """Steps of fixed durations on a fake clock; eval reward grows with the iteration and the learning rate."""
    durations = [5.0, 25.0, 3.0, 40.0]
    configs = []

    def __init__(self, cfg):
        self.cfg, self.iteration, self.evaluations = cfg, 0, 0
        _FakeTrainer.configs.append(cfg)

    def step(self):
        _Clock.now += self.durations[self.iteration % len(self.durations)]
        return {}

    def evaluate(self):
        self.evaluations += 1
        gain = self.iteration * self.cfg.optim.lr * 100 + self.cfg.seed * 0.001
        return {k: 0.5 + gain for k in study.KEYS}


@pytest.fixture
def fake(monkeypatch):
    _Clock.now = 0.0
    _FakeTrainer.configs = []
    monkeypatch.setattr(study, "Trainer", _FakeTrainer)
    monkeypatch.setattr(study.time, "perf_counter", lambda: _Clock.now)
    return _FakeTrainer


def test_evaluation_schedule_records_one_point_per_mark(fake, tmp_path):
    run = study.Run("median", "default", ("adagrpo.selection=median",))
    curve = study.run_one(run, seed=3, budget=60, evals=5, device="cpu", tmp=str(tmp_path))
    # marks every 12 s; steps end at 5, 30 (past 12 and 24), 33, 73 (past 36, 48 and 60)
    assert [p["time"] for p in curve] == [0, 30, 30, 73, 73, 73]
    assert [p["iteration"] for p in curve] == [0, 2, 2, 4, 4, 4]
    cfg = fake.configs[0]
    assert cfg.seed == 3 and cfg.adagrpo.selection == "median" and cfg.out_dir == str(tmp_path)


def test_main_writes_table_json_and_plots(fake, tmp_path):
    threads = torch.get_num_threads()  # --jobs 1 trains in this process with --threads: keep pytest's count
    lr = study.load_config(str(study.CONFIGS / "flow_grpo.yaml")).optim.lr  # the recipe's own (the fake's gain ∝ lr)
    argv = ["--budget", "60", "--seeds", "2", "--threads", str(threads), "--runs", "default,flow_grpo,default:random",
            "--extra", f"fast=flow_grpo:optim.lr={10 * lr:g}", "--out", str(tmp_path)]
    assert study.main(argv) == 0
    data = json.loads((tmp_path / "study_shapes.json").read_text())
    assert data["setup"]["jobs"] == 1 and data["setup"]["threads_per_run"] == threads
    assert data["setup"]["command"].startswith("python -m benchmarks.study_shapes --budget 60")
    assert data["environment"]["commit"] and data["environment"]["date"]
    rows = {r["run"]: r for r in data["rows"]}
    assert list(rows) == ["flow_grpo", "default", "default:random", "fast"]
    assert all(len(data["curves"][name]) == 2 for name in rows)
    # flow_grpo ends at 0.5 + 4·lr·100 + mean seed·1e-3; fast (10× its lr) passes that after its first 2 steps
    assert math.isclose(rows["flow_grpo"]["train_reward"], 0.5 + 4 * lr * 100 + 0.0005)
    assert rows["fast"]["s_to_flow_grpo_final"] == 30 and rows["fast"]["reached"] == 2
    md = (tmp_path / "study_shapes.md").read_text()
    assert "± " in md and "prompt-difficulty ablation" in md and "fast: configs/flow_grpo.yaml with" in md
    assert (tmp_path / "study_shapes_reward_vs_time.png").is_file()
    assert (tmp_path / "study_shapes_ablation_vs_time.png").is_file()
