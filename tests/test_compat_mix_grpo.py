"""``fastgrpo.compat.mix_grpo`` against the fp64 oracle (tests/anchor_math_mixgrpo.py): values, dtypes, shapes,
RNG draws and state, DPMState across whole schedules, gradients, the anchor's errors, and GRPOTrainingStates'
windows over whole runs."""
import dataclasses
import math
import types

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

import anchor_math_mixgrpo as oracle
from fastgrpo.compat import mix_grpo
from fastgrpo.compat.mix_grpo import DPMState, GRPOTrainingStates, dpm_step, flow_grpo_step
from helpers import shifted_sigmas

FP32 = dict(rtol=1e-4, atol=1e-5)
BF16 = dict(rtol=2**-7, atol=2**-7)  # one bf16 rounding of values of size ~1 (8-bit mantissa)
SHAPES = {"flux_packed": (2, 64, 16), "4d": (2, 4, 6, 5)}


def _inputs(shape, v_dtype, x_dtype, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(shape, generator=g, dtype=torch.float64).to(v_dtype)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(x_dtype)
    return v, x


def _tol(dtype):
    return FP32 if dtype == torch.float32 else BF16


def _close(actual, expected, dtype):
    torch.testing.assert_close(actual.double(), expected.double(), **_tol(dtype))


# --------------------------------------------------------------------------------------------------------------
# flow_grpo_step


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("v_dtype, x_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                              (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("index", [0, 7, 24])  # σ = 1 (the σ_1 rule), mid, the last step (σ' = 0)
@pytest.mark.parametrize("mode", ["generator", "global_rng", "determistic"])
def test_flow_grpo_step_matches_oracle_and_rng(shape, v_dtype, x_dtype, index, mode):
    sigmas = shifted_sigmas(25)
    v, x = _inputs(shape, v_dtype, x_dtype, seed=index)
    gen = torch.Generator().manual_seed(17) if mode != "global_rng" else None
    torch.manual_seed(5)
    out = flow_grpo_step(v, x, 0.7, sigmas, index, None, generator=gen, determistic=mode == "determistic")
    # the anchor's draw: randn_tensor in the model output's dtype, from the same generator
    ref_gen = torch.Generator().manual_seed(17) if gen is not None else None
    if gen is None:
        state_after, _ = torch.get_rng_state(), torch.manual_seed(5)
    noise = randn_tensor(shape, generator=ref_gen, dtype=v_dtype)
    if gen is not None:
        assert torch.equal(gen.get_state(), ref_gen.get_state())
    else:
        assert torch.equal(state_after, torch.get_rng_state())

    prev, x0, lp, mean, std = out
    want_prev, want_x0, want_mean, want_std = oracle.flow_grpo_step(v, x, 0.7, sigmas, index, noise=noise,
                                                                    determistic=mode == "determistic")
    dtype = torch.promote_types(v_dtype, x_dtype)
    for t in (prev, x0, mean):
        assert t.dtype == dtype and t.shape == shape
    assert lp.dtype == dtype and lp.shape == (shape[0],)
    assert std.dtype == sigmas.dtype and std.shape == ()
    _close(prev, want_prev, dtype)
    _close(x0, want_x0, dtype)
    _close(mean, want_mean, dtype)
    torch.testing.assert_close(std.double(), want_std, **FP32)
    # the log-prob of the sample as returned, under the oracle's Gaussian
    # (in the anchor's dtype: bf16 when latents and model output are bf16)
    _close(lp, oracle.gaussian_log_prob(prev, want_mean, want_std), dtype)
    assert prev.requires_grad is False


@pytest.mark.parametrize("v_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("index", [0, 12])
def test_flow_grpo_step_replay_and_gradient(v_dtype, index):
    """The training call: prev_sample given (returned as is), log-prob and its gradient into the model output."""
    sigmas = shifted_sigmas(25)
    shape = SHAPES["flux_packed"]
    v, x = _inputs(shape, v_dtype, torch.float32, seed=3)
    prev = torch.randn(shape, generator=torch.Generator().manual_seed(4)) * 0.3 + x
    v_ours = v.clone().requires_grad_()
    out = flow_grpo_step(v_ours, x, 0.7, sigmas, index, prev)
    assert out[0] is prev
    out[2].sum().backward()
    v64 = v.double().requires_grad_()
    _, want_x0, want_mean, want_std = oracle.flow_grpo_step(v64, x, 0.7, sigmas, index, prev_sample=prev)
    want_lp = oracle.gaussian_log_prob(prev, want_mean, want_std)
    want_lp.sum().backward()
    torch.testing.assert_close(out[2].double(), want_lp.detach(), **FP32)
    torch.testing.assert_close(v_ours.grad.double(), v64.grad, **_tol(v_dtype))
    assert out[1].requires_grad and out[3].requires_grad and not out[4].requires_grad


def test_flow_grpo_step_rollout_log_prob_equals_its_replay():
    sigmas = shifted_sigmas(25)
    v, x = _inputs(SHAPES["flux_packed"], torch.bfloat16, torch.float32, seed=8)
    prev, _, lp, _, _ = flow_grpo_step(v, x, 0.7, sigmas, 4, None, generator=torch.Generator().manual_seed(0))
    assert torch.equal(flow_grpo_step(v, x, 0.7, sigmas, 4, prev)[2], lp)


@pytest.mark.parametrize("index", [torch.tensor(6), torch.tensor([6]), np.int64(6)], ids=["0d", "1d", "numpy"])
def test_flow_grpo_step_tensor_index(index):
    sigmas = shifted_sigmas(25)
    v, x = _inputs(SHAPES["4d"], torch.float32, torch.float32, seed=1)
    want = flow_grpo_step(v, x, 0.7, sigmas, 6, None, generator=torch.Generator().manual_seed(2))
    got = flow_grpo_step(v, x, 0.7, sigmas, index, None, generator=torch.Generator().manual_seed(2))
    for a, b in zip(got[:4], want[:4]):
        assert torch.equal(a, b)
    # the anchor's std has the shape of sigmas[index]
    assert got[4].shape == sigmas[index].shape and torch.equal(got[4].reshape(()), want[4])


def test_flow_grpo_step_finite_where_the_anchor_is_nan():
    sigmas = shifted_sigmas(25)
    v, x = _inputs(SHAPES["flux_packed"], torch.float32, torch.float32, seed=2)
    gen = torch.Generator().manual_seed(0)
    for determistic in (False, True):
        prev, _, lp, mean, std = flow_grpo_step(v, x, 0.0, sigmas, 5, None, generator=gen, determistic=determistic)
        want_prev, _, want_mean, want_std = oracle.flow_grpo_step(v, x, 0.0, sigmas, 5, noise=torch.zeros(1),
                                                                  determistic=determistic)
        assert torch.isnan(oracle.gaussian_log_prob(want_prev, want_mean, want_std)).all()  # the anchor's
        assert torch.equal(lp, torch.zeros(2)) and float(std) == 0.0
        _close(prev, want_prev, torch.float32)
    # η < 0: the anchor's sample (its std is negative) and the log-prob of |std| instead of NaN
    noise = randn_tensor(v.shape, generator=torch.Generator().manual_seed(3))
    prev, _, lp, mean, std = flow_grpo_step(v, x, -0.7, sigmas, 5, None, generator=torch.Generator().manual_seed(3))
    want_prev, _, want_mean, want_std = oracle.flow_grpo_step(v, x, -0.7, sigmas, 5, noise=noise)
    assert float(std) < 0
    _close(prev, want_prev, torch.float32)
    torch.testing.assert_close(lp.double(), oracle.gaussian_log_prob(prev, want_mean, -want_std), **FP32)


def test_flow_grpo_step_rejects_what_the_anchor_rejects():
    sigmas = shifted_sigmas(25)
    v, x = _inputs(SHAPES["flux_packed"], torch.float32, torch.float32, seed=0)
    with pytest.raises(ValueError, match="Cannot pass both generator and prev_sample"):
        flow_grpo_step(v, x, 0.7, sigmas, 2, x, generator=torch.Generator())
    with pytest.raises(IndexError):
        flow_grpo_step(v, x, 0.7, sigmas, 25, None)
    with pytest.raises(IndexError, match="index"):
        flow_grpo_step(v, x, 0.7, sigmas, 2.0, None)
    with pytest.raises(ValueError, match="index"):
        flow_grpo_step(v, x, 0.7, sigmas, torch.tensor([1, 2]), None)
    with pytest.raises(ValueError, match="sigmas"):
        flow_grpo_step(v, x, 0.7, sigmas.tolist(), 2, None)
    with pytest.raises(ValueError, match="latents"):
        flow_grpo_step(v, x[0, 0], 0.7, sigmas, 2, None)


# --------------------------------------------------------------------------------------------------------------
# dpm_step across whole schedules

CASES = [(alg, order, kind) for alg in ("dpmsolver++", "dpmsolver") for order in (1, 2, 3)
         for kind in (("midpoint", "heun") if order >= 2 else ("midpoint",))]


def _args(algorithm, order, solver_type="midpoint"):
    return types.SimpleNamespace(dpm_algorithm_type=algorithm, dpm_solver_order=order, dpm_solver_type=solver_type)


def _schedule(algorithm, steps):
    """The anchor's σ schedule from 1; DPM-Solver (not ++) divides by α_s = 1 − σ_s, so it starts below 1."""
    sigmas = shifted_sigmas(steps)
    if algorithm == "dpmsolver":
        sigmas = shifted_sigmas(steps + 1)[1:]
    return sigmas


def _run(algorithm, order, solver_type, mode, shape, v_dtype, x_dtype, steps, seed=0):
    """Drive dpm_step and the oracle over a whole schedule; compare every step."""
    sigmas = _schedule(algorithm, steps)
    args = _args(algorithm, order, solver_type)
    state = DPMState(order=order)
    # DPM-Solver into σ = 0: the anchor's 0·∞ is NaN; ours is the formula's limit, which the oracle approaches
    limit = sigmas.double().clone()
    if algorithm == "dpmsolver":
        limit[-1] = 1e-150
    dtype = torch.promote_types(v_dtype, x_dtype)
    run = oracle.DPMRun(algorithm, order, solver_type, limit, steps, store_dtype=dtype)
    v_all = torch.randn((steps,) + shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(x_dtype)
    x_ref = x.double()
    gen = torch.Generator().manual_seed(seed + 2)
    ref_gen = torch.Generator().manual_seed(seed + 2)
    third_order_steps = 0
    for i in range(steps):
        v = v_all[i].to(v_dtype)
        noise, kwargs = None, {}
        if mode == "variance_noise":
            noise = torch.randn(shape, generator=torch.Generator().manual_seed(100 + i))
            kwargs["variance_noise"] = noise
        if mode != "ode":
            kwargs["generator"] = gen
        third_order_steps += run.order_at(i) == 3
        prev, x0, lp = dpm_step(args, v, x, i, sigmas[:-1], sigmas, dpm_state=state, sde_solver=mode != "ode",
                                **kwargs)
        if mode == "generator":
            noise = randn_tensor(shape, generator=ref_gen, dtype=torch.float32)
        assert torch.equal(gen.get_state(), ref_gen.get_state())  # drawn only when the anchor draws
        want_x, want_x0, want_mean, want_std = run.step(v, x_ref if dtype == torch.float32 else x, i,
                                                        sde=mode != "ode", noise=noise)
        assert prev.dtype == dtype and x0.dtype == dtype and lp.dtype == torch.float32
        assert prev.shape == shape and x0.shape == shape and lp.shape == (shape[0],)
        assert state.model_outputs[-1] is x0 and state.lower_order_nums == min(i + 1, order)
        _close(x0, want_x0, dtype)
        _close(prev, want_x, dtype)
        if float(want_std) == 0:  # DPM-Solver++ into σ = 0: the anchor's NaN, ours 0
            assert torch.isnan(oracle.gaussian_log_prob(prev, want_mean, want_std)).all()
            assert torch.equal(lp, torch.zeros_like(lp))
        else:
            want_lp = oracle.gaussian_log_prob(prev, want_mean, want_std)
            assert torch.isfinite(want_lp).all()
            torch.testing.assert_close(lp.double(), want_lp, rtol=1e-4, atol=1e-4)
        x, x_ref = prev, want_x
    return third_order_steps


@pytest.mark.parametrize("algorithm, order, solver_type", [c for c in CASES if c[:2] != ("dpmsolver", 3)])
@pytest.mark.parametrize("mode", ["ode", "generator", "variance_noise"])
@pytest.mark.parametrize("steps", [8, 16])  # < 15: the second-to-last step is lowered too
def test_dpm_step_whole_schedule_matches_oracle(algorithm, order, solver_type, mode, steps):
    third = _run(algorithm, order, solver_type, mode, SHAPES["flux_packed"], torch.float32, torch.float32, steps)
    assert (third > 0) == (order == 3)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("v_dtype, x_dtype", [(torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("algorithm, order, solver_type", [("dpmsolver++", 2, "midpoint"), ("dpmsolver++", 3, "heun"),
                                                           ("dpmsolver", 2, "heun")])
def test_dpm_step_dtypes_and_layouts(shape, v_dtype, x_dtype, algorithm, order, solver_type):
    for mode in ("ode", "generator"):
        _run(algorithm, order, solver_type, mode, shape, v_dtype, x_dtype, steps=8, seed=3)


@pytest.mark.parametrize("mode", ["ode", "generator"])
def test_dpm_step_dpmsolver_third_order_fails_like_the_anchor(mode):
    """DPM-Solver at third order: AssertionError (SDE) / UnboundLocalError (ODE) on its first third-order step,
    after the state update and the draw, before update_lower_order."""
    sigmas = _schedule("dpmsolver", 16)
    args = _args("dpmsolver", 3)
    state = DPMState(order=3)
    gen, ref_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 4)
    for i in range(2):
        x, _, _ = dpm_step(args, torch.randn(2, 8, 4), x, i, sigmas[:-1], sigmas, dpm_state=state, generator=gen,
                           sde_solver=mode != "ode")
    expected = AssertionError if mode != "ode" else UnboundLocalError
    with pytest.raises(expected) as err:
        dpm_step(args, torch.randn(2, 8, 4), x, 2, sigmas[:-1], sigmas, dpm_state=state, generator=gen,
                 sde_solver=mode != "ode")
    assert isinstance(err.value, ValueError) and "dpmsolver" in str(err.value)
    assert state.lower_order_nums == 2 and state.model_outputs[0] is not None
    if mode != "ode":
        for _ in range(3):
            randn_tensor((2, 8, 4), generator=ref_gen, dtype=torch.float32)
        assert torch.equal(gen.get_state(), ref_gen.get_state())


def test_dpm_step_flash_run_after_flow_window():
    """MixGRPO-Flash's rollout: flow_grpo_step in the window feeds the state (x̂0 + update_lower_order), then
    DPM-Solver++ 2M ODE steps on the compressed post-window grid, ending first order at σ = 0."""
    base = shifted_sigmas(25)
    last = 5
    post_t = torch.linspace(float(torch.linspace(1, 0, 26)[last + 1]), 0, max(1, int((25 - last) * 0.4)))
    sigmas = torch.cat([base[:last + 1], 3 * post_t / (1 + 2 * post_t)])
    args = _args("dpmsolver++", 2)
    state = DPMState(order=2)
    run = oracle.DPMRun("dpmsolver++", 2, "midpoint", sigmas, len(sigmas) - 1)
    x = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(0))
    x_ref = x.double()
    gen = torch.Generator().manual_seed(1)
    for i in range(len(sigmas) - 1):
        v = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(10 + i)).bfloat16()
        if i <= last:
            state.update(x - sigmas[i] * v.float())  # the caller's convert_model_output
            noise = randn_tensor(v.shape, generator=torch.Generator().manual_seed(1000 + i), dtype=v.dtype)
            x, _, _, _, _ = flow_grpo_step(v, x, 0.7, sigmas, i, None,
                                           generator=torch.Generator().manual_seed(1000 + i))
            state.update_lower_order()
            want = oracle.flow_grpo_step(v, x_ref, 0.7, sigmas, i, noise=noise)[0]
            run.push(x_ref - float(sigmas[i]) * v.double())
        else:
            x, _, lp = dpm_step(args, v, x, i, sigmas[:-1], sigmas, dpm_state=state, generator=gen)
            want, _, mean, std = run.step(v, x_ref, i)
            if i < len(sigmas) - 2:
                torch.testing.assert_close(lp.double(), oracle.gaussian_log_prob(x, mean, std), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(x.double(), want, rtol=1e-4, atol=1e-4)
        x_ref = want
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(1).get_state())  # ODE: no draws


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("v_dtype", [torch.float32, torch.bfloat16])
def test_dpm_step_training_call_gradient(algorithm, v_dtype):
    """MixGRPO's grpo_one_step with dpm "all": no state, SDE, a fresh generator; log-prob gradient into v."""
    sigmas = _schedule(algorithm, 16)
    x = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(0))
    v = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(1)).to(v_dtype)
    v_ours = v.clone().requires_grad_()
    prev, x0, lp = dpm_step(_args(algorithm, 2), v_ours, x, 5, sigmas[:-1], sigmas, dpm_state=None,
                            generator=torch.Generator(), sde_solver=True)
    assert prev.requires_grad and x0.requires_grad
    lp.sum().backward()
    noise = randn_tensor(x.shape, generator=torch.Generator(), dtype=torch.float32)
    v64 = v.double().requires_grad_()
    run = oracle.DPMRun(algorithm, 2, "midpoint", sigmas, 16, state=False)
    want_x, _, mean, std = run.step(v64, x, 5, sde=True, noise=noise)
    want_lp = oracle.gaussian_log_prob(want_x.detach(), mean, std)
    want_lp.sum().backward()
    torch.testing.assert_close(prev.double(), want_x.detach(), **FP32)
    torch.testing.assert_close(lp.double(), want_lp.detach(), **FP32)
    torch.testing.assert_close(v_ours.grad.double(), v64.grad, **_tol(v_dtype))


def test_dpm_step_without_state_is_first_order_and_tensor_index_works():
    sigmas = shifted_sigmas(16)
    x, v = torch.randn(2, 4, 6, 5), torch.randn(2, 4, 6, 5)
    args = _args("dpmsolver++", 3)
    want_x, want_x0, want_mean, want_std = oracle.DPMRun("dpmsolver++", 3, None, sigmas, 16, state=False).step(v, x, 6)
    for index in (6, torch.tensor(6)):
        prev, x0, lp = dpm_step(args, v, x, index, sigmas[:-1], sigmas)
        _close(prev, want_x, torch.float32)
        torch.testing.assert_close(lp.double(), oracle.gaussian_log_prob(prev, want_mean, want_std), **FP32)


def test_dpm_step_global_rng_and_ignored_variance_noise():
    """SDE without a generator draws fp32 ε from torch's global RNG; on the ODE path variance_noise is unused."""
    sigmas = shifted_sigmas(16)
    x, v = torch.randn(2, 64, 16), torch.randn(2, 64, 16).bfloat16()
    args = _args("dpmsolver++", 2)
    torch.manual_seed(11)
    prev, _, lp = dpm_step(args, v, x, 4, sigmas[:-1], sigmas, sde_solver=True)
    after = torch.get_rng_state()
    torch.manual_seed(11)
    noise = randn_tensor(x.shape, dtype=torch.float32)
    assert torch.equal(after, torch.get_rng_state())
    want_x, _, mean, std = oracle.DPMRun("dpmsolver++", 2, "midpoint", sigmas, 16, state=False).step(
        v, x, 4, sde=True, noise=noise)
    _close(prev, want_x, torch.float32)
    torch.testing.assert_close(lp.double(), oracle.gaussian_log_prob(prev, mean, std), **FP32)
    ode = dpm_step(args, v, x, 4, sigmas[:-1], sigmas)
    with_noise = dpm_step(args, v, x, 4, sigmas[:-1], sigmas, variance_noise=torch.randn(2, 64, 16))
    for a, b in zip(ode, with_noise):
        assert torch.equal(a, b)


def test_dpm_step_rejects_what_the_anchor_rejects():
    sigmas = shifted_sigmas(8)
    x = torch.randn(2, 4, 5)
    # an unknown algorithm fails on the first step, after the state update
    state = DPMState(order=2)
    with pytest.raises(UnboundLocalError, match="dpm_algorithm_type") as err:
        dpm_step(_args("sde-dpmsolver++", 2), x, x, 0, sigmas[:-1], sigmas, dpm_state=state)
    assert isinstance(err.value, ValueError) and state.model_outputs[-1] is not None
    assert state.lower_order_nums == 0
    # an unknown solver type only matters at second order: the first step runs, the second fails
    state = DPMState(order=2)
    args = _args("dpmsolver++", 2, "euler")
    x1, _, _ = dpm_step(args, x, x, 0, sigmas[:-1], sigmas, dpm_state=state)
    with pytest.raises(UnboundLocalError, match="dpm_solver_type"):
        dpm_step(args, x, x1, 1, sigmas[:-1], sigmas, dpm_state=state)
    # a state shorter than the solver order: IndexError, as the anchor's model_output_list[-2]
    state = DPMState(order=1)
    x1, _, _ = dpm_step(_args("dpmsolver++", 2), x, x, 0, sigmas[:-1], sigmas, dpm_state=state)
    with pytest.raises(IndexError):
        dpm_step(_args("dpmsolver++", 2), x, x1, 1, sigmas[:-1], sigmas, dpm_state=state)
    with pytest.raises(AttributeError):
        dpm_step(types.SimpleNamespace(), x, x, 0, sigmas[:-1], sigmas)
    with pytest.raises(ValueError, match="step_index"):
        dpm_step(_args("dpmsolver++", 2), x, x, torch.tensor([0, 1]), sigmas[:-1], sigmas)


def test_dpm_state_behaves_like_the_anchor():
    assert [f.name for f in dataclasses.fields(DPMState)] == ["order", "model_outputs"]
    assert DPMState.lower_order_nums == 0
    state = DPMState(3)
    slots = state.model_outputs
    assert slots == [None, None, None]
    a, b, c, d = (torch.full((1,), float(i)) for i in range(4))
    for t in (a, b, c, d):
        state.update(t)
        state.update_lower_order()
    assert state.model_outputs is slots and state.model_outputs == [b, c, d]  # shifted in place
    assert state.lower_order_nums == 3 and DPMState.lower_order_nums == 0


def test_scalars_agree_between_host_and_device_forms():
    """The coefficients computed with numpy (a host schedule) and with 0-dim fp64 tensors (a device schedule)."""
    sig = [0.9, 0.7, 0.5, 0.3]
    for alg, order, kind in CASES:
        if (alg, order) == ("dpmsolver", 3):
            continue
        with np.errstate(all="ignore"):
            host = mix_grpo._dpm_scalars(np, alg, kind if order == 2 else None, order,
                                         *[np.float64(s) for s in sig[:order + 1]])
        dev = mix_grpo._dpm_scalars(torch, alg, kind if order == 2 else None, order,
                                    *[torch.tensor(s, dtype=torch.float64) for s in sig[:order + 1]])
        flat = lambda r: [r[0][0], *r[0][1], r[1][0], *r[1][1], r[2]]  # noqa: E731
        np.testing.assert_allclose([float(t) for t in flat(dev)], [float(t) for t in flat(host)], rtol=1e-12)


def test_device_form_of_the_step(monkeypatch):
    """The 0-dim-tensor path (taken for a device schedule) on CPU gives the host path's numbers."""
    sigmas = shifted_sigmas(8)
    x, v = torch.randn(2, 16, 4), torch.randn(2, 16, 4).bfloat16()
    args = _args("dpmsolver++", 2)
    results = []
    for host in (True, False):
        monkeypatch.setattr(mix_grpo, "_host", lambda s, host=host: host)
        state = DPMState(2)
        xs = x
        for i in range(8):
            xs, _, lp = dpm_step(args, v, xs, i, sigmas[:-1], sigmas, dpm_state=state, sde_solver=i % 2 == 0,
                                 generator=torch.Generator().manual_seed(i))
        flow = flow_grpo_step(v, x, 0.7, sigmas, 0, None, generator=torch.Generator().manual_seed(0))
        results.append((xs, lp) + flow)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------
# GRPOTrainingStates

ANCHOR_FIELDS = [("iters_per_group", dataclasses.MISSING), ("group_size", dataclasses.MISSING),
                 ("max_timesteps", dataclasses.MISSING), ("cur_timestep", 0), ("cur_iter_in_group", 0),
                 ("sample_strategy", "progressive"), ("prog_overlap", False), ("prog_overlap_step", 1),
                 ("max_iters_per_group", None), ("min_iters_per_group", None), ("roll_back", False),
                 ("exp_decay_thre_timestep", 13), ("exp_decay_k", 0.1)]


def test_grpo_states_fields_and_defaults():
    assert [(f.name, f.default) for f in dataclasses.fields(GRPOTrainingStates)] == ANCHOR_FIELDS
    s = GRPOTrainingStates(iters_per_group=10, group_size=4, max_timesteps=23, sample_strategy="decay")
    assert (s.max_iters_per_group, s.min_iters_per_group, s.init_timestep) == (10, 2, 0)
    s = GRPOTrainingStates(iters_per_group=25, group_size=4, max_timesteps=23, sample_strategy="exp_decay",
                           cur_timestep=20)
    tau = s.get_exp_decay_iters_per_group()
    assert type(tau) is np.float64 and tau == math.ceil(25 * math.exp(-0.1 * 7))
    assert s.get_dynamic_iters_per_group() == 25
    s.set_params({"group_size": 2, "roll_back": True})
    assert s.get_current_timesteps() == [20, 21] and s.roll_back


STRATEGIES = [dict(sample_strategy=st, prog_overlap=po, prog_overlap_step=step, roll_back=rb, cur_timestep=start)
              for st in ("progressive", "decay", "exp_decay") for po, step in ((False, 1), (True, 1), (True, 2))
              for rb in (False, True) for start in (0, 3)]


@pytest.mark.parametrize("config", STRATEGIES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_grpo_states_window_sequence_over_a_run(config):
    """MixGRPO's FLUX setting (T = 25, max_timesteps = T − 2, w = 4) over 300 iterations, τ = 25 (decay: 10 → 1)."""
    params = dict(iters_per_group=25, group_size=4, max_timesteps=23, **config)
    if config["sample_strategy"] == "decay":
        params.update(max_iters_per_group=10, min_iters_per_group=1)
    states = GRPOTrainingStates(**params)
    got = []
    for _ in range(300):
        got.append((states.get_current_timesteps(), states.is_training_complete(), states.cur_iter_in_group))
        states.update_iteration()
    want = oracle.window_sequence(300, **params)
    assert got == want
    starts = {w[0] for w, _, _ in got if w}
    assert len(starts) > 1  # the window moved


@pytest.mark.parametrize("seeds", [list(range(50)), [7] * 50, None])
def test_grpo_states_random_strategy(seeds):
    states = GRPOTrainingStates(iters_per_group=25, group_size=4, max_timesteps=23, sample_strategy="random")
    got = []
    for it in range(50):
        got.append((states.get_current_timesteps(), states.is_training_complete(), states.cur_iter_in_group))
        states.update_iteration(None if seeds is None else seeds[it])
    if seeds is None:
        assert all(0 <= w[0] and len(w) == 4 for w, _, _ in got[1:])
        return
    assert got == oracle.window_sequence(50, iters_per_group=25, group_size=4, max_timesteps=23,
                                         sample_strategy="random", seeds=seeds)


def test_grpo_states_invalid_strategy_raises_on_update():
    states = GRPOTrainingStates(iters_per_group=2, group_size=4, max_timesteps=23, sample_strategy="frozen")
    assert states.get_current_timesteps() == [0, 1, 2, 3] and not states.is_training_complete()
    with pytest.raises(ValueError, match="Invalid sample strategy: frozen"):
        states.update_iteration()


def test_grpo_states_coincides_with_the_trainer_schedule():
    """Where the rules coincide (progressive, overlap step 1, roll_back, start 0), the trainer's closed-form window
    start is the anchor's l: (i // τ) mod (T − 1)."""
    from fastgrpo.train.config import WindowConfig
    from fastgrpo.train.schedule import window_start

    T, tau = 25, 3
    states = GRPOTrainingStates(iters_per_group=tau, group_size=4, max_timesteps=T - 2, prog_overlap=True,
                                roll_back=True)
    cfg = WindowConfig(size=4, stride=1, shift_interval=tau, schedule="progressive")
    for it in range(3 * tau * T):
        assert states.cur_timestep == window_start(cfg, T, it, 3 * tau * T, seed=0)
        states.update_iteration()
