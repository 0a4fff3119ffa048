"""The trainer on the embedded world: exact first ratio, bit-exact resume, atomic checkpoints, config handling,
window schedules, and the CLI."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastgrpo.train import load_config
from fastgrpo.train import checkpoint as ckpt
from fastgrpo.train.config import dump_config
from fastgrpo.train.loop import Trainer
from fastgrpo.train.schedule import flash_sigmas, sigmas, window
from fastgrpo.world import shapes

TINY = ("sampling.steps=4", "window.size=2", "adagrpo.candidates=4", "adagrpo.keep=2", "group_size=3",
        "eval_every=1000", "eval_seeds=1", "checkpoint_every=1000")


def _config(tmp_path, *extra):
    return load_config(None, TINY + (f"out_dir={tmp_path}",) + extra)


def test_first_ratio_is_exactly_one_at_batch_above_one(tmp_path):
    trainer = Trainer(_config(tmp_path / "run"))
    metrics = trainer.step()
    assert metrics["first_ratio_max_dev"] == 0.0
    assert metrics["grad_norm"] > 0


@pytest.mark.parametrize("extra", [(), ("optim.minibatches=2",)], ids=["one_step", "two_minibatches"])
def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path, extra):
    full = Trainer(_config(tmp_path / "full", "iterations=4", *extra))
    full.run(progress=False)
    half = Trainer(_config(tmp_path / "half", "iterations=2", *extra))
    half.run(progress=False)
    resumed = Trainer(_config(tmp_path / "half", "iterations=4", *extra), resume=str(tmp_path / "half"))
    assert resumed.iteration == 2
    resumed.run(progress=False)
    keys = ("reward", "loss", "grad_norm", "anchor_reward", "ema_mean")
    steps_full = [{k: h[k] for k in keys} for h in full.history if "loss" in h]
    steps_resumed = [{k: h[k] for k in keys} for h in resumed.history if "loss" in h]
    assert steps_full == steps_resumed
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_minibatches_take_one_step_each_and_replay_an_older_policy(tmp_path):
    """optim.minibatches=2 (2 groups): two AdamW steps per iteration; the first minibatch replays the rollout
    policy (ratio exactly 1), the second replays it after one update (ratio exp(log p_new - log p_old) != 1): a
    hook before each step sees the second start from weights the first step moved."""
    trainer = Trainer(_config(tmp_path / "run", "optim.minibatches=2"))
    params = [p for p in trainer.trained.parameters() if p.requires_grad]
    seen = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append([p.detach().clone() for p in params]))
    metrics = trainer.step()
    assert len(seen) == 2
    assert any(not torch.equal(a, b) for a, b in zip(*seen))  # the second step starts from moved weights
    assert all(trainer.optimizer.state[p]["step"].item() == 2 for p in params)
    assert metrics["first_ratio_max_dev"] == 0.0
    assert metrics["ratio_max_dev"] > 0.0
    with pytest.raises(ValueError, match="optim.minibatches"):
        _config(tmp_path / "bad", "optim.minibatches=3")  # more minibatches than the 2 groups
    with pytest.raises(ValueError, match="optim.minibatches"):
        _config(tmp_path / "bad", "optim.minibatches=0")


def test_resume_refuses_a_different_config(tmp_path):
    Trainer(_config(tmp_path / "run", "iterations=1")).run(progress=False)
    with pytest.raises(ValueError, match="window"):
        Trainer(_config(tmp_path / "run", "window.size=1"), resume=str(tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="latest"):
        Trainer(_config(tmp_path / "other"), resume=str(tmp_path / "nowhere"))


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    ckpt.save(tmp_path, 1, model.state_dict(), {"iteration": 1})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ckpt.save(tmp_path, 2, model.state_dict(), {"iteration": 2})
    weights, state = ckpt.load(tmp_path)
    assert state["iteration"] == 1 and torch.equal(weights["weight"], before["weight"])
    assert not any(p.name.startswith(".ckpt-tmp") for p in tmp_path.iterdir())


def test_window_schedules_and_flash_grid():
    cfg = load_config(None, ("window.shift_interval=2", "window.schedule=progressive")).window
    starts = [window(cfg, 10, i, 100, 0)[0] for i in range(20)]
    assert starts[:6] == [0, 0, 1, 1, 2, 2] and max(starts) <= 8
    assert window(cfg, 10, 17, 100, 0) == (8, 9)  # clipped: the last step is always the ODE
    frozen = load_config(None, ()).window  # the default
    assert {window(frozen, 10, i, 100, 0)[0] for i in range(50)} == {0}
    rand = load_config(None, ("window.schedule=random",)).window
    assert window(rand, 10, 5, 100, 0) == window(rand, 10, 5, 100, 0)
    # Flow-GRPO's sde_window_range (0, T/2) with W = 2: starts 0..3, each about equally often
    ranged = load_config(None, ("window.schedule=random", "window.size=2", "window.random_range=[0,5]")).window
    counts = torch.bincount(torch.tensor([window(ranged, 10, i, 4000, 0)[0] for i in range(4000)]), minlength=4)
    assert counts.shape == (4,) and (counts - 1000).abs().max() < 100, counts  # ±3σ of Binomial(4000, 1/4) ≈ 82
    assert {window(ranged, 10, i, 100, 0) for i in range(100)} == {(0, 2), (1, 3), (2, 4), (3, 5)}
    for bad, message in ((("window.random_range=[0,5]",), "an option of window.schedule=random"),
                         (("window.schedule=random", "window.size=3", "window.random_range=[1,3]"), "narrower"),
                         (("window.schedule=random", "window.random_range=[3,1]"), "0 <= a < b"),
                         (("window.schedule=random", "window.size=2", "window.random_range=[0,10]"),
                          "at most at sampling.steps − 1 = 9")):
        with pytest.raises(ValueError, match=message):
            load_config(None, ("sampling.steps=10",) + bad)
    decay = load_config(None, ("window.schedule=exp_decay", "window.shift_interval=10")).window
    late = [window(decay, 25, i, 100, 0)[0] for i in range(80, 100)]
    assert len(set(late)) > 2  # the window moves faster late in training
    base = sigmas(25, 3.0)
    grid = flash_sigmas(base, 4, 25, 3.0, 0.4)
    assert len(grid) - 1 - 4 == 7  # Flash at l = 0, w = 4, T = 25: 7 DPM-Solver++ steps after the window
    assert torch.allclose(grid[4], base[4]) and grid[-1] == 0


def test_autocast_and_gradient_checkpointing(tmp_path):
    plain = Trainer(_config(tmp_path / "plain")).step()
    ckpt_run = Trainer(_config(tmp_path / "ckpt", "model.gradient_checkpointing=true")).step()
    assert ckpt_run["loss"] == plain["loss"]
    assert math.isclose(ckpt_run["grad_norm"], plain["grad_norm"], rel_tol=1e-4)
    bf16 = Trainer(_config(tmp_path / "bf16", "model.autocast=true")).step()
    assert bf16["first_ratio_max_dev"] == 0.0 and math.isfinite(bf16["loss"])


def test_kl_to_the_initial_model(tmp_path):
    trainer = Trainer(_config(tmp_path / "kl", "optim.kl_beta=0.04"))
    first = trainer.step()
    second = trainer.step()
    assert first["kl"] == 0.0  # the policy still equals its reference
    assert second["kl"] > 0 and math.isfinite(second["loss"])


def test_flash_run_and_no_fusion_run(tmp_path):
    flash = Trainer(_config(tmp_path / "a", "window.flash=true", "iterations=1"))
    flash.run(progress=False)
    step = next(h for h in flash.history if "loss" in h)
    assert step["first_ratio_max_dev"] == 0.0 and step["grad_norm"] > 0  # the window's steps replay exactly
    t = Trainer(_config(tmp_path / "b", "adagrpo.curriculum=false", "adagrpo.fusion=false", "iterations=1"))
    t.run(progress=False)
    assert "anchor_reward" not in t.history[-1]


def test_world_reward_and_correctness_on_ground_truth():
    combos = torch.tensor(shapes.COMBOS)
    images = shapes.render(combos, torch.Generator().manual_seed(0))
    assert shapes.correct(images, combos).all()
    good = shapes.reward(images, combos)
    for k, n in ((0, 5), (1, 3), (2, 5)):
        wrong = combos.clone()
        wrong[:, k] = (wrong[:, k] + 1) % n
        assert (shapes.reward(images, wrong) < good).float().mean() > 0.9
        assert not shapes.correct(images, wrong).any()
    assert set(map(tuple, shapes.HELD_OUT)).isdisjoint(map(tuple, shapes.TRAIN))


def test_cli_trains_two_iterations_and_stops_cleanly_on_sigterm(tmp_path):
    env = dict(os.environ, FASTGRPO_BACKEND="torch")
    cmd = [sys.executable, "-m", "fastgrpo.cli", "train", *TINY, "iterations=2", f"out_dir={tmp_path / 'cli'}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "cli" / "reward_curve.png").is_file() and (tmp_path / "cli" / "latest").is_file()
    assert any((tmp_path / "cli" / "tensorboard").glob("events.out.tfevents.*"))
    cmd = [sys.executable, "-m", "fastgrpo.cli", "train", *TINY, "iterations=1000", f"out_dir={tmp_path / 'term'}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _training_logged(tmp_path / "term" / "metrics.jsonl", proc, timeout=300), "no iteration was logged"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    weights, state = ckpt.load(tmp_path / "term")
    assert 0 < state["iteration"] < 1000 and weights
    logged = [json.loads(line)["iteration"] for line in (tmp_path / "term" / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(state["iteration"] + 1))  # the initial evaluation, then each iteration once


def _training_logged(metrics, proc, timeout: float) -> bool:
    """Wait until the run has logged a training iteration: its signal handlers are installed by then (a fixed sleep
    raced them on a loaded machine). Only complete lines are read: the file is being appended to."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        lines = metrics.read_text().splitlines(keepends=True) if metrics.is_file() else []
        if any(line.endswith("\n") and json.loads(line)["iteration"] >= 1 for line in lines):
            return True
        time.sleep(0.2)
    return False


def _ddp_worker(rank, world, init, out_dir, result, kind="ddp", method="grpo"):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        trainer = Trainer(load_config(None, TINY + ("iterations=2", f"out_dir={out_dir}", f"distributed={kind}",
                                                    f"method={method}")))
        trainer.run(progress=False)
        from fastgrpo.train import distributed
        snapshot = trainer.method.state_dict()  # a collective under FSDP: every rank takes part
        result[rank] = (distributed.full_weights(trainer.trained, trainer.model, trainer.lora, all_ranks=True),
                        trainer.tracker.mean.item(), [h.get("reward") for h in trainer.history if "loss" in h],
                        snapshot)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("kind, method", [("ddp", "grpo"), ("fsdp", "grpo"), ("ddp", "nft"), ("fsdp", "awm")])
def test_two_gloo_ranks_train_and_agree_on_the_weights(tmp_path, kind, method):
    import torch.multiprocessing as mp

    result = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "ddp"), result, kind, method), nprocs=2)
    w0, ema0, rewards0, snap0 = result[0]
    w1, ema1, rewards1, snap1 = result[1]
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    for name, values in snap0.items():  # an old policy / EMA anchor: one per run, equal on every rank
        assert values and all(torch.equal(v, snap1[name][k]) for k, v in values.items())
    assert ema0 == ema1  # one global capability EMA
    assert rewards0 != rewards1  # each rank trained on its own prompts and samples
    initial = Trainer(load_config(None, TINY + (f"out_dir={tmp_path / 'fresh'}",))).model.state_dict()
    assert any(not torch.equal(w0[k], initial[k]) for k in w0)
    _, state = ckpt.load(tmp_path / "ddp")
    assert state["iteration"] == 2


@pytest.mark.parametrize("recipe", ["default", "mixgrpo", "mixgrpo_flash", "flow_grpo", "flow_grpo_fast",
                                    "dance_grpo", "flow_cps", "adagrpo_flow_grpo", "g2rpo",
                                    "stepwise_flow_grpo"])
def test_recipe_configs_train_and_round_trip(recipe, tmp_path):
    from pathlib import Path

    path = Path(__file__).parents[1] / "configs" / f"{recipe}.yaml"
    extra = ("branch.points=0,1",) if recipe == "g2rpo" else ()
    config = load_config(str(path), TINY + ("iterations=2", f"out_dir={tmp_path / recipe}", "adagrpo.keep=2") + extra)
    dump_config(config, tmp_path / "again.yaml")
    assert load_config(str(tmp_path / "again.yaml")) == config
    trainer = Trainer(config)
    for _ in range(2):
        metrics = trainer.step()
        trainer.iteration += 1
        assert metrics["first_ratio_max_dev"] == 0.0 and math.isfinite(metrics["loss"])


def test_dance_group_shares_initial_noise_and_trains_a_subset(tmp_path):
    shared = Trainer(_config(tmp_path / "a", "sampling.shared_noise=true"))
    noise = shared.group_noise(4, 7)
    assert all(torch.equal(noise[0], noise[i]) for i in range(4))
    independent = Trainer(_config(tmp_path / "b")).group_noise(4, 7)
    assert not torch.equal(independent[0], independent[1])
    subset = Trainer(_config(tmp_path / "c", "window.train_fraction=0.6")).method.trained_steps(9, 5)
    assert len(subset) == 5 and subset == sorted(set(subset)) and max(subset) < 9


def test_a_step_option_that_contradicts_the_family_is_refused():
    with pytest.raises(ValueError, match="sampling.logprob='cps' contradicts sampling.family='flow_sde'"):
        load_config(None, ("sampling.logprob=cps",))
    with pytest.raises(ValueError, match="contradicts"):
        load_config(None, ("sampling.family=cps",))


def test_selection_modes_pick_by_anchor_reward(tmp_path):
    trainer = Trainer(_config(tmp_path / "s"))
    anchor = torch.tensor([0.2, 0.9, 0.5, 0.1])
    trainer.tracker.update(torch.tensor([0.45, 0.55]))  # μ_ema = 0.5
    ada = trainer.cfg.adagrpo
    for mode, want in (("curriculum", [2, 0]), ("easiest", [1, 2]), ("hardest", [3, 0]), ("median", [0, 3]),  # lower median 0.2
                       ("random", [0, 1])):
        ada.selection = mode
        assert trainer._pick(anchor, ada).tolist() == want, mode


def test_g2rpo_branches_share_the_trunk_and_differ_after_it():
    from fastgrpo.train.branching import branch, stride_grid
    from fastgrpo.train.rollout import sample
    from fastgrpo.world import World

    world = World.load()
    sig = sigmas(6, 3.0)
    noise = torch.randn(1, *world.codec.latent_shape, generator=torch.Generator().manual_seed(0))
    text = world.encode_prompts(["a red circle at the left"])
    target = torch.tensor([[0, 0, 0]] * 4)
    from fastgrpo.models.world import WorldBackbone
    denoise = WorldBackbone(world).denoiser(world.transformer)
    out = branch(denoise, noise, sig, [0, 2], [1, 2], 4, text, None, guidance=1.0, eta=0.7,
                 family="flow_sde", logprob="full", seed=3, score=lambda z: shapes.reward(world.codec.decode(z), target))
    for k, traj, rewards in out:
        trunk = sample(denoise, noise, sig[:k + 1], text, None, guidance=1.0, eta=0.7,
                       family="flow_sde").latents
        assert all(torch.equal(traj.x[0][g], trunk[0]) for g in range(4))  # identical up to the branch point
        assert not torch.equal(traj.x_next[0][0], traj.x_next[0][1])  # and different after it
        assert rewards.shape == (4, 2) and torch.isfinite(rewards).all()
    # λ = 2 from an odd k on T = 16 misses σ = 0: the scored image is the last call's x̂0
    assert stride_grid(sigmas(16, 3.0), 1, 2)[-1] > 0 and stride_grid(sigmas(16, 3.0), 1, 1)[-1] == 0


def test_stepwise_gains_telescope_to_final_minus_initial(tmp_path):
    trainer = Trainer(_config(tmp_path / "sw", "stepwise.enabled=true", "adagrpo.fusion=false", "window.size=3",
                              "window.flash=false"))
    cfg = trainer.cfg
    from fastgrpo.train.rollout import sample
    noise = trainer.group_noise(3, 11)
    text = trainer.train_prompts.texts[0]
    target = trainer.train_prompts.take([0]).repeat(3)
    traj = sample(trainer.backbone.denoiser(trainer.model), noise, trainer.sigmas, trainer.text([text] * 3), None, guidance=1.0,
                  eta=cfg.sampling.eta, family=cfg.sampling.family, window=(0, 3), seed=5)
    gains, final = trainer.method.stepwise_gains(traj, text, target)
    assert gains.shape == (3, 3) and torch.equal(final, trainer.reward(traj.latents, target))

    def x0_reward(x, sigma):  # an independent x̂0 refinement: Euler sub-steps written out here
        emb = trainer.text([text] * 3)
        grid = torch.linspace(sigma, 0.0, cfg.stepwise.substeps + 1).tolist()
        for s, sn in zip(grid[:-1], grid[1:]):
            x = x + (sn - s) * trainer.model(hidden_states=x, encoder_hidden_states=emb.hidden,
                                             pooled_projections=emb.pooled, timestep=torch.full((3,), s * 1000.0),
                                             return_dict=False)[0]
        return trainer.reward(x, target)

    with torch.no_grad():
        want = x0_reward(traj.x_next[-1], traj.sigma_next[-1]) - x0_reward(traj.x[0], traj.sigma[0])
    torch.testing.assert_close(gains.sum(1), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="stepwise.enabled"):
        load_config(None, ("stepwise.enabled=true",))  # fusion is on by default: a per-sample advantage


def test_nonfinite_rewards_are_skipped_then_stop_the_run_without_losing_the_checkpoint(tmp_path):
    trainer = Trainer(_config(tmp_path / "nan", "optim.max_nonfinite=2"))
    trainer.step()
    trainer.iteration += 1
    saved = trainer.save()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    real = trainer.reward
    trainer.reward = lambda latents, prompts, **kw: real(latents, prompts, **kw) * float("nan")
    assert trainer.step() == {"skipped": "rewards"}  # skipped: no update
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
    with pytest.raises(RuntimeError, match="optim.max_nonfinite"):
        trainer.step()
    trainer.reward = real
    weights, state = ckpt.load(tmp_path / "nan")
    assert saved.exists() and state["iteration"] == 1 and all(torch.equal(weights[k], before[k]) for k in weights)
    with pytest.raises(ValueError, match="optim.max_nonfinite"):
        load_config(None, ("optim.max_nonfinite=0",))
