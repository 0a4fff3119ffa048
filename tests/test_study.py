"""The recipe study (benchmarks/study_shapes.py): its statistics and aggregation on synthetic curves with known
answers (published t quantiles, hand-computed Welch degrees of freedom), its run specifications, its evaluation
schedule and its outputs, with a fake trainer on a fake clock (no training)."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from benchmarks import study_shapes as study  # noqa: E402
from fastgrpo.world import shapes  # noqa: E402

# two-sided 95% Student t quantiles t(0.975, df), as printed in the usual tables
T975 = {1: 12.7062, 2: 4.3027, 4: 2.7764}


def _curve(times, correct, iterations, spread=None):
    """Evaluation points: train correctness as given, train reward 2×, held-out correctness 0.1 lower, held-out
    reward 0.5; with ``spread`` each also has an evaluation interval ±spread (``_lo`` / ``_hi``)."""
    points = []
    for t, c, i in zip(times, correct, iterations):
        values = {"eval_train_correct": c, "eval_train_reward": 2 * c, "eval_heldout_correct": c - 0.1,
                  "eval_heldout_reward": 0.5}
        point = {"time": t, "iteration": i, **values}
        if spread is not None:
            for key, v in values.items():
                point[key + "_lo"], point[key + "_hi"] = v - spread, v + spread
        points.append(point)
    return points


def test_t_interval_against_the_published_quantile():
    mean, lo, hi = study.t_interval([0.7, 0.8, 0.9, None])  # None (a seed that did not reach) is left out
    half = T975[2] * 0.1 / math.sqrt(3)  # s = 0.1, n = 3, df = 2
    assert math.isclose(mean, 0.8)
    assert math.isclose(hi - mean, half, rel_tol=2e-5) and math.isclose(mean - lo, half, rel_tol=2e-5)
    assert study.t_interval([0.5]) == (0.5, None, None)
    assert study.t_interval([None, None]) == (None, None, None)
    assert study.t_interval([0.3, 0.3, 0.3]) == (0.3, 0.3, 0.3)


def test_welch_difference_by_hand():
    a, b = [0.7, 0.8, 0.9], [0.5, 0.6, 0.7, 0.8]
    va, vb = 0.01 / 3, (0.05 / 3) / 4  # s²/n: sums of squared deviations 0.02 and 0.05
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    assert 4 < df < 5  # 4.96: rounded down to 4
    half = T975[4] * math.sqrt(va + vb)
    got = study.welch(a, b)
    assert got["df"] == 4 and got["n_a"] == 3 and got["n_b"] == 4
    assert math.isclose(got["diff"], 0.15)
    assert math.isclose(got["lo"], 0.15 - half, abs_tol=1e-4) and math.isclose(got["hi"], 0.15 + half, abs_tol=1e-4)
    assert not got["separates"]  # about [-0.090, 0.390]
    shifted = study.welch([1.0, 1.1, 1.2], b)  # the same spread, 0.3 higher: about [0.210, 0.690]
    assert shifted["df"] == 4 and math.isclose(shifted["lo"], 0.45 - half, abs_tol=1e-4) and shifted["separates"]
    # equal n and variance: df = (2v)² / (2v²/(n − 1)) = 2(n − 1) = 4
    assert study.welch([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])["df"] == 4
    still = study.welch([1.0, 1.0], [0.0, 0.0])  # no spread at all: the interval is the difference itself
    assert (still["diff"], still["lo"], still["hi"], still["df"], still["separates"]) == (1.0, 1.0, 1.0, 2, True)
    with pytest.raises(ValueError):
        study.welch([1.0], [0.0, 1.0])


def test_time_to_threshold_is_the_first_evaluation_that_reaches_it():
    curve = _curve([0, 10, 20, 30], [0.70, 0.86, 0.84, 0.90], [0, 1, 2, 3])
    assert study.time_to(curve, 0.70) == 0
    assert study.time_to(curve, 0.85) == 10
    assert study.time_to(curve, 0.87) == 30  # not 20: correctness fell back below the threshold there
    assert study.time_to(curve, 0.95) is None
    assert study.time_to(curve, 1.75, key="eval_train_reward") == 30  # rewards 1.4, 1.72, 1.68, 1.8


def test_mean_curve_and_band_over_seeds():
    a = _curve([0, 10, 21], [0.70, 0.72, 0.76], [0, 1, 2])
    b = _curve([0, 12, 19, 30], [0.70, 0.74, 0.78, 0.90], [0, 1, 2, 3])
    got = study.mean_curve([a, b])
    assert [t for t, _ in got] == [0, 11, 20]  # the fourth point is missing from one seed: left out
    assert all(math.isclose(y, want) for (_, y), want in zip(got, [0.70, 0.73, 0.77]))
    band = study.curve_band([a, b])
    assert band[0] == (0, 0.70, 0.70, 0.70)
    # two seeds: s = |0.72 − 0.74|/√2, half-width t(0.975, 1)·s/√2 = 12.7062 · 0.01
    assert math.isclose(band[1][3] - band[1][1], T975[1] * 0.01, rel_tol=2e-5)
    assert study.curve_band([a]) == [(0, 0.70, None, None), (10, 0.72, None, None), (21, 0.76, None, None)]
    assert [p[1] for p in study.curve_band([a, b], "eval_train_reward")] == pytest.approx([1.40, 1.46, 1.54])


def test_summary_row_over_three_seeds():
    seeds = [_curve([0, 10, 20], [0.5, 0.86, 0.7], [0, 4, 8]),
             _curve([0, 12, 24], [0.5, 0.6, 0.8], [0, 3, 6]),
             _curve([0, 14, 21], [0.5, 0.9, 0.9], [0, 5, 7])]
    row = study.summarize("x", seeds, threshold=0.85)
    assert row["seeds"] == 3 and row["interval"] == "seeds" and row["train_correct_start"] == 0.5
    half = T975[2] * 0.1 / math.sqrt(3)  # final correctness 0.7, 0.8, 0.9
    assert math.isclose(row["train_correct"], 0.8)
    assert math.isclose(row["train_correct_hi"], 0.8 + half, rel_tol=1e-5)
    assert math.isclose(row["train_reward"], 1.6) and math.isclose(row["heldout_correct"], 0.7)
    assert row["heldout_reward"] == row["heldout_reward_lo"] == row["heldout_reward_hi"] == 0.5
    assert row["iterations"] == 7 and math.isclose(row["iterations_hi"], 7 + T975[2] / math.sqrt(3), rel_tol=1e-5)
    assert math.isclose(row["s_per_iteration"], (20 / 8 + 24 / 6 + 21 / 7) / 3)
    # threshold 0.85: seed 0 at 10 s, seed 2 at 14 s, seed 1 never; s = 2√2, half-width 12.7062·2√2/√2
    assert row["reached"] == 2 and row["threshold"] == 0.85 and row["s_to_threshold"] == 12
    assert math.isclose(row["s_to_threshold_hi"], 12 + 2 * T975[1], rel_tol=2e-5)
    assert study.cell(row, "train_correct") == "0.800 [0.552, 1.048]"
    assert study.cell(row, "iterations") == "7.0 [4.5, 9.5]"
    shown = study.table([row])[0]
    assert shown["s_to_correct_0.85"] == "12 [-13, 37] (2/3)" and shown["train_correct_start"] == "0.500"

    once = study.summarize("x", seeds, threshold=0.88)  # only seed 2 gets there: its time alone
    assert once["s_to_threshold"] == 14 and once["s_to_threshold_lo"] is None and once["reached"] == 1
    assert study.table([once])[0]["s_to_correct_0.88"] == "14 (1/3)"
    never = study.summarize("x", seeds, threshold=0.95)
    assert never["s_to_threshold"] is None and never["reached"] == 0
    assert study.table([never])[0]["s_to_correct_0.95"] == "– (0/3)"


def test_single_seed_cells_show_the_evaluation_interval():
    row = study.summarize("x", [_curve([0, 10, 20], [0.5, 0.86, 0.7], [0, 4, 8], spread=0.02)], threshold=0.85)
    assert row["interval"] == "prompts"
    assert study.cell(row, "train_correct") == "0.700 [0.680, 0.720]"  # the run's own interval over prompts
    assert study.cell(row, "heldout_reward") == "0.500 [0.480, 0.520]"
    assert study.cell(row, "iterations") == "8.0" and study.cell(row, "s_to_threshold") == "10"  # no interval
    bare = study.summarize("x", [_curve([0, 10], [0.5, 0.7], [0, 4])])  # an evaluation without an interval
    assert study.cell(bare, "train_correct") == "0.700"


def test_comparisons_need_two_seeds_on_both_sides():
    results = {"default": [_curve([0, 9], [0.5, c], [0, 3]) for c in (0.7, 0.8, 0.9)],
               "control": [_curve([0, 9], [0.5, c], [0, 3]) for c in (0.3, 0.4, 0.5)],
               "default:random": [_curve([0, 9], [0.5, 0.8], [0, 3])],
               "mixgrpo_flash": [_curve([0, 9], [0.5, c], [0, 3]) for c in (0.1, 0.2, 0.3)],
               "mixgrpo": [_curve([0, 9], [0.5, c], [0, 3]) for c in (0.2, 0.3, 0.4)]}
    got = study.comparisons(results)
    assert [(c["a"], c["b"]) for c in got] == [("default", "control"), ("mixgrpo_flash", "mixgrpo")]
    # equal spread and n = 3: df 4, difference ± 2.7764·√(2·0.01/3)
    half = T975[4] * math.sqrt(2 * 0.01 / 3)
    assert math.isclose(got[0]["diff"], 0.4) and math.isclose(got[0]["lo"], 0.4 - half, abs_tol=1e-4)
    assert got[0]["separates"] and "separates" in study.comparison_note(got[0])
    assert math.isclose(got[1]["diff"], -0.1) and not got[1]["separates"]  # about [-0.327, 0.127]
    assert "inside the interval (no difference shown)" in study.comparison_note(got[1])


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
    assert [r.name for r in everything] == study.RECIPES + ["control"] + study.ABLATION_RUNS
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
    """Steps of fixed durations on a fake clock; every eval score is 0.5 + iteration·lr·100 + seed·0.001 (the
    random-reward control learns nothing: 0.5 + seed·0.001), with an evaluation interval ±0.02 around it."""
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
        learns = self.cfg.reward.names != ["world_random"]
        value = 0.5 + learns * self.iteration * self.cfg.optim.lr * 100 + self.cfg.seed * 0.001
        out = {}
        for key in study.KEYS:
            out[key], out[key + "_lo"], out[key + "_hi"] = value, value - 0.02, value + 0.02
        return out


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


def test_control_is_the_default_recipe_on_a_random_reward(tmp_path):
    control = next(r for r in study.builtin_runs() if r.name == "control")
    cfg = study.run_config(control, 1, "cpu", str(tmp_path))
    default = study.run_config(study.Run("default", "default"), 1, "cpu", str(tmp_path))
    assert cfg.reward.names == ["world_random"] and default.reward.names == ["world"]
    assert cfg.adagrpo == default.adagrpo and cfg.window == default.window and cfg.optim == default.optim


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_writes_intervals_comparisons_json_and_plots(fake, tmp_path):
    threads = torch.get_num_threads()  # --jobs 1 trains in this process with --threads: keep pytest's count
    lr = study.load_config(str(study.CONFIGS / "default.yaml")).optim.lr  # the recipe's own (the fake's gain ∝ lr)
    final = 0.5 + 4 * lr * 100  # the default's end (iteration 4, 73 s): 0.5 + 4·lr·100 + seed·0.001, seeds 0 and 1
    threshold = round(final - 1e-4, 6)  # reached at the last step only (each earlier one is lr·100 lower)
    argv = ["--budget", "60", "--seeds", "2", "--threads", str(threads), "--runs", "default,control,default:random",
            "--extra", f"slow=default:optim.lr={lr / 10:g}", "--threshold", str(threshold), "--out", str(tmp_path)]
    assert study.main(argv) == 0
    data = json.loads((tmp_path / "study_shapes.json").read_text())
    assert data["setup"]["jobs"] == 1 and data["setup"]["threads_per_run"] == threads
    assert data["setup"]["command"].startswith("python -m benchmarks.study_shapes --budget 60")
    assert data["setup"]["threshold"] == threshold
    assert data["environment"]["commit"] and data["environment"]["date"]
    rows = {r["run"]: r for r in data["rows"]}
    assert list(rows) == ["default", "control", "default:random", "slow"]
    assert all(len(data["curves"][name]) == 2 for name in rows)
    assert sum(cfg.reward.names == ["world_random"] for cfg in fake.configs) == 2  # the control, both seeds
    assert math.isclose(rows["default"]["train_correct"], final + 0.0005)
    half = T975[1] * 0.001 / 2  # two seeds 0.001 apart: s = 0.001/√2, half-width t·s/√2
    assert math.isclose(rows["default"]["train_correct_hi"] - rows["default"]["train_correct"], half, rel_tol=1e-4)
    assert math.isclose(rows["control"]["train_correct"], 0.5005)
    # the default reaches the threshold at its last step (73 s), the control never
    assert rows["default"]["s_to_threshold"] == 73 and rows["default"]["reached"] == 2
    assert rows["control"]["s_to_threshold"] is None and rows["control"]["reached"] == 0
    pairs = {(c["a"], c["b"]): c for c in data["comparisons"]}
    assert list(pairs) == [("default", "control"), ("default", "default:random")]
    assert pairs[("default", "control")]["separates"] and not pairs[("default", "default:random")]["separates"]
    md = (tmp_path / "study_shapes.md").read_text()
    assert study.cell(rows["default"], "train_correct") in md and "(2/2)" in md
    assert "separates" in md and "inside the interval (no difference shown)" in md
    assert f"{len(shapes.TRAIN)} training and {len(shapes.HELD_OUT)} held-out prompts" in md
    assert "prompt-difficulty ablation" in md and "slow: configs/default.yaml with" in md
    assert "control: the default recipe trained on a random reward" in md and "One seed" not in md
    for name in ("correct", "reward", "ablation"):
        assert _is_png(tmp_path / f"study_shapes_{name}_vs_time.png")


def test_main_with_one_seed_marks_the_evaluation_interval(fake, tmp_path):
    argv = ["--budget", "60", "--seeds", "1", "--threads", str(torch.get_num_threads()), "--runs", "default,control",
            "--out", str(tmp_path)]
    assert study.main(argv) == 0
    data = json.loads((tmp_path / "study_shapes.json").read_text())
    assert data["comparisons"] == []  # one seed: no difference between run kinds is claimed
    default = next(r for r in data["rows"] if r["run"] == "default")
    assert default["interval"] == "prompts"
    assert math.isclose(default["train_correct_hi"] - default["train_correct"], 0.02)  # the fake's eval interval
    md = (tmp_path / "study_shapes.md").read_text()
    assert "One seed (default, control)" in md and "evaluation interval over prompts" in md
    assert _is_png(tmp_path / "study_shapes_correct_vs_time.png")
    assert not (tmp_path / "study_shapes_ablation_vs_time.png").exists()  # the default alone: no ablation plot


def test_merge_extends_an_earlier_study_and_refuses_a_different_setup(fake, tmp_path):
    threads = str(torch.get_num_threads())
    first, second = tmp_path / "first", tmp_path / "second"
    base = ["--budget", "60", "--seeds", "2", "--threads", threads]
    assert study.main(base + ["--runs", "default,control", "--out", str(first)]) == 0
    earlier = json.loads((first / "study_shapes.json").read_text())
    fake.configs.clear()
    argv = base + ["--runs", "flow_grpo,control", "--out", str(second), "--merge", str(first / "study_shapes.json")]
    assert study.main(argv) == 0
    assert {cfg.seed for cfg in fake.configs} == {0, 1} and len(fake.configs) == 4  # only this call's kinds trained
    data = json.loads((second / "study_shapes.json").read_text())
    assert [r["run"] for r in data["rows"]] == ["flow_grpo", "default", "control"]  # the study's order
    assert data["curves"]["default"] == earlier["curves"]["default"]  # kept as measured
    assert sum(cfg.reward.names == ["world_random"] for cfg in fake.configs) == 2  # control retrained, not merged
    assert [(c["a"], c["b"]) for c in data["comparisons"]] == [("default", "control")]  # across the two calls
    assert data["setup"]["merged"][0]["command"] == earlier["setup"]["command"]
    assert "Merged with an earlier study" in (second / "study_shapes.md").read_text()
    with pytest.raises(SystemExit):  # a different budget cannot be merged
        study.main(["--budget", "30"] + base[2:] + ["--runs", "default", "--out", str(second),
                                                     "--merge", str(first / "study_shapes.json")])
    with pytest.raises(ValueError, match="--budget"):
        study.load_merge(str(first / "study_shapes.json"),
                         study.argparse.Namespace(budget=30.0, seeds=2, evals=5, jobs=1, threads=int(threads)),
                         earlier["setup"]["eval_seeds"])
    with pytest.raises(ValueError, match="not a study_shapes.json"):
        study.load_merge(str(tmp_path / "missing.json"), None, 8)
