"""reward.schedule: a rollout's rewards scored as each group is sampled (inline), all at once after it (batched), or
in a worker thread while the next group rolls out (overlap) — the same rewards in the same order, the worker's
errors raised in the trainer, and whole training iterations equal across schedules (GRPO and a forward-process
method)."""
import logging
import threading

import pytest
import torch

from fastgrpo.train import load_config
from fastgrpo.train.loop import Trainer
from fastgrpo.train.overlap import SCHEDULES, RewardQueue
from fastgrpo.train.task import Prompts


def _score(weight):
    """A reward that depends on the latents and the prompts' metadata: tanh(flatten(x) · w) + meta."""
    def score(latents, prompts):
        return torch.tanh(latents.flatten(1) @ weight) + prompts.meta.float()
    return score


def _groups(n=5, size=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 4, 6, 6, generator=g), Prompts([f"p{i}"] * size, torch.full((size,), float(i))))
            for i in range(n)]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_returns_each_groups_rewards_in_order(schedule):
    weight = torch.randn(144, generator=torch.Generator().manual_seed(1))
    score = _score(weight)
    groups = _groups()
    expected = [score(latents, prompts) for latents, prompts in groups]
    with RewardQueue(score, schedule, Prompts.cat) as queue:
        for latents, prompts in groups:
            queue.submit(latents, prompts)
        got = queue.results()
    assert len(got) == len(groups)
    for a, b in zip(got, expected):
        if schedule == "batched":  # one call over the concatenation: the matmul's rounding may differ
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(a, b)


def test_overlap_scores_in_another_thread_without_grad():
    seen = []

    def score(latents, prompts):
        seen.append((threading.current_thread().name, torch.is_grad_enabled()))
        return latents.sum((1, 2, 3))

    queue = RewardQueue(score, "overlap", Prompts.cat)
    for latents, prompts in _groups(2):
        queue.submit(latents, prompts)
    queue.results()
    assert [name.startswith("fastgrpo-reward") for name, _ in seen] == [True, True]
    assert not any(grad for _, grad in seen)
    assert queue._pool is None  # the worker is gone once the results are read


def test_an_error_in_the_worker_is_raised_by_results():
    def score(latents, prompts):
        if prompts.meta[0] == 1:
            raise ValueError("reward model failed on group 1")
        return latents.sum((1, 2, 3))

    queue = RewardQueue(score, "overlap", Prompts.cat)
    for latents, prompts in _groups(3):
        queue.submit(latents, prompts)
    with pytest.raises(ValueError, match="reward model failed on group 1"):
        queue.results()
    assert queue._pool is None


def test_an_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="reward.schedule must be one of"):
        RewardQueue(lambda latents, prompts: latents, "later")
    with pytest.raises(ValueError, match="reward.schedule"):
        load_config(None, ["reward.schedule=later"])


TINY = ("sampling.steps=3", "window.size=2", "adagrpo.candidates=3", "adagrpo.keep=3", "group_size=3",
        "eval_every=0", "iterations=2")


def test_the_trainer_logs_the_schedule_it_runs(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="fastgrpo.train.loop"):
        auto = Trainer(load_config(None, TINY + (f"out_dir={tmp_path / 'auto'}",)))
        batched = Trainer(load_config(None, TINY + ("reward.schedule=batched", f"out_dir={tmp_path / 'b'}")))
    messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reward.schedule")]
    assert messages == ["reward.schedule: inline (auto)", "reward.schedule: batched"]
    assert (auto.reward_schedule, batched.reward_schedule) == ("inline", "batched")


@pytest.mark.parametrize("method", ["grpo", "nft"])
def test_training_iterations_are_the_same_under_every_schedule(tmp_path, method):
    runs = {}
    for schedule in SCHEDULES:
        trainer = Trainer(load_config(None, TINY + (f"method={method}", f"reward.schedule={schedule}",
                                                    f"out_dir={tmp_path / schedule}")))
        runs[schedule] = []
        for _ in range(2):
            runs[schedule].append(trainer.step())
            trainer.iteration += 1
    for schedule in ("overlap", "batched"):
        for a, b in zip(runs["inline"], runs[schedule]):
            for key in ("reward", "loss", "grad_norm"):
                if schedule == "overlap":  # the same calls on the same latents, in another thread
                    assert b[key] == a[key], (schedule, key)
                else:
                    assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (schedule, key)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_overlap_on_cuda_waits_for_the_rollout_and_for_the_reward():
    """The worker's stream waits for the group's sampling (a long kernel queued just before submit) and the
    rollout's stream for the reward: the values equal the inline ones."""
    device = torch.device("cuda")
    weight = torch.randn(4096, 4096, device=device) / 64

    def score(latents, prompts):
        x = latents.flatten(1)[:, :4096]
        for _ in range(20):
            x = torch.tanh(x @ weight)
        return x.sum(1) + prompts.meta.to(device)

    groups = []
    with RewardQueue(score, "overlap", Prompts.cat) as queue:
        for i in range(4):
            x = torch.randn(8, 4096, device=device)
            for _ in range(50):  # a long producer on the current stream, still running at submit
                x = torch.tanh(x @ weight)
            groups.append((x.view(8, 1, 64, 64), Prompts(["p"] * 8, torch.full((8,), float(i)))))
            queue.submit(*groups[-1])
        got = queue.results()
    expected = [score(latents, prompts) for latents, prompts in groups]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
