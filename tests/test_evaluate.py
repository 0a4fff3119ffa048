"""Evaluation: the t quantiles and the interval against hand computations, paired fixed-noise evaluations, the
metrics a run logs, and `fastgrpo eval` / `sample` on good and bad targets."""
import json
import math

import pytest
import torch

from fastgrpo.cli import main
from fastgrpo.train import checkpoint, load_config
from fastgrpo.train.evaluate import eval_noise, interval, t_cdf, t_quantile
from fastgrpo.train.loop import Trainer
from fastgrpo.world import shapes

# Student's t 0.975 quantiles from a printed table (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2), 9 digits
T_975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 5: 2.570581836, 9: 2.262157163, 24: 2.063898562,
         30: 2.042272456, 64: 1.997729654, 74: 1.992543495}
TINY = ("sampling.steps=2", "window.size=1", "adagrpo.candidates=4", "adagrpo.keep=2", "group_size=2",
        "eval_seeds=2", "eval_batch=64", "checkpoint_every=1000")


def _config(tmp_path, *extra):
    return load_config(None, TINY + (f"out_dir={tmp_path}",) + extra)


def _means(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "t_eval"}


@pytest.mark.parametrize("df, quantile", sorted(T_975.items()))
def test_t_quantile_matches_the_table(df, quantile):
    assert t_quantile(0.975, df) == pytest.approx(quantile, abs=1e-8)
    assert t_quantile(0.025, df) == pytest.approx(-quantile, abs=1e-8)
    assert t_cdf(quantile, df) == pytest.approx(0.975, abs=1e-10)


@pytest.mark.parametrize("df", [3, 4])  # the odd and the even sum
def test_t_cdf_against_integrating_the_density(df):
    t = torch.linspace(-60.0, 1.7, 200_001, dtype=torch.float64)
    density = torch.distributions.StudentT(torch.tensor(float(df), dtype=torch.float64)).log_prob(t).exp()
    below = 1 - t_cdf(60.0, df)  # P(T < −60) = P(T > 60): the formula's own far tail
    integral = torch.trapezoid(density, t).item() + below
    assert t_cdf(1.7, df) == pytest.approx(integral, abs=1e-7)
    assert t_cdf(0.0, df) == 0.5


def test_interval_is_a_t_interval_over_per_prompt_means():
    values = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])  # 4 prompts × 2 seeds
    # by hand: per-prompt means 0.5, 1, 0, 1 → mean 0.625; squared deviations 0.015625 + 0.140625 + 0.390625
    # + 0.140625 = 0.6875, s² = 0.6875/3; half-width t_{0.975,3}·s/√4
    half = 3.182446305 * math.sqrt(0.6875 / 3) / 2
    mean, lo, hi = interval(values)
    assert mean == 0.625
    assert lo == pytest.approx(0.625 - half, abs=1e-9) and hi == pytest.approx(0.625 + half, abs=1e-9)
    # the 8 samples taken as independent would give a narrower interval (they are not: seeds share a prompt)
    flat = values.reshape(8, 1)
    assert interval(flat)[2] - interval(flat)[1] < hi - lo


def test_interval_edges():
    mean, lo, hi = interval(torch.tensor([[1.0, 0.0, 1.0, 1.0]]))  # one prompt: the seeds are the unit
    half = 3.182446305 * 0.5 / 2
    assert (mean, lo, hi) == pytest.approx((0.75, 0.75 - half, 0.75 + half), abs=1e-9)
    assert interval(torch.tensor([[0.4]])) == (pytest.approx(0.4), None, None)
    assert interval(torch.full((5, 3), 0.7)) == pytest.approx((0.7, 0.7, 0.7))  # no spread: a point
    with pytest.raises(ValueError, match="values"):
        interval(torch.ones(4))


def test_noise_is_fixed_per_prompt_and_seed():
    a = eval_noise(5, 2, (3, 4), set_index=0)
    assert torch.equal(a, eval_noise(5, 2, (3, 4), set_index=0))
    assert not torch.equal(a, eval_noise(5, 3, (3, 4), set_index=0))
    assert not torch.equal(a, eval_noise(5, 2, (3, 4), set_index=1))


def test_same_weights_same_noise_same_numbers(tmp_path):
    first = Trainer(_config(tmp_path / "a"))
    metrics = first.evaluate()
    assert _means(Trainer(_config(tmp_path / "b")).evaluate()) == _means(metrics)  # another process's view
    assert _means(first.evaluate()) == _means(metrics)
    parts = set(shapes.components(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, dtype=torch.long)))
    for name in ("train", "heldout"):
        for score in ("reward", "correct", *parts):
            key = f"eval_{name}_{score}"
            assert metrics[f"{key}_lo"] <= metrics[key] <= metrics[f"{key}_hi"], key
    train = first.last_eval.sets["train"]
    assert train.scores["reward"].shape == (len(shapes.TRAIN), 2)
    # more seeds keep the first seeds' noise: the samples of seeds 0-1 score the same (one batch each time)
    more = Trainer(_config(tmp_path / "c", "eval_seeds=3", "eval_batch=1000"))
    more.evaluate()
    same_batch = Trainer(_config(tmp_path / "d", "eval_batch=1000"))
    same_batch.evaluate()
    torch.testing.assert_close(more.last_eval.sets["train"].scores["reward"][:, :2],
                               same_batch.last_eval.sets["train"].scores["reward"], atol=1e-4, rtol=0)


def test_a_run_logs_intervals_components_wall_time_and_pictures(tmp_path):
    out = tmp_path / "run"
    Trainer(_config(out, "iterations=2", "eval_every=1")).run(progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1, 2]
    walls = [r["wall_s"] for r in records]
    assert walls == sorted(walls) and walls[0] > 0
    for r in records:
        assert r["eval_train_correct_lo"] <= r["eval_train_correct"] <= r["eval_train_correct_hi"]
        assert {"eval_heldout_reward_hi", "eval_train_shape", "t_eval"} <= set(r)
    for name in ("before_after.png", "reward_curve.png", "samples_00000.png", "samples_00002.png",
                 "eval_start.pt"):
        assert (out / name).is_file(), name
    # a resumed run still draws before_after.png from the saved iteration-0 evaluation
    (out / "before_after.png").unlink()
    Trainer(_config(out, "iterations=3", "eval_every=1"), resume=str(out)).run(progress=False)
    assert (out / "before_after.png").is_file()


def test_eval_cli_on_a_run_matches_the_trainer(tmp_path, capsys):
    trainer = Trainer(_config(tmp_path / "run", "eval_seeds=1"))
    trainer.save()
    expected = _means(trainer.evaluate())
    assert main(["eval", str(tmp_path / "run"), "--seeds", "1", "--out", str(tmp_path / "eval.json")]) == 0
    record = json.loads((tmp_path / "eval.json").read_text())
    assert record["seeds"] == 1 and record["iteration"] == 0
    assert _means(record["metrics"]) == expected
    assert "eval_heldout_correct" in capsys.readouterr().out
    # per shape: the mean over that shape's prompts (a partition of the set), weighted back to the set's mean
    train = trainer.last_eval.sets["train"]
    combos = torch.tensor(shapes.TRAIN)
    total = 0.0
    for i, name in enumerate(shapes.SHAPES):
        mean, lo, hi = record["groups"]["train"][name]["correct"]
        rows = combos[:, 1] == i
        assert mean == pytest.approx(train.scores["correct"][rows].mean().item(), abs=1e-6)
        assert lo <= mean <= hi
        total += mean * rows.sum().item()
    assert total / len(combos) == pytest.approx(record["metrics"]["eval_train_correct"], abs=1e-6)
    assert set(record["groups"]["heldout"]) == set(shapes.SHAPES)


def test_eval_cli_refuses_what_is_not_a_run_or_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for argv, message in ((["eval", str(tmp_path / "empty")], "not a run directory"),
                          (["eval", str(tmp_path / "nowhere")], "no such file"),
                          (["sample", str(tmp_path / "empty")], "not a run directory"),
                          (["eval", "--seeds", "0"], "--seeds must be >= 1")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err, err
        assert argv[1] in err or argv[1] == "--seeds"


def test_eval_cli_refuses_a_checkpoint_of_another_world_or_model(tmp_path, capsys):
    trainer = Trainer(_config(tmp_path / "run"))
    weights, state = trainer._weights(), trainer._state()
    other_world = checkpoint.save(tmp_path / "world", 0, weights, {**state, "base": "0" * 64})
    first = next(iter(weights))
    other_model = checkpoint.save(tmp_path / "model", 0, {**weights, first: weights[first][..., :1].clone()}, state)
    for target, message in ((other_world, "another world"), (tmp_path / "model", "do not fit"),
                            (other_model, "do not fit")):
        with pytest.raises(SystemExit) as exit_:
            main(["eval", str(target)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and str(target) in err, err


def test_a_real_model_reports_reward_with_its_interval_only(tmp_path):
    pytest.importorskip("diffusers")
    from fastgrpo.models.tiny import save_tiny_pipeline

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\na blue dog\na green circle\n")
    cfg = load_config(None, ("model.kind=sd3", f"model.path={save_tiny_pipeline('sd3', tmp_path / 'sd3')}",
                             "model.resolution=32", "model.dtype=fp32", "model.max_sequence_length=16",
                             f"data.train_prompts={prompts}", "data.eval_count=3", "reward.names=jpeg_compressibility",
                             "sampling.steps=2", "window.size=1", "adagrpo.candidates=2", "adagrpo.keep=1",
                             "eval_seeds=2", f"out_dir={tmp_path / 'run'}"))
    metrics = Trainer(cfg).evaluate()
    assert set(metrics) == {"eval_train_reward", "eval_train_reward_lo", "eval_train_reward_hi", "t_eval"}
    assert metrics["eval_train_reward_lo"] <= metrics["eval_train_reward"] <= metrics["eval_train_reward_hi"]


@pytest.mark.parametrize("override, message", [("eval_seeds=0", "'eval_seeds' = 0: .* greater than or equal to 1"),
                                               ("eval_batch=0", "'eval_batch' = 0: .* greater than or equal to 1"),
                                               ("eval_batch=null", None)])
def test_bad_eval_settings_name_the_key(override, message):
    if message is None:  # null: chosen by model
        assert load_config(None, (override,)).eval_batch is None
        return
    with pytest.raises(ValueError, match=message):
        load_config(None, (override,))
