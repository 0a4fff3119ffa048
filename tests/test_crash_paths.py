"""The trainer's crash and bad-input paths: a non-finite gradient with a finite loss, eval_every / checkpoint_every
= 0, the final save, and metrics.jsonl after a resume."""
import json

import pytest
import torch

from fastgrpo.train import checkpoint as ckpt
from fastgrpo.train import load_config
from fastgrpo.train.loop import Trainer

TINY = ("sampling.steps=4", "window.size=2", "adagrpo.candidates=4", "adagrpo.keep=2", "group_size=3",
        "eval_every=1000", "eval_seeds=1", "checkpoint_every=1000")


@pytest.fixture(autouse=True)
def _torch_ops(monkeypatch):
    """The loop's control flow is under test here, not the kernels: the PyTorch path is much faster on CPU."""
    monkeypatch.setenv("FASTGRPO_BACKEND", "torch")


def _config(path, *extra):
    return load_config(None, TINY + (f"out_dir={path}",) + extra)


@pytest.fixture
def saves(monkeypatch):
    """The iterations saved, in order."""
    seen, real = [], ckpt.save
    monkeypatch.setattr(ckpt, "save", lambda out, iteration, *a, **k: (seen.append(iteration),
                                                                       real(out, iteration, *a, **k))[1])
    return seen


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_nonfinite_gradient_with_a_finite_loss_is_skipped_then_stops_the_run(tmp_path):
    trainer = Trainer(_config(tmp_path / "nan", "optim.max_nonfinite=2"))
    trainer.step()
    trainer.iteration += 1
    trainer.save()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    moments = {k: v.clone() for k, v in trainer.optimizer.state_dict()["state"][0].items()}
    param = next(p for p in trainer.trained.parameters() if p.requires_grad)
    hook = param.register_hook(lambda grad: torch.full_like(grad, float("nan")))  # the forward stays finite
    assert trainer.step() == {"skipped": "grad_norm"}
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
    after = trainer.optimizer.state_dict()["state"][0]
    assert all(torch.equal(after[k], v) for k, v in moments.items())  # no AdamW step either
    with pytest.raises(RuntimeError, match="non-finite grad_norm in 2 iterations in a row.*optim.max_nonfinite"):
        trainer.step()
    hook.remove()
    weights, state = ckpt.load(tmp_path / "nan")
    assert state["iteration"] == 1 and all(torch.equal(weights[k], before[k]) for k in weights)
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())


def test_eval_every_and_checkpoint_every_zero_mean_never(tmp_path, saves):
    trainer = Trainer(_config(tmp_path / "zero", "iterations=2", "eval_every=0", "checkpoint_every=0"))
    history = trainer.run(progress=False)
    assert [h["iteration"] for h in history] == [1, 2]
    assert not any(k.startswith("eval_") for h in history for k in h)
    assert saves == [2]  # no periodic checkpoints; the finished run is still saved once


def test_a_run_that_ends_on_a_checkpoint_is_saved_once(tmp_path, saves):
    Trainer(_config(tmp_path / "run", "iterations=2", "checkpoint_every=1")).run(progress=False)
    assert saves == [1, 2]
    Trainer(_config(tmp_path / "run", "iterations=2"), resume=str(tmp_path / "run")).run(progress=False)
    assert saves == [1, 2]  # resuming a finished run saves nothing new
    assert ckpt.load(tmp_path / "run")[1]["iteration"] == 2


class _Killed(Exception):
    pass


def test_resume_after_a_kill_logs_each_iteration_once_with_the_uninterrupted_values(tmp_path):
    Trainer(_config(tmp_path / "full", "iterations=3", "checkpoint_every=2")).run(progress=False)
    killed = Trainer(_config(tmp_path / "half", "iterations=3", "checkpoint_every=2"))
    save = killed.save

    def dies_before_the_last_save():  # iteration 3 is logged, the last checkpoint is iteration 2
        if killed.iteration == 3:
            raise _Killed
        return save()

    killed.save = dies_before_the_last_save
    with pytest.raises(_Killed):
        killed.run(progress=False)
    if killed._tracking is not None:
        killed._tracking.close()
    assert [m["iteration"] for m in _metrics(tmp_path / "half")] == [0, 1, 2, 3]
    assert ckpt.load(tmp_path / "half")[1]["iteration"] == 2
    Trainer(_config(tmp_path / "half", "iterations=3", "checkpoint_every=2"),
            resume=str(tmp_path / "half")).run(progress=False)

    def values(run):  # timings differ between runs; everything else must not
        return [{k: v for k, v in m.items() if not k.startswith("t_") and k != "wall_s"} for m in _metrics(run)]

    assert [m["iteration"] for m in _metrics(tmp_path / "half")] == [0, 1, 2, 3]
    assert values(tmp_path / "half") == values(tmp_path / "full")
