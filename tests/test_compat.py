"""Compat shims against the anchors' functions written out in fp64 (tests/anchor_math.py, which names the anchor
commit each was checked against): values, shapes, dtypes, RNG use and gradients, on both paths."""
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

import anchor_math
from fastgrpo.compat import adagrpo, dance_grpo
from fastgrpo.compat.flow_grpo import sde_step_with_logprob
from helpers import shifted_sigmas

def _scheduler(steps=10, shift=3.0):
    s = FlowMatchEulerDiscreteScheduler(shift=shift)
    s.set_timesteps(steps)
    return s


# Both paths of every shim: "auto" runs the Triton kernels (interpreted on CPU: conftest sets TRITON_INTERPRET),
# "torch" the shims' PyTorch path (what CPU users get).
BACKENDS = ["auto", "torch"]
TOL = dict(rtol=1e-4, atol=1e-5)  # fp32 math against the fp64 oracle
# gradients come back in the model output's dtype: a bf16 gradient is within one bf16 rounding (2^-8) of the oracle's
GRAD_TOL = {torch.float32: dict(rtol=1e-3, atol=1e-6), torch.bfloat16: dict(rtol=8e-3, atol=1e-6)}


@pytest.fixture
def backend(request, monkeypatch):
    monkeypatch.setenv("FASTGRPO_BACKEND", request.param)
    return request.param


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


def _assert_meta(got, shape, dtype=torch.float32):
    assert got.shape == torch.Size(shape) and got.dtype == dtype, (got.shape, got.dtype, shape, dtype)


# Flow-GRPO: sde_step_with_logprob vs anchor_math.flow_grpo_step, checked against yifan123/flow_grpo@54809b5
# flow_grpo/diffusers_patch/sd3_sde_with_logprob.py. Timestep forms: per sample (B,) as the train scripts pass
# ``sample["timesteps"][:, j]``; shared (1,) as the pipeline's ``t.unsqueeze(0)``; a list (the anchor iterates);
# a 0-dim tensor (ours only: the anchor cannot iterate it, n = 1 like (1,)).
TIMESTEP_FORMS = ["per_sample", "shared", "list", "scalar"]


def _timesteps(sched, form, batch):
    idx = [0, 4, 9, 2][:batch]
    if form == "per_sample":
        return sched.timesteps[idx]
    if form == "shared":
        return sched.timesteps[3].unsqueeze(0)
    if form == "list":
        return [float(sched.timesteps[i]) for i in idx]
    return sched.timesteps[3]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("sde_type", ["sde", "cps"])
@pytest.mark.parametrize("form", TIMESTEP_FORMS)
@pytest.mark.parametrize("shape,model_dtype", [((3, 4, 6, 5), torch.float32), ((3, 20, 8), torch.bfloat16)])
def test_flow_grpo_matches_anchor(backend, sde_type, form, shape, model_dtype):
    sched = _scheduler()
    gen = torch.Generator().manual_seed(11)
    v = torch.randn(shape, generator=gen).to(model_dtype)
    x = torch.randn(shape, generator=gen)
    t = _timesteps(sched, form, shape[0])
    n = 1 if form in ("shared", "scalar") else shape[0]
    out = sde_step_with_logprob(sched, v, t, x, 0.7, generator=torch.Generator().manual_seed(42), sde_type=sde_type,
                                return_sqrt_dt=True)
    assert len(out) == 5
    ref_gen = torch.Generator().manual_seed(42)
    noise = torch.randn(shape, generator=ref_gen, dtype=torch.float32)  # randn_tensor, fp32 (v upcast first)
    t_anchor = t.reshape(1) if form == "scalar" else t
    want = anchor_math.flow_grpo_step(sched.sigmas, sched.timesteps, v, t_anchor, x, 0.7, noise=noise,
                                      sde_type=sde_type)
    # shapes and dtypes as the anchor: samples fp32 (B, ...), log_prob fp32 (B,), σ-shaped values (n, 1, ...)
    per_sigma = (n,) + (1,) * (len(shape) - 1)
    for got, shape_want in zip(out, [shape, shape[:1], shape, per_sigma, per_sigma]):
        _assert_meta(got, shape_want)
    for got, w in zip(out, want):
        torch.testing.assert_close(got.double(), w, **TOL)
    # without return_sqrt_dt: four values; the same draws leave the generator where the anchor leaves it
    gen2 = torch.Generator().manual_seed(42)
    assert len(sde_step_with_logprob(sched, v, t, x, 0.7, generator=gen2, sde_type=sde_type)) == 4
    assert torch.equal(gen2.get_state(), ref_gen.get_state())

    # training replay: prev_sample given (bf16 as stored by some recipes: it comes back upcast), gradients
    stored = out[0].bfloat16()
    v_leaf, x_leaf = _leaf(v), _leaf(x)
    prev, lp, mean, _ = sde_step_with_logprob(sched, v_leaf, t, x_leaf, 0.7, prev_sample=stored, sde_type=sde_type)
    _assert_meta(prev, shape)
    assert torch.equal(prev, stored.float())
    v64, x64 = _leaf(v.double()), _leaf(x.double())
    _, want_lp, want_mean, _, _ = anchor_math.flow_grpo_step(sched.sigmas, sched.timesteps, v64, t_anchor, x64, 0.7,
                                                             prev_sample=stored, sde_type=sde_type)
    torch.testing.assert_close(lp.double(), want_lp, **TOL)
    weights = torch.linspace(0.5, 1.5, shape[0])
    ((lp * weights).sum() + 0.01 * mean.square().sum()).backward()
    ((want_lp * weights.double()).sum() + 0.01 * want_mean.square().sum()).backward()
    torch.testing.assert_close(v_leaf.grad.double(), v64.grad.to(model_dtype).double(), **GRAD_TOL[model_dtype])
    torch.testing.assert_close(x_leaf.grad.double(), x64.grad, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_flow_grpo_first_step_and_rollout_replay(backend):
    """σ = 1 (the first step: 1 − σ_1 stands in for 1 − σ), and the rollout's log-prob equals the replay's."""
    sched = _scheduler(steps=6)
    v, x = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    t = sched.timesteps[0].unsqueeze(0)
    assert float(sched.sigmas[0]) == 1.0
    prev, lp, mean, std_dev_t = sde_step_with_logprob(sched, v, t, x, 0.8, generator=torch.Generator().manual_seed(3))
    want = anchor_math.flow_grpo_step(sched.sigmas, sched.timesteps, v, t, x, 0.8,
                                      noise=torch.randn(v.shape, generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(std_dev_t.double(), want[3], **TOL)
    torch.testing.assert_close(lp.double(), want[1], **TOL)
    _, lp_replay, _, _ = sde_step_with_logprob(sched, v, t, x, 0.8, prev_sample=prev)
    torch.testing.assert_close(lp_replay, lp, rtol=1e-6, atol=1e-6)


def test_flow_grpo_broadcasts_timesteps_over_one_sample():
    """One sample, three timesteps: the anchor's σ (3, 1, 1) broadcasts the outputs to a batch of 3; so do we."""
    sched = _scheduler()
    v, x, prev = torch.randn(1, 5, 4), torch.randn(1, 5, 4), torch.randn(1, 5, 4)
    t = sched.timesteps[[1, 2, 7]]
    got = sde_step_with_logprob(sched, v, t, x, 0.7, prev_sample=prev)
    want = anchor_math.flow_grpo_step(sched.sigmas, sched.timesteps, v, t, x, 0.7, prev_sample=prev)
    for g, w, shape in zip(got[1:], want[1:], [(3,), (3, 5, 4), (3, 1, 1)]):
        _assert_meta(g, shape)
        torch.testing.assert_close(g.double(), w, **TOL)


def test_flow_grpo_per_sample_generators():
    """A list of generators (one per sample) draws as diffusers' randn_tensor does."""
    sched = _scheduler()
    v, x = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    prev, _, mean, std_dev_t, sqrt_dt = sde_step_with_logprob(sched, v, sched.timesteps[[1, 1]], x, 0.7,
                                                              generator=gens, return_sqrt_dt=True)
    noise = torch.cat([torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(s)) for s in (5, 6)])
    torch.testing.assert_close(prev, mean + std_dev_t * sqrt_dt * noise, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_flow_grpo_zero_and_negative_noise_level(backend):
    sched = _scheduler()
    v, x = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    t = sched.timesteps[[0, 5]]
    prev, lp, mean, std = sde_step_with_logprob(sched, v, t, x, 0.0)
    assert torch.all(lp == 0) and torch.all(std == 0)  # the anchor: NaN
    torch.testing.assert_close(prev, mean)
    # a negative noise level: the anchor's sample (s < 0) and std_dev_t, a finite log-prob (the density of |s|)
    prev, lp, mean, std = sde_step_with_logprob(sched, v, t, x, -0.5, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(v.shape, generator=torch.Generator().manual_seed(0))
    want = anchor_math.flow_grpo_step(sched.sigmas, sched.timesteps, v, t, x, -0.5, noise=noise)
    torch.testing.assert_close(prev.double(), want[0], **TOL)
    torch.testing.assert_close(std.double(), want[3], **TOL)
    want_abs = anchor_math.flow_grpo_step(sched.sigmas, sched.timesteps, v, t, x, 0.5, prev_sample=prev)
    torch.testing.assert_close(lp.double(), want_abs[1], **TOL)


def test_flow_grpo_rejects_like_the_anchor():
    sched = _scheduler()
    v = torch.randn(1, 2, 3)
    with pytest.raises(ValueError, match="sde_type"):
        sde_step_with_logprob(sched, v, sched.timesteps[:1], v, sde_type="ode")
    for err in (ValueError, IndexError):  # the anchor: IndexError from index_for_timestep
        with pytest.raises(err, match="timestep"):
            sde_step_with_logprob(sched, v, torch.tensor([123.456]), v)


# DanceGRPO: flux_step vs anchor_math.dance_flux_step, checked against XueZeyue/DanceGRPO@15cc71d
# fastvideo/train_grpo_flux.py (full Gaussian log-prob since 9ac72b4). The recipes pass fp32 latents, a bf16 model
# output and an int index (rollout) or a 0-dim index tensor (training: perms[i][_]).
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("sde_solver", [True, False])
@pytest.mark.parametrize("index", [3, torch.tensor(3)], ids=["int", "tensor"])
@pytest.mark.parametrize("model_dtype", [torch.float32, torch.bfloat16])
def test_dance_flux_step_matches_anchor(backend, sde_solver, index, model_dtype):
    sigmas = shifted_sigmas(16)
    gen = torch.Generator().manual_seed(4)
    v = torch.randn(2, 64, 16, generator=gen).to(model_dtype)
    x = torch.randn(2, 64, 16, generator=gen)
    torch.manual_seed(5)
    prev, x0, lp = dance_grpo.flux_step(v, x, 0.3, sigmas, index, None, True, sde_solver)
    rng_after = torch.get_rng_state()
    torch.manual_seed(5)
    noise = torch.randn(2, 64, 16)  # randn_like(prev_sample_mean): fp32, the global RNG
    assert torch.equal(torch.get_rng_state(), rng_after)
    for got, shape in zip((prev, x0, lp), [(2, 64, 16), (2, 64, 16), (2,)]):
        _assert_meta(got, shape)
    # fp32 math on the model output's values, against the oracle without rounding
    want = anchor_math.dance_flux_step(v, x, 0.3, sigmas, 3, noise=noise, sde_solver=sde_solver)
    for got, w in zip((prev, x0, lp), want):
        torch.testing.assert_close(got.double(), w, **TOL)
    if model_dtype == torch.bfloat16:  # the anchor rounds σ·v and Δσ·v in bf16: agreement within that rounding
        rounded = anchor_math.dance_flux_step(v, x, 0.3, sigmas, 3, noise=noise, sde_solver=sde_solver,
                                              round_products=torch.bfloat16)
        torch.testing.assert_close(prev.double(), rounded[0], rtol=0, atol=2e-3)
        torch.testing.assert_close(x0.double(), rounded[1], rtol=0, atol=2e-2)
    # training replay at the stored sample: the given tensor comes back, the same log-prob, gradients as the oracle
    v_leaf = _leaf(v)
    back, _, lp2 = dance_grpo.flux_step(v_leaf, x, 0.3, sigmas, index, prev, True, sde_solver)
    assert back is prev
    torch.testing.assert_close(lp2, lp, rtol=1e-6, atol=1e-6)
    v64 = _leaf(v.double())
    _, _, want_lp = anchor_math.dance_flux_step(v64, x, 0.3, sigmas, 3, prev_sample=prev, sde_solver=sde_solver)
    lp2.sum().backward()
    want_lp.sum().backward()
    torch.testing.assert_close(v_leaf.grad.double(), v64.grad.to(model_dtype).double(), **GRAD_TOL[model_dtype])
    # grpo=False: the mean and x̂0, no draw
    state = torch.get_rng_state()
    mean, x0_b = dance_grpo.flux_step(v, x, 0.3, sigmas, index, None, False, sde_solver)
    assert torch.equal(torch.get_rng_state(), state)
    want_mean, _ = anchor_math.dance_flux_step(v, x, 0.3, sigmas, 3, grpo=False, sde_solver=sde_solver)
    _assert_meta(mean, (2, 64, 16))
    torch.testing.assert_close(mean.double(), want_mean, **TOL)
    torch.testing.assert_close(x0_b, x0)


def test_dance_flux_step_bf16_latents_keep_the_anchors_dtype():
    sigmas = shifted_sigmas(8)
    v, x = torch.randn(2, 8, 4).bfloat16(), torch.randn(2, 8, 4).bfloat16()
    prev, x0, lp = dance_grpo.flux_step(v, x, 0.5, sigmas, 2, None, True, True)
    assert prev.dtype == x0.dtype == torch.bfloat16 and lp.dtype == torch.float32


def test_dance_flux_step_rejects_like_the_anchor():
    sigmas = shifted_sigmas(8)
    v, x = torch.randn(1, 8, 4), torch.randn(1, 8, 4)
    with pytest.raises(ValueError, match="eta"):  # the anchor: math.log(0), math domain error
        dance_grpo.flux_step(v, x, 0.0, sigmas, 2, None, True, True)
    with pytest.raises(ValueError, match="sigmas"):  # the anchor: math.sqrt of a negative number
        dance_grpo.flux_step(v, x, 0.5, sigmas.flip(0), 2, None, True, True)
    mean, _ = dance_grpo.flux_step(v, x, 0.0, sigmas, 2, None, False, True)  # accepted without grpo
    torch.testing.assert_close(mean, x + (sigmas[3] - sigmas[2]) * v)


# AdaGRPO: flowsde_prob_func vs anchor_math.adagrpo_flowsde, checked against Bujiazi/GRPO-Series@c4028f9
# utils/utilities.py. The script passes 0-dim σ tensors, (1, L, C) anchor latents and (G, L, C) branch latents.
@pytest.mark.parametrize("sigma_index", [0, 5])
@pytest.mark.parametrize("latent", [(64, 16), (4, 6, 5)], ids=["packed", "4d"])
def test_adagrpo_flowsde_prob_func_matches_anchor(sigma_index, latent):
    sigmas = shifted_sigmas(16)
    s, sn = sigmas[sigma_index], sigmas[sigma_index + 1]
    gen = torch.Generator().manual_seed(sigma_index)
    x, v = torch.randn(1, *latent, generator=gen), torch.randn(1, *latent, generator=gen).bfloat16()
    group = torch.randn(6, *latent, generator=gen)
    v_leaf = _leaf(v)
    log_prob_fn, mean_next = adagrpo.flowsde_prob_func(x, v_leaf, s, sn, 0.7)
    v64 = _leaf(v.double())
    want_fn, want_mean = anchor_math.adagrpo_flowsde(x, v64, s, sn, 0.7)
    _assert_meta(mean_next, (1, *latent))
    torch.testing.assert_close(mean_next.double(), want_mean, **TOL)
    lp = log_prob_fn(group, mean_next)
    want = want_fn(group, want_mean)
    _assert_meta(lp, (6,) if len(latent) == 2 else (6, latent[-1]))  # dims (1, 2) only, as the anchor
    torch.testing.assert_close(lp.double(), want, **TOL)
    lp.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(v_leaf.grad.double(), v64.grad.to(torch.bfloat16).double(),
                               **GRAD_TOL[torch.bfloat16])


def test_adagrpo_flowsde_zero_eta_and_bad_rank():
    sigmas = shifted_sigmas(16)
    x, v = torch.randn(1, 8, 4), torch.randn(1, 8, 4)
    zero_fn, mean = adagrpo.flowsde_prob_func(x, v, sigmas[2], sigmas[3], 0.0)
    assert torch.all(zero_fn(torch.randn(3, 8, 4), mean) == 0)  # the anchor: −inf (division by 0)
    fn, _ = adagrpo.flowsde_prob_func(x[:, 0], v[:, 0], sigmas[2], sigmas[3], 0.7)
    for err in (ValueError, IndexError):  # the anchor: IndexError from mean(dim=(1, 2))
        with pytest.raises(err, match="latents"):
            fn(torch.randn(3, 4), torch.randn(1, 4))
