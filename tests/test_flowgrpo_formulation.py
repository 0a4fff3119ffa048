"""The Flow-GRPO-formulation provider of ``fastgrpo bench trainer_sd35m`` does the same work as fastgrpo's iteration:
its SDE window and Euler steps land on the scheduler's σ grid, its replay reproduces the rollout's log-probs (first
ratio 1), its per-sample PIL reward equals fastgrpo's scorer on the same uint8 images, its advantages are the group
z-scores, and its update trains the adapter."""
import pytest
import torch
from safetensors.torch import save_file

from benchmarks.flowgrpo_formulation import FlowGrpoFormulation
from fastgrpo.models import load_backbone
from fastgrpo.rewards import AestheticHead, build_reward
from fastgrpo.train import load_config
from fastgrpo.train.schedule import sigmas
from test_rewards import EMBED, save_clip

TINY = ("sampling.steps=5", "window.size=2", "window.schedule=frozen", "group_size=3", "optim.lr=1e-2")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aesthetic")
    save_clip(folder)
    torch.manual_seed(3)
    save_file(AestheticHead(EMBED).state_dict(), str(folder / "head.safetensors"))
    scorer = build_reward("aesthetic", path=str(folder), head_path=str(folder / "head.safetensors"),
                          precision="fp32")
    cfg = load_config(None, TINY)
    backbone = load_backbone(cfg.model, torch.device("cpu"))
    return FlowGrpoFormulation(backbone, scorer, cfg, window=(1, 3)), scorer, cfg


def test_the_rollout_follows_the_sigma_grid_and_keeps_the_window_log_probs(setup):
    formulation, _, cfg = setup
    rollout = formulation.rollout("a red circle", seed=0)
    grid = sigmas(cfg.sampling.steps, cfg.sampling.shift)
    torch.testing.assert_close(formulation.scheduler.sigmas.cpu(), grid, rtol=1e-6, atol=1e-6)
    assert len(rollout.latents) == cfg.sampling.steps + 1 and sorted(rollout.log_probs) == [1, 2]
    text = formulation.backbone.encode_prompts(["a red circle"] * cfg.group_size)
    for i in (0, 3, 4):  # outside the window: the scheduler's Euler step x + (σ' − σ) v
        x = rollout.latents[i]
        with torch.no_grad():
            v = formulation._velocity(x, formulation.scheduler.timesteps[i], text)
        torch.testing.assert_close(rollout.latents[i + 1], x + (grid[i + 1] - grid[i]) * v, rtol=1e-5, atol=1e-6)
    assert rollout.images.shape[:2] == (cfg.group_size, 3)


def test_the_pil_reward_equals_fastgrpos_scorer_on_the_same_uint8_images(setup):
    formulation, scorer, _ = setup
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 40, 48, generator=g)
    as_uint8 = (images * 255).round().clamp(0, 255).to(torch.uint8)
    torch.testing.assert_close(formulation.reward(images), scorer(as_uint8), rtol=0, atol=1e-4)


def test_advantages_are_group_z_scores():
    rewards = torch.tensor([0.2, 0.5, 0.9, 0.4], dtype=torch.float64)
    expected = (rewards - rewards.mean()) / (rewards.std(unbiased=False) + 1e-4)
    torch.testing.assert_close(FlowGrpoFormulation.advantages(rewards), expected.float())


def test_an_iteration_replays_the_rollout_and_trains_the_adapter(setup):
    formulation, _, _ = setup
    before = [p.detach().clone() for p in formulation.params]
    result = formulation.step("a blue square", seed=4)
    assert result["first_ratio_max_dev"] < 1e-6  # the replay recomputes the rollout's log-probs
    assert torch.isfinite(torch.tensor(result["grad_norm"])) and result["grad_norm"] > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, formulation.params))
    assert all(result[stage] >= 0 for stage in ("rollout", "reward", "advantage", "update"))
