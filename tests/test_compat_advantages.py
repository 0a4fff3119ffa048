"""Flow-GRPO's PerPromptStatTracker and AdaGRPO's advantage functions against the anchors written out in fp64
(tests/anchor_math.py: ``tracker_update`` checked against yifan123/flow_grpo@94e23ee5 flow_grpo/stat_tracking.py;
``relative_adv`` and ``ema_adv`` against Bujiazi/GRPO-Series@c4028f9 utils/utilities.py, src/method_adagrpo.py)."""
import numpy as np
import pytest
import torch

import anchor_math
from fastgrpo.compat.adagrpo import compute_ema_adv, compute_relative_adv
from fastgrpo.compat.flow_grpo import PerPromptStatTracker

CLOSE = dict(rtol=1e-10, atol=1e-10)  # both fp64


def _prompts(rng, n, groups):
    return [f"a photo of prompt {i % groups}" for i in rng.permutation(n)]


@pytest.mark.parametrize("global_std", [False, True])
@pytest.mark.parametrize("columns", [None, 3], ids=["1d", "2d"])
def test_grpo_matches_the_anchor(global_std, columns):
    rng = np.random.default_rng(0)
    prompts = _prompts(rng, 42, 7)
    rewards = rng.normal(size=42 if columns is None else (42, columns))
    tracker = PerPromptStatTracker(global_std=global_std)
    got = tracker.update(prompts, rewards)
    assert got.dtype == np.float64 and got.shape == rewards.shape
    np.testing.assert_allclose(got, anchor_math.tracker_update({}, prompts, rewards, global_std=global_std), **CLOSE)
    assert tracker.get_stats() == (6.0, 7)
    assert set(tracker.stats) == set(prompts) and tracker.stats[prompts[0]].shape[1:] == rewards.shape[1:]


def test_rewards_accumulate_across_updates_until_clear():
    rng = np.random.default_rng(1)
    tracker = PerPromptStatTracker()
    history: dict = {}
    for call in range(3):  # the anchor raises AttributeError on the second call; ours accumulates as it intends
        prompts = [f"p{(i + call) % 4}" for i in range(8)]
        rewards = rng.normal(size=8)
        np.testing.assert_allclose(tracker.update(prompts, rewards), anchor_math.tracker_update(history, prompts,
                                                                                                 rewards), **CLOSE)
    assert tracker.get_stats() == (6.0, 4)
    tracker.clear()
    assert tracker.stats == {} and tracker.get_stats() == (0, 4)
    np.testing.assert_allclose(tracker.update(["p0", "p0"], [1.0, 3.0]), [-1.0, 1.0], atol=1e-4)
    tracker.stats = {}  # the anchor's attribute can be reset by assignment
    assert tracker.get_stats() == (0, 4)


def test_rwr_sft_dpo_match_the_anchor():
    prompts = ["x", "y", "x", "x", "y", "z", "z"]
    rewards = np.array([1.0, 5.0, 3.0, 3.0, 2.0, 7.0, 7.0])
    for kind in ("rwr", "sft", "dpo"):
        got = PerPromptStatTracker().update(prompts, rewards, type=kind)
        np.testing.assert_array_equal(got, anchor_math.tracker_update({}, prompts, rewards, type=kind))
    # the written-out expectations: ties all get 1 under sft; under dpo the first argmax/argmin, and a tied group
    # gets −1 at its first sample, +1 at its second
    np.testing.assert_array_equal(PerPromptStatTracker().update(prompts, rewards, type="sft"), [0, 1, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(PerPromptStatTracker().update(prompts, rewards, type="dpo"),
                                  [-1, 1, 1, 0, -1, -1, 1])


def test_two_dimensional_sft_dpo_use_the_flat_block():
    """(N, T) rewards: sft compares with the group's overall maximum; dpo marks whole rows at the flat argmax /
    argmin of the group's block, and a flat index past the group's rows raises (the anchor's IndexError)."""
    rng = np.random.default_rng(5)
    prompts = ["a", "b", "a", "b", "a", "b"]
    rewards = rng.normal(size=(6, 2))
    got = PerPromptStatTracker().update(prompts, rewards, type="sft")
    np.testing.assert_array_equal(got, anchor_math.tracker_update({}, prompts, rewards, type="sft"))
    assert got.sum() == 2  # one maximum per group
    in_rows = np.array([[9.0, -9.0], [0.0, 1.0], [5.0, 0.0], [1.0, 2.0]])  # flat argmax, argmin = 0, 1 per group
    got = PerPromptStatTracker().update(["a", "a", "b", "b"], in_rows, type="dpo")
    np.testing.assert_array_equal(got, anchor_math.tracker_update({}, ["a", "a", "b", "b"], in_rows, type="dpo"))
    np.testing.assert_array_equal(got, [[1, 1], [-1, -1], [1, 1], [-1, -1]])
    past_rows = np.array([[0.0, 1.0], [-5.0, 0.0], [5.0, 0.0]])  # flat argmax 4 of a 3-row group
    for err in (ValueError, IndexError):
        with pytest.raises(err, match="dpo"):
            PerPromptStatTracker().update(["a", "a", "a"], past_rows, type="dpo")


def test_gardo_matches_the_anchor():
    rng = np.random.default_rng(3)
    prompts = _prompts(rng, 24, 4)
    rewards = np.repeat(rng.normal(size=(24, 1)), 3, axis=1)  # (N, T): one reward repeated per trained step
    features = rng.normal(size=(24, 16)).astype(np.float32)
    got = PerPromptStatTracker().update(prompts, rewards, features, type="gardo")  # dists is the third argument
    np.testing.assert_allclose(got, anchor_math.tracker_update({}, prompts, rewards, features, type="gardo"),
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="dists"):
        PerPromptStatTracker().update(prompts, rewards, type="gardo")
    with pytest.raises(ValueError, match="rewards"):  # the anchor's broadcasting fails on 1-D rewards
        PerPromptStatTracker().update(prompts, rewards[:, 0], features, type="gardo")


def test_positional_third_argument_is_dists():
    """The anchor's signature is update(prompts, rewards, dists=None, type='grpo'): a positional 'sft' is dists."""
    prompts, rewards = ["a", "a", "b", "b"], np.array([1.0, 2.0, 4.0, 3.0])
    np.testing.assert_allclose(PerPromptStatTracker().update(prompts, rewards, "sft"),
                               anchor_math.tracker_update({}, prompts, rewards), **CLOSE)


def test_rejections_and_unknown_type():
    prompts, rewards = ["x", "y", "x"], np.array([1.0, 2.0, 3.0])
    for err in (ValueError, IndexError):  # the anchor: IndexError (argmax == argmin → index 1 of a 1-sample group)
        with pytest.raises(err, match="dpo"):
            PerPromptStatTracker().update(prompts, rewards, type="dpo")
        with pytest.raises(err, match="prompts"):  # the anchor: IndexError from the boolean mask
            PerPromptStatTracker().update(prompts[:2], rewards)
    tracker = PerPromptStatTracker()
    with pytest.warns(UserWarning, match="ppo"):
        got = tracker.update(prompts, rewards, type="ppo")
    np.testing.assert_array_equal(got, np.zeros(3))  # the anchor falls through every branch: zeros
    assert tracker.get_stats() == (1.5, 2)  # and still records the rewards


def test_nan_reward_is_accepted_and_kept_in_its_group():
    """The anchor accepts a NaN reward (its group's advantages are NaN); ours are finite there (0), the other
    groups untouched."""
    got = PerPromptStatTracker().update(["a", "a", "b", "b"], [1.0, np.nan, 1.0, 2.0])
    np.testing.assert_array_equal(got[:2], [0.0, 0.0])
    np.testing.assert_allclose(got[2:], anchor_math.tracker_update({}, ["b", "b"], [1.0, 2.0]), **CLOSE)


def test_relative_adv_matches_the_anchor():
    g = torch.Generator().manual_seed(3)
    for shape in [(12,), (2, 6)]:
        r = torch.randn(shape, generator=g)
        got = compute_relative_adv(r * 3, 1.5)
        assert got.dtype == torch.float32 and got.shape == r.shape
        torch.testing.assert_close(got.double(), anchor_math.relative_adv(r * 3, 1.5), rtol=1e-5, atol=1e-6)
    # a constant group: the anchor's fp32 reductions leave rounding noise that 1/(0 + 1e-8) amplifies; the same
    # reductions here give the same numbers, bit for bit
    for value in (0.3, 0.7071, 1.1):
        r = torch.full((12,), value)
        want = ((r - r.mean()) / (r.std() + 1e-8)).clamp(-5, 5)
        assert torch.equal(compute_relative_adv(r, 5.0), want)
    assert torch.equal(compute_relative_adv(torch.tensor([0.4]), 5.0), torch.zeros(1))  # the anchor: NaN


@pytest.mark.parametrize("case", ["two_sided", "all_above", "all_below"])
def test_ema_adv_matches_the_anchor(case):
    r = torch.randn(12, generator=torch.Generator().manual_seed(4))
    mean = {"two_sided": 0.1, "all_above": -9.0, "all_below": 9.0}[case]
    for ema_mean, ema_std in [(mean, 0.9), (torch.tensor(mean), torch.tensor(0.9))]:
        got = compute_ema_adv(r, ema_mean, ema_std, 5.0)
        assert got.dtype == torch.float32 and got.shape == r.shape
        torch.testing.assert_close(got.double(), anchor_math.ema_adv(r, mean, 0.9, 5.0), rtol=1e-5, atol=1e-6)
    if case == "two_sided":
        assert abs(float(got[got > 0].sum()) - 1) < 1e-5 and abs(float(got[got < 0].sum()) + 1) < 1e-5
    for err in (ValueError, TypeError):  # the anchor: TypeError from r − None
        with pytest.raises(err, match="ema_mean"):
            compute_ema_adv(r, None, 0.9, 5.0)
