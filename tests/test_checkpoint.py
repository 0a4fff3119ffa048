"""Checkpoints survive a crash at every point of a save, never lose the one ``latest`` names, and load with
``weights_only=True``."""
import os
import shutil

import pytest
import safetensors.torch
import torch

from fastgrpo.train import atomic
from fastgrpo.train import checkpoint as ckpt


def _weights(value: float) -> dict:
    return {"w": torch.full((3, 2), value), "b": torch.full((2,), value)}


def _state(iteration: int) -> dict:
    return {"iteration": iteration, "history": [{"iteration": i, "loss": 0.5} for i in range(iteration)],
            "optimizer": {"state": {0: {"step": torch.tensor(float(iteration))}},
                          "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "foreach": None, "params": [0]}]}}


def _assert_complete(run, iterations) -> int:
    """``latest`` names a complete checkpoint of one of ``iterations`` whose weights and state belong together."""
    weights, state = ckpt.load(run)
    it = state["iteration"]
    assert it in iterations
    assert torch.equal(weights["w"], _weights(float(it))["w"]) and state["history"] == _state(it)["history"]
    assert torch.equal(state["optimizer"]["state"][0]["step"], torch.tensor(float(it)))
    return it


# every call of a save that can fail (disk full, a kill): each one is made to raise in turn
_POINTS = [(safetensors.torch, "save_file"), (torch, "save"), (os, "fsync"), (os, "replace"), (os, "chmod"),
           (shutil, "rmtree")]


def _patch(monkeypatch, crash_at: int | None) -> list:
    """Route every call in _POINTS through a counter; the ``crash_at``-th (0-based) raises instead."""
    calls = []

    def wrap(real, name):
        def call(*args, **kwargs):
            calls.append(name)
            if len(calls) - 1 == crash_at:
                raise OSError(f"killed in {name}")
            return real(*args, **kwargs)
        return call

    for module, name in _POINTS:
        monkeypatch.setattr(module, name, wrap(getattr(module, name), name))
    return calls


@pytest.mark.parametrize("second", [2, 1])  # a newer iteration, and the same iteration saved again
def test_a_crash_at_any_point_of_a_save_leaves_a_complete_latest_checkpoint(tmp_path, monkeypatch, second):
    probe = tmp_path / "probe"
    for i in (0, 1):  # two saved already: the save under test prunes one
        ckpt.save(probe, i, _weights(float(i)), _state(i))
    calls = _patch(monkeypatch, None)
    ckpt.save(probe, second, _weights(float(second)), _state(second))
    monkeypatch.undo()
    assert {"save_file", "save", "fsync", "replace", "chmod", "rmtree"} <= set(calls)
    for crash_at in range(len(calls)):
        run = tmp_path / f"run{crash_at}"
        for i in (0, 1):
            ckpt.save(run, i, _weights(float(i)), _state(i))
        _patch(monkeypatch, crash_at)
        with pytest.raises(OSError, match="killed"):
            ckpt.save(run, second, _weights(float(second)), _state(second))
        monkeypatch.undo()
        _assert_complete(run, {1, second})
        ckpt.save(run, 3, _weights(3.0), _state(3))  # and the next save works and is what a resume loads
        assert _assert_complete(run, {3}) == 3


def test_saving_an_iteration_twice_keeps_a_complete_copy_and_prunes_to_keep(tmp_path):
    first = ckpt.save(tmp_path, 4, _weights(4.0), _state(4))
    second = ckpt.save(tmp_path, 4, _weights(4.0), _state(4))
    assert first != second and not first.exists() and second.exists()  # the stale copy goes after `latest` moved
    assert (tmp_path / "latest").read_text().strip() == second.name
    for i in (5, 6, 7):
        ckpt.save(tmp_path, i, _weights(float(i)), _state(i))
    kept = sorted(p.name.split("-")[1] for p in tmp_path.glob("ckpt-*"))
    assert kept == ["000006", "000007"] and _assert_complete(tmp_path, {7}) == 7
    assert not list(tmp_path.glob(".*tmp*"))


def test_leftovers_of_a_killed_save_and_later_stale_saves_are_pruned(tmp_path):
    ckpt.save(tmp_path, 2, _weights(2.0), _state(2))
    (tmp_path / f"{ckpt.TMP_PREFIX}killed").mkdir()  # a save killed before its rename
    orphan = tmp_path / "ckpt-000004-orphan"  # renamed, killed before `latest` moved; the resumed run redoes it
    shutil.copytree(tmp_path / (tmp_path / "latest").read_text().strip(), orphan)
    keep = tmp_path / "notes"  # not ours: left alone
    keep.mkdir()
    current = ckpt.save(tmp_path, 3, _weights(3.0), _state(3))
    assert not orphan.exists() and not (tmp_path / f"{ckpt.TMP_PREFIX}killed").exists() and keep.exists()
    assert current.exists() and _assert_complete(tmp_path, {3}) == 3


def test_state_loads_with_weights_only_and_non_plain_state_is_refused_at_save(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"iteration": 1, "optimizer": opt.state_dict(), "history": [{"iteration": 1, "skipped": "loss"}]}
    path = ckpt.save(tmp_path, 1, model.state_dict(), state)
    loaded = torch.load(path / "state.pt", weights_only=True)
    assert loaded["optimizer"]["param_groups"] == opt.state_dict()["param_groups"]
    _, via_load = ckpt.load(tmp_path)
    assert torch.equal(via_load["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(TypeError, match=r"state\['history'\]\[0\]\['when'\] has type object"):
        ckpt.save(tmp_path, 2, model.state_dict(), {"history": [{"when": object()}]})
    assert ckpt.load(tmp_path)[1]["iteration"] == 1
    with pytest.raises(ValueError, match="keep"):
        ckpt.save(tmp_path, 2, model.state_dict(), state, keep=0)


def test_atomic_write_text_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "latest"
    atomic.write_text(target, "old\n")

    def boom(*args, **kwargs):
        raise OSError("killed")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic.write_text(target, "new\n")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["latest"]


def test_atomic_save_torch_round_trips_and_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "eval_start.pt"
    old = {"scores": torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), "labels": ["a", "b"]}
    atomic.save_torch(target, old)
    back = torch.load(target, weights_only=True)
    assert torch.equal(back["scores"], old["scores"]) and back["labels"] == old["labels"]

    def boom(obj, fh, *args, **kwargs):
        fh.write(b"partial")
        raise OSError("killed mid-write")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        atomic.save_torch(target, {"scores": torch.zeros(1)})
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["scores"], old["scores"])
    assert [p.name for p in tmp_path.iterdir()] == ["eval_start.pt"]
