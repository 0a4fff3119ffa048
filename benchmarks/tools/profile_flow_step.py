"""Diagnostics for the fused step on CUDA: GPU-only time (CUDA-graph replay), host overhead per call, a cProfile of
the host path, and a BLOCK / num_warps sweep of the forward kernel. Prints a report; not part of `fastgrpo bench`.

    python -m benchmarks.tools.profile_flow_step
"""
from __future__ import annotations

import cProfile
import io
import pstats
import time

import torch

from benchmarks.common import graph_ms
from fastgrpo.kernels import flow_step as K
from fastgrpo.ops import flow_step


def host_us(fn, calls: int = 300) -> float:
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return 1e6 * (t1 - t0) / calls


def main():
    dev = "cuda"
    src = torch.randn(2**28, device=dev)
    dst = torch.empty_like(src)
    copy = graph_ms(lambda: dst.copy_(src), reps=5)
    peak = 2 * src.numel() * 4 / copy / 1e6
    print(f"copy bandwidth {peak:.0f} GB/s")
    del src, dst
    for shape in [(1, 16, 64, 64), (24, 16, 64, 64), (24, 16, 128, 128), (48, 16, 128, 128), (48, 4096, 64)]:
        B = shape[0]
        v = torch.randn(shape, device=dev).bfloat16()
        x, noise = torch.randn(shape, device=dev), torch.randn(shape, device=dev)
        s, sn = torch.full((B,), 0.8, device=dev), torch.full((B,), 0.7, device=dev)
        n = v.numel()
        roll = lambda: flow_step(v, x, s, sn, 0.7, noise=noise)  # noqa: E731
        raw = lambda: K.flow_step_fwd(v, x, s, sn, 0.7, noise, None, None, 0, "flow_sde", "full", "flow_grpo",  # noqa
                                      torch.float32, False)
        seed = lambda: flow_step(v, x, s, sn, 0.7, seed=3)  # noqa: E731
        xn = roll().x_next
        leaf = v.detach().requires_grad_(True)
        train = lambda: torch.autograd.grad(flow_step(leaf, x, s, sn, 0.7, x_next=xn).log_prob.sum(), leaf)  # noqa
        gms = graph_ms(roll)
        print(f"\n{shape}: rollout GPU {gms * 1e3:.1f} us = {14 * n / gms / 1e6:.0f} GB/s "
              f"({14 * n / gms / 1e6 / peak:.0%}); raw launcher GPU {graph_ms(raw) * 1e3:.1f} us; "
              f"seed GPU {graph_ms(seed) * 1e3:.1f} us; training GPU {graph_ms(train) * 1e3:.1f} us")
        print(f"  host per call: rollout {host_us(roll):.0f} us, raw launcher {host_us(raw):.0f} us, "
              f"training {host_us(train):.0f} us")
        if B == 1:
            for name, fn in (("rollout", roll), ("training", train)):
                pr = cProfile.Profile()
                pr.enable()
                for _ in range(200):
                    fn()
                pr.disable()
                out = io.StringIO()
                pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(18)
                print(f"--- cProfile {name} (200 calls)\n" + "\n".join(out.getvalue().splitlines()[6:30]))
        if n >= 2**23:
            orig = K._block
            for block in (1024, 2048, 4096, 8192):
                for warps in (4, 8, 16):
                    K._block = lambda _n, b=block, w=warps: (b, w)  # noqa: E731
                    ms = graph_ms(raw)
                    print(f"  BLOCK {block:5d} warps {warps:2d}: {ms * 1e3:6.1f} us {14 * n / ms / 1e6 / peak:.0%}")
            K._block = orig


if __name__ == "__main__":
    main()
