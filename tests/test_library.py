"""The ops as torch.library custom ops: opcheck, torch.compile without graph breaks, backend selection."""
import logging

import pytest
import torch

import fastgrpo.ops.dpm_solver  # noqa: F401  (registers fastgrpo::dpm_solver_2m)
from fastgrpo import _backend
from fastgrpo.ops import flow_step
from helpers import random_step


def _fwd_args(mode):
    v, x, s, sn = random_step((3, 4, 5), seed=21)
    noise = torch.randn_like(v) if mode == "noise" else None
    x_given = torch.randn_like(v) if mode == "x_next" else None
    mu_ref = torch.randn_like(v)
    return (v.requires_grad_(True), x.requires_grad_(True), s, sn, 0.7, noise, x_given, mu_ref, 7, "flow_sde",
            "full", "flow_grpo", torch.float32, True)


@pytest.mark.parametrize("mode", ["noise", "seed", "x_next"])
def test_opcheck_flow_step(mode):
    torch.library.opcheck(torch.ops.fastgrpo.flow_step_fwd.default, _fwd_args(mode))


def test_opcheck_flow_step_bwd_and_dpm():
    v, x, s, sn = random_step((3, 4, 5), seed=22)
    torch.library.opcheck(torch.ops.fastgrpo.flow_step_bwd.default,
                          (torch.randn(3), torch.randn(3), None, v, x, torch.randn_like(v), torch.randn_like(v),
                           s, sn, 0.7, "cps", "cps", "none", True))
    s, sn, sp = torch.tensor([0.9, 0.5, 0.3]), torch.tensor([0.8, 0.2, 0.0]), torch.tensor([1.0, 0.6, 0.4])
    torch.library.opcheck(torch.ops.fastgrpo.dpm_solver_2m.default,
                          (v, x, s, sn, torch.randn_like(v), sp, torch.float32))


def test_compiles_without_graph_breaks():
    v, x, s, sn = random_step((2, 4, 6), seed=23)
    x_next = torch.randn_like(v)

    def loss_fn(v_, x_):
        out = flow_step(v_, x_, s, sn, 0.7, x_next=x_next, backend="triton")
        return -(out.log_prob * torch.tensor([1.0, -0.5])).sum()

    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    v1 = v.clone().requires_grad_(True)
    v2 = v.clone().requires_grad_(True)
    eager, comp = loss_fn(v1, x), compiled(v2, x)
    eager.backward()
    comp.backward()
    torch.testing.assert_close(comp, eager)
    torch.testing.assert_close(v2.grad, v1.grad)


def test_backend_switch(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("FASTGRPO_BACKEND", "torch")
    assert _backend.pick_backend("flow_step", cpu) == "torch"
    monkeypatch.setenv("FASTGRPO_BACKEND", "triton")
    assert _backend.pick_backend("flow_step", cpu) == "triton"  # the interpreter is on in the CPU suite
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        _backend.pick_backend("flow_step", cpu)
    monkeypatch.setenv("FASTGRPO_BACKEND", "auto")
    assert _backend.pick_backend("flow_step", cpu) == "torch"
    monkeypatch.setenv("FASTGRPO_BACKEND", "cuda")
    with pytest.raises(ValueError, match="FASTGRPO_BACKEND"):
        _backend.pick_backend("flow_step", cpu)


def test_path_is_announced_once(monkeypatch, caplog):
    monkeypatch.setattr(_backend, "_announced", set())
    v, x, s, sn = random_step((2, 3, 4), seed=24)
    with caplog.at_level(logging.INFO, logger="fastgrpo"):
        for _ in range(3):
            flow_step(v, x, s, sn, 0.7, backend="torch")
    lines = [r.getMessage() for r in caplog.records if "flow_step" in r.getMessage()]
    assert lines == ["fastgrpo.flow_step runs on the torch path (cpu)"]
