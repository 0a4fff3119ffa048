"""Methods as plug-ins on the embedded world: DiffusionNFT's rollout (the old policy, DPM-Solver++ 2M, no CFG), its
advantages (per-prompt mean, whole-batch population std), its old-policy soft update; AWM's on-policy rollout and EMA
anchor; bit-exact resume of each, and a checkpoint refused by another method."""
import pytest
import torch

from fastgrpo.train import load_config
from fastgrpo.train.loop import Trainer
from fastgrpo.train.rollout import sample_dpm

TINY = ("sampling.steps=4", "adagrpo.candidates=4", "adagrpo.keep=2", "group_size=3", "eval_every=1000",
        "eval_seeds=1", "checkpoint_every=1000")


def _cfg(tmp_path, *extra, recipe="diffusion_nft"):
    small = ("dgpo.trunc_steps=3",) if recipe == "dgpo" else ()  # T = 4: indices 0..3
    return load_config(recipe, TINY + small + (f"out_dir={tmp_path}",) + extra)


def test_nft_rollout_is_the_old_policys_dpm_sample_and_advantages_use_the_batch_std(tmp_path):
    trainer = Trainer(_cfg(tmp_path / "run"))
    prompts = trainer.train_prompts.take([0, 5])
    batch = trainer.method.rollout(prompts, seed=11)
    assert [x.shape for x in batch.groups] == [(3, *trainer.backbone.latent_shape)] * 2
    # at the start θ_old = θ: the rollout is the current model's DPM-Solver++ 2M sample from the group's noise
    for p, x0 in enumerate(batch.groups):
        noise = trainer.group_noise(3, 11 + 100 + p)
        want = sample_dpm(trainer.backbone.denoiser(trainer.model), noise, trainer.sigmas,
                          trainer.text([prompts.texts[p]] * 3), None, guidance=1.0)
        assert torch.equal(x0, want)
    r = batch.rewards.values.double()
    adv = trainer.method.advantages(batch).advantages.double()
    group_mean = r.view(2, 3).mean(1).repeat_interleave(3)
    want = ((r - group_mean) / (r.std(correction=0) + 1e-4)).clamp(-5, 5)
    assert torch.allclose(adv, want, atol=1e-5)


def test_nft_soft_updates_the_old_policy_after_each_iteration(tmp_path):
    trainer = Trainer(_cfg(tmp_path / "run", "nft.old_decay_rate=0.2"))
    start = [v.clone() for v in trainer.method.old.values]
    metrics = trainer.step()
    assert 0.0 <= metrics["optimality"] <= 1.0 and metrics["grad_norm"] > 0 and "v_norm_ratio" in metrics
    assert trainer.optimizer_steps == 1
    now = [p.detach() for _, p in trainer.method.old.named]
    assert any(not torch.equal(a, b) for a, b in zip(start, now))  # the update moved θ
    # d = min(0.2·1, 0.5): θ_old = 0.2·θ_old + 0.8·θ
    for old, s, p in zip(trainer.method.old.values, start, now):
        assert torch.allclose(old, 0.2 * s + 0.8 * p, atol=1e-7)


@pytest.mark.parametrize("recipe, snapshot, key", [("diffusion_nft", "old", "optimality"),
                                                   ("awm", "ema", "fm_error"), ("dgpo", "ema", "group_score")])
def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path, recipe, snapshot, key):
    full = Trainer(_cfg(tmp_path / "full", "iterations=3", recipe=recipe))
    full.run(progress=False)
    half = Trainer(_cfg(tmp_path / "half", "iterations=2", recipe=recipe))
    half.run(progress=False)
    resumed = Trainer(_cfg(tmp_path / "half", "iterations=3", recipe=recipe), resume=str(tmp_path / "half"))
    assert resumed.iteration == 2 and resumed.optimizer_steps == 2
    resumed.run(progress=False)
    keys = ("reward", "loss", "grad_norm", key)
    assert ([{k: h[k] for k in keys} for h in full.history if "loss" in h]
            == [{k: h[k] for k in keys} for h in resumed.history if "loss" in h])
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(getattr(full.method, snapshot).values, getattr(resumed.method, snapshot).values):
        assert torch.equal(a, b)


def test_awm_rolls_out_the_current_policy_and_its_ema_anchor_follows(tmp_path):
    trainer = Trainer(_cfg(tmp_path / "run", "awm.ema_decay_rate=0.1", recipe="awm"))
    with torch.no_grad():  # move θ away from the anchor: the rollout must follow θ, not the EMA
        for _, p in trainer.method.ema.named:
            p.add_(0.01)
    prompts = trainer.train_prompts.take([2])
    batch = trainer.method.rollout(prompts, seed=5)
    want = sample_dpm(trainer.backbone.denoiser(trainer.model), trainer.group_noise(3, 105), trainer.sigmas,
                      trainer.text([prompts.texts[0]] * 3), None, guidance=1.0)
    assert torch.equal(batch.groups[0], want)
    start = [v.clone() for v in trainer.method.ema.values]
    metrics = trainer.step()
    assert metrics["ema_gap"] > 0 and metrics["fm_error"] > 0  # the anchor lags θ by the shift above
    for ema, s, (_, p) in zip(trainer.method.ema.values, start, trainer.method.ema.named):
        assert torch.allclose(ema, 0.1 * s + 0.9 * p.detach(), atol=1e-7)  # d = min(0.1·1, 0.3)


def test_dgpo_shares_timesteps_across_groups_and_noise_within_one(tmp_path):
    trainer = Trainer(_cfg(tmp_path / "run", "dgpo.switch_ema_ref=1", "dgpo.ema_decay_rate=0.2", recipe="dgpo"))
    batch = trainer.method.rollout(trainer.train_prompts.take([0, 1]), seed=3)
    units = trainer.method.units(batch, seed=3)
    assert [i for i, _ in units[0]] == [i for i, _ in units[1]]  # the same timesteps for every group
    assert len({i for i, _ in units[0]}) == 4 and all(0 <= i <= 3 for i, _ in units[0])  # without replacement
    x0 = batch.groups[0]
    t = torch.full((3,), 0.5)
    x_t, target = trainer.method.noised(x0, t, units[0][0][1], shared=True)
    eps = target + x0
    assert torch.allclose(eps, eps[:1].expand_as(eps), atol=1e-5)  # one noise draw for the whole group
    start = [v.clone() for v in trainer.method.ema.values]
    trainer.step()
    for ema, s, (_, p) in zip(trainer.method.ema.values, start, trainer.method.ema.named):
        assert torch.allclose(ema, 0.2 * s + 0.8 * p.detach(), atol=1e-7)  # after each optimiser step
    # after switch_ema_ref = 1 optimiser step the rollouts come from the EMA copy, not the current weights
    prompts = trainer.train_prompts.take([4])
    got = trainer.method.rollout(prompts, seed=9).groups[0]
    with trainer.method.ema.active():
        want = sample_dpm(trainer.backbone.denoiser(trainer.model), trainer.group_noise(3, 109), trainer.sigmas,
                          trainer.text([prompts.texts[0]] * 3), None, guidance=1.0)
    assert torch.equal(got, want)


def test_a_checkpoint_of_one_method_is_refused_by_another(tmp_path):
    Trainer(_cfg(tmp_path / "nft", "iterations=1")).run(progress=False)
    grpo = load_config(None, TINY + (f"out_dir={tmp_path / 'nft'}", "window.size=2"))
    with pytest.raises(ValueError, match="method='nft'.*method='grpo'"):
        Trainer(grpo, resume=str(tmp_path / "nft"))
