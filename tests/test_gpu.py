"""CUDA suite (``pytest -m gpu``): the compiled Triton kernels on the device, at real latent sizes."""
import pytest
import torch

from fastgrpo.compat.flow_grpo import sde_step_with_logprob
from fastgrpo.ops import dpm_solver_2m_step, flow_step
from fastgrpo.reference.flow_step import FAMILIES, LOGPROBS
from helpers import random_step

pytestmark = pytest.mark.gpu
CUDA = "cuda"
SHAPES = [(2, 16, 128, 128), (3, 4096, 64), (1, 16, 5, 33, 17)]  # SD3.5 1024², packed FLUX, video-like


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("logprob", LOGPROBS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_kernel_matches_reference(family, logprob, dtype, shape):
    v, x, s, sn = random_step(shape, dtype, device=CUDA, seed=1)
    noise = torch.randn(shape, device=CUDA)
    kw = dict(family=family, logprob=logprob, noise=noise, return_mean=True, mu_ref=torch.randn_like(noise))
    got = flow_step(v, x, s, sn, 0.7, backend="triton", **kw)
    want = flow_step(v, x, s, sn, 0.7, backend="torch", **kw)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_backward_matches_reference(family, dtype):
    shape = (4, 16, 64, 64)
    v, x, s, sn = random_step(shape, dtype, device=CUDA, seed=2)
    x_next, mu_ref = torch.randn(shape, device=CUDA), torch.randn(shape, device=CUDA)
    w = torch.randn(4, device=CUDA)
    grads = []
    for backend in ("triton", "torch"):
        vv, xx = v.clone().requires_grad_(True), x.clone().requires_grad_(True)
        out = flow_step(vv, xx, s, sn, 0.7, family=family, x_next=x_next, mu_ref=mu_ref, backend=backend)
        ((w * out.log_prob).sum() + 0.04 * out.kl.sum()).backward()
        grads.append((vv.grad, xx.grad))
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-5)
    for g, r in zip(*grads):
        torch.testing.assert_close(g.float(), r.float(), **tol)


def test_cuda_seeded_noise_and_replay_bit_identical():
    v, x, s, sn = random_step((8, 16, 64, 64), torch.bfloat16, device=CUDA, seed=3, include_first=False,
                              include_last=False)
    roll = flow_step(v, x, s, sn, 0.7, seed=11, out_dtype=torch.bfloat16, return_mean=True)
    eps = (roll.x_next.float() - roll.mean) / roll.std.view(-1, 1, 1, 1)
    assert abs(eps.mean().item()) < 0.01 and abs(eps.std().item() - 1) < 0.01
    again = flow_step(v, x, s, sn, 0.7, seed=11, out_dtype=torch.bfloat16)
    assert torch.equal(again.x_next, roll.x_next)
    replay = flow_step(v, x, s, sn, 0.7, x_next=roll.x_next)
    assert torch.equal(replay.log_prob, roll.log_prob)  # first PPO ratio exactly 1, batch 8, bf16 storage


def test_cuda_one_launch_reduction_is_deterministic():
    """64 programs per row race to finish; the last one reduces in index order: identical results every time."""
    from fastgrpo.kernels.flow_step import _COUNTERS
    v, x, s, sn = random_step((24, 16, 128, 128), torch.bfloat16, device=CUDA, seed=9)
    x_next, mu_ref = torch.randn(v.shape, device=CUDA), torch.randn(v.shape, device=CUDA)
    first = flow_step(v, x, s, sn, 0.7, x_next=x_next, mu_ref=mu_ref)
    want = flow_step(v, x, s, sn, 0.7, x_next=x_next, mu_ref=mu_ref, backend="torch")
    torch.testing.assert_close(first.log_prob, want.log_prob, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(first.kl, want.kl, rtol=1e-5, atol=1e-5)
    for _ in range(50):
        out = flow_step(v, x, s, sn, 0.7, x_next=x_next, mu_ref=mu_ref)
        assert torch.equal(out.log_prob, first.log_prob) and torch.equal(out.kl, first.kl)
    assert torch.all(_COUNTERS[v.device] == 0)


def test_cuda_no_host_sync():
    v, x, s, sn = random_step((4, 16, 32, 32), device=CUDA, seed=4)
    noise = torch.randn_like(v)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = flow_step(v, x, s, sn, 0.7, noise=noise)
        out = flow_step(v, x, s, sn, 0.7, x_next=out.x_next, mu_ref=x)
        dpm_solver_2m_step(v, x, s, sn, x, torch.clamp(s + 0.01, max=1.0))
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_cuda_graph_capture_and_replay():
    v, x, s, sn = random_step((4, 16, 32, 32), device=CUDA, seed=5)
    noise = torch.randn_like(v)
    flow_step(v, x, s, sn, 0.7, noise=noise)  # warm-up compiles the kernel outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = flow_step(v, x, s, sn, 0.7, noise=noise)
    noise.copy_(torch.randn_like(noise))
    graph.replay()
    want = flow_step(v, x, s, sn, 0.7, noise=noise, backend="torch")
    torch.testing.assert_close(out.x_next, want.x_next, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.log_prob, want.log_prob, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_cuda_inductor_fullgraph(backend):
    v, x, s, sn = random_step((4, 16, 32, 32), torch.bfloat16, device=CUDA, seed=6)
    x_next = torch.randn(v.shape, device=CUDA)

    def loss_fn(v_):
        return -flow_step(v_, x, s, sn, 0.7, x_next=x_next, backend=backend).log_prob.mean()

    compiled = torch.compile(loss_fn, fullgraph=True)
    v1, v2 = v.clone().requires_grad_(True), v.clone().requires_grad_(True)
    a, b = loss_fn(v1), compiled(v2)
    a.backward()
    b.backward()
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(v2.grad.float(), v1.grad.float(), rtol=2e-2, atol=1e-6)


def test_cuda_opcheck():
    v, x, s, sn = random_step((3, 4, 50), device=CUDA, seed=7)
    torch.library.opcheck(torch.ops.fastgrpo.flow_step_fwd.default,
                          (v.requires_grad_(True), x, s, sn, 0.7, torch.randn_like(v), None, torch.randn_like(v), 0,
                           "flow_sde", "full", "flow_grpo", torch.bfloat16, True))


def test_cuda_dpm_matches_reference():
    v, x, s, sn = random_step((8, 16, 64, 64), torch.bfloat16, device=CUDA, seed=8, include_first=False)
    prev = torch.randn(v.shape, device=CUDA)
    sp = torch.clamp(s + 0.02, max=1.0)
    got = dpm_solver_2m_step(v, x, s, sn, prev, sp, backend="triton")
    want = dpm_solver_2m_step(v, x, s, sn, prev, sp, backend="torch")
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_cuda_compat_flow_grpo_with_cuda_generator():
    from diffusers import FlowMatchEulerDiscreteScheduler
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(10, device=CUDA)
    v, x = torch.randn(4, 16, 64, 64, device=CUDA, dtype=torch.bfloat16), torch.randn(4, 16, 64, 64, device=CUDA)
    t = sched.timesteps[torch.tensor([0, 2, 5, 8], device=CUDA)]
    prev, lp, mean, std = sde_step_with_logprob(sched, v, t, x, 0.7, generator=torch.Generator(CUDA).manual_seed(0))
    noise = torch.randn(v.shape, generator=torch.Generator(CUDA).manual_seed(0), device=CUDA)
    torch.testing.assert_close(prev, mean + std * torch.sqrt(sched.sigmas[[0, 2, 5, 8]] -
                                                             sched.sigmas[[1, 3, 6, 9]]).view(-1, 1, 1, 1) * noise,
                               rtol=1e-5, atol=1e-5)
    assert torch.isfinite(lp).all()


@pytest.mark.parametrize("options", [dict(), dict(std="unbiased", eps=1e-8, clip=5.0, global_std=True),
                                     dict(weights=torch.tensor([0.3, 0.7]), aggregate="sum_zscore"),
                                     dict(pooled=True), dict(fuse=True)])
def test_cuda_group_advantages_match_reference(options):
    from fastgrpo.algorithms import CapabilityTracker
    from fastgrpo.ops import group_advantages
    options = dict(options)
    n = 4096 * 16
    rewards = torch.randn(n, 2, device=CUDA)
    ids = torch.randint(0, 4096, (n,), device=CUDA) * 1_000_003
    if options.pop("fuse", False):
        tracker = CapabilityTracker(device=CUDA)
        tracker.update(torch.randn(10, device=CUDA))
        options["ema"] = tracker
    if "weights" in options:
        options["weights"] = options["weights"].to(CUDA)
    got = group_advantages(rewards, ids, backend="triton", **options)
    want = group_advantages(rewards, ids, backend="torch", **options)
    torch.testing.assert_close(got.advantages, want.advantages, rtol=1e-4, atol=1e-4)
    assert got.num_groups.item() == want.num_groups.item()
    again = group_advantages(rewards, ids, backend="triton", **options)
    assert torch.equal(again.advantages, got.advantages)  # no float atomics in the advantages


def test_cuda_group_advantages_no_host_sync():
    from fastgrpo.ops import group_advantages
    rewards = torch.randn(512 * 24, device=CUDA)
    ids = torch.randint(0, 512, (512 * 24,), device=CUDA)
    group_advantages(rewards, ids, check_finite=False)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        group_advantages(rewards, ids, check_finite=False, std="unbiased", eps=1e-8, clip=5.0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
