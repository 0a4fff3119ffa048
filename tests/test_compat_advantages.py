"""Flow-GRPO's PerPromptStatTracker and AdaGRPO's advantage functions against the formulas (METHODS §2)."""
import numpy as np
import pytest
import torch

from fastgrpo.compat.adagrpo import compute_ema_adv, compute_relative_adv
from fastgrpo.compat.flow_grpo import PerPromptStatTracker


def _anchor_grpo(prompts, rewards, global_std=False, history=None):
    """The tracker's grpo formula in numpy: per prompt, mean and population std over everything seen since
    clear() (``history`` + this batch), or the batch std with global_std; ε = 1e-4."""
    prompts = np.array(prompts)
    out = np.zeros_like(rewards)
    for p in np.unique(prompts):
        seen = np.concatenate([history.get(p, []), rewards[prompts == p]]) if history else rewards[prompts == p]
        std = np.std(rewards) if global_std else np.std(seen)
        out[prompts == p] = (rewards[prompts == p] - seen.mean()) / (std + 1e-4)
    return out


@pytest.mark.parametrize("global_std", [False, True])
def test_grpo_matches_the_formula(global_std):
    rng = np.random.default_rng(0)
    prompts = [f"a photo of prompt {i % 7}" for i in rng.permutation(42)]
    rewards = rng.normal(size=42)
    tracker = PerPromptStatTracker(global_std=global_std)
    np.testing.assert_allclose(tracker.update(prompts, rewards), _anchor_grpo(prompts, rewards, global_std),
                               rtol=1e-10, atol=1e-10)
    assert tracker.get_stats() == (6.0, 7)


def test_rewards_accumulate_across_updates_until_clear():
    rng = np.random.default_rng(1)
    tracker = PerPromptStatTracker()
    history: dict = {}
    for call in range(3):  # the anchor raises AttributeError on the second call; ours accumulates
        prompts = [f"p{(i + call) % 4}" for i in range(8)]
        rewards = rng.normal(size=8)
        np.testing.assert_allclose(tracker.update(prompts, rewards), _anchor_grpo(prompts, rewards, history=history),
                                   rtol=1e-10, atol=1e-10)
        for p, r in zip(prompts, rewards):
            history.setdefault(p, []).append(r)
    tracker.clear()
    prompts, rewards = ["p0", "p0"], np.array([1.0, 3.0])
    np.testing.assert_allclose(tracker.update(prompts, rewards), [-1.0, 1.0], atol=1e-4)


def test_rwr_sft_dpo():
    tracker = PerPromptStatTracker()
    prompts = ["x", "y", "x", "x", "y", "z"]
    rewards = np.array([1.0, 5.0, 3.0, 3.0, 2.0, 7.0])
    np.testing.assert_array_equal(tracker.update(prompts, rewards, "rwr"), rewards)
    np.testing.assert_array_equal(tracker.update(prompts, rewards, "sft"), [0, 1, 1, 1, 0, 1])  # ties both 1
    np.testing.assert_array_equal(tracker.update(prompts, rewards, "dpo"), [-1, 1, 1, 0, -1, 0])
    tied = tracker.update(["t", "t", "t"], np.array([2.0, 2.0, 2.0]), "dpo")
    np.testing.assert_array_equal(tied, [-1, 1, 0])  # argmax == argmin: −1 at the first, +1 at the second
    with pytest.raises(ValueError, match="type"):
        tracker.update(prompts, rewards, "ppo")
    with pytest.raises(ValueError, match="prompts"):
        tracker.update(prompts[:2], rewards)


def test_two_dimensional_rewards_keep_columns_apart():
    rng = np.random.default_rng(2)
    prompts = ["a", "b"] * 5
    rewards = rng.normal(size=(10, 2))
    got = PerPromptStatTracker().update(prompts, rewards)
    for c in range(2):
        np.testing.assert_allclose(got[:, c], _anchor_grpo(prompts, rewards[:, c]), rtol=1e-10, atol=1e-10)


def test_adagrpo_functions_match_formulas():
    g = torch.Generator().manual_seed(3)
    r = torch.randn(12, generator=g)
    local = compute_relative_adv(r, 5.0)
    torch.testing.assert_close(local, ((r - r.mean()) / (r.std() + 1e-8)).clamp(-5, 5), rtol=1e-5, atol=1e-5)
    assert torch.all(compute_relative_adv(torch.full((12,), 0.3), 5.0) == 0)
    mean, std = 0.2, 0.9
    z = (r - mean) / (std + 1e-8)
    pos, neg = z.clamp(min=0).sum(), (-z).clamp(min=0).sum()
    want = torch.where(z > 0, z / pos, z / neg).clamp(-5, 5)
    torch.testing.assert_close(compute_ema_adv(r, torch.tensor(mean), torch.tensor(std), 5.0), want,
                               rtol=1e-5, atol=1e-6)
