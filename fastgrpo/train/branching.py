"""G²RPO's singular stochastic sampling (arXiv:2510.01982): a deterministic ODE trunk per prompt; at each branch
point k, G one-step SDE branches from the shared x_k (one model call, its output shared by the branches); each
branch finished by the ODE on a stride-λ grid for every λ ∈ Λ and scored (multi-granularity). The grid after the
branch keeps the schedule up to σ_{k+2}, then every λ-th σ; when that misses σ = 0 the scored image is the x̂0
of the last model call.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..ops import flow_step
from ..world import TextEmbeddings
from .rollout import Trajectory, guided_velocity


def stride_grid(sigmas: Tensor, k: int, stride: int) -> list[float]:
    """σ's from σ_{k+1}: σ_{k+1}, σ_{k+2}, then every ``stride``-th one after σ_{k+2}."""
    sig = sigmas.tolist()
    return sig[k + 1:k + 3] + sig[k + 2 + stride::stride]


@torch.no_grad()
def ode_to_image(model, x: Tensor, grid: list[float], text: TextEmbeddings, empty, guidance: float) -> Tensor:
    """Euler along ``grid``; if it stops above σ = 0, the x̂0 of one more model call at the last σ."""
    for s, sn in zip(grid[:-1], grid[1:]):
        x = x + (sn - s) * guided_velocity(model, x, s, text, empty, guidance)
    if grid[-1] > 0:
        x = x - grid[-1] * guided_velocity(model, x, grid[-1], text, empty, guidance)
    return x


@torch.no_grad()
def branch(model, noise: Tensor, sigmas: Tensor, points: list[int], strides: list[int], group: int,
           text: TextEmbeddings, empty, *, guidance: float, eta: float, family: str, logprob: str, seed: int,
           score) -> list[tuple[int, Trajectory, Tensor]]:
    """For one prompt: ``[(k, branch trajectory (one stored step), rewards (G, |Λ|))]`` for every branch point.

    ``model(x, σ, text) -> v`` (``Backbone.denoiser``); ``noise``: (1, ...) trunk noise; ``text``/``empty``: embeddings for a batch of one; ``score(latents)`` → (B,)."""
    sig = sigmas.tolist()
    x = noise
    trunk = {}
    for i in range(max(points) + 1):
        trunk[i] = x
        x = x + (sig[i + 1] - sig[i]) * guided_velocity(model, x, sig[i], text, empty, guidance)

    def expand(e: TextEmbeddings | None):
        return None if e is None else TextEmbeddings(e.hidden.expand(group, -1, -1), e.pooled.expand(group, -1))

    text_g, empty_g = expand(text), expand(empty)
    out = []
    for k in points:
        x_k = trunk[k].expand(group, *trunk[k].shape[1:])
        v = guided_velocity(model, trunk[k], sig[k], text, empty, guidance).expand_as(x_k)
        step = flow_step(v, x_k, sig[k], sig[k + 1], eta, family=family, logprob=logprob, seed=seed * 1009 + k)
        rewards = torch.stack([score(ode_to_image(model, step.x_next, stride_grid(sigmas, k, lam), text_g,
                                                  empty_g, guidance)) for lam in strides], 1)
        traj = Trajectory(step.x_next, [x_k.contiguous()], [step.x_next], [step.log_prob], [sig[k]], [sig[k + 1]],
                          shared_input=True)
        out.append((k, traj, rewards))
    return out
