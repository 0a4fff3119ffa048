"""Helpers shared by the compat shims: the anchors' RNG use, σ lookups, the errors the anchors raise, and the fast
PyTorch path of a Gaussian step whose mean is linear in (x, v).

Every step family the shims replace has μ = a·x + b·v with per-sample scalars a, b (flow_sde, dance_sde, cps,
the Euler mean). On the PyTorch path (CPU, or ``FASTGRPO_BACKEND=torch``) the shims compute μ in two passes
(``x·a``, then an in-place multiply-add of v, which reads a bf16 v without an fp32 copy), x' = μ + s·ε in one, and
the per-sample Σ(x' − μ)² in one pass plus one norm reduction — where the anchors spend about ten passes and a
temporary per element-wise operation. The readable reference (``fastgrpo.reference.flow_step``) stays the oracle.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

from .._backend import pick_backend

Coefficient = Union[float, Tensor]
"""A per-sample scalar of the step: a Python float (one value for the batch) or an fp32 tensor shaped (n, 1, …)."""


class ArgumentIndexError(ValueError, IndexError):
    """A bad argument the anchor rejects with an IndexError: catchable as either."""


class ArgumentTypeError(ValueError, TypeError):
    """A bad argument the anchor rejects with a TypeError: catchable as either."""


def randn_like_anchor(shape, generator, device, dtype) -> Tensor:
    """ε drawn exactly as diffusers' ``randn_tensor`` does (same generator use, dtype and device), so a seeded
    recipe reproduces its images bit for bit and leaves its RNG in the same state."""
    from diffusers.utils.torch_utils import randn_tensor
    return randn_tensor(shape, generator=generator, device=device, dtype=dtype)


def torch_path(device: torch.device) -> bool:
    """True where ``flow_step`` would run its PyTorch path (CPU without the Triton interpreter, or
    ``FASTGRPO_BACKEND=torch``): the shims then take the fast PyTorch path below instead."""
    return pick_backend("flow_step", device) == "torch"


def broadcast_shape(*shapes) -> tuple:
    """``torch.broadcast_shapes`` for plain int shapes, without its per-call tracing checks (~30 µs)."""
    ndim = max(len(s) for s in shapes)
    out = [1] * ndim
    for shape in shapes:
        for i, size in enumerate(shape, ndim - len(shape)):
            if size != 1:
                if out[i] not in (1, size):
                    raise RuntimeError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
                out[i] = size
    return tuple(out)


def linear_mean(x: Tensor, v: Tensor, a: Coefficient, b: Coefficient) -> Tensor:
    """μ = a·x + b·v in fp32, broadcast over x, v and the coefficients. Differentiable in x and v."""
    x32 = x if x.dtype == torch.float32 else x.float()
    mu = x32 * a
    if isinstance(b, Tensor):
        in_place = tuple(mu.shape) == broadcast_shape(mu.shape, v.shape, b.shape)
        return mu.addcmul_(v, b) if in_place else torch.addcmul(mu, v, b)
    in_place = tuple(mu.shape) == broadcast_shape(mu.shape, v.shape)
    return mu.add_(v, alpha=b) if in_place else torch.add(mu, v, alpha=b)


def add_noise(mu: Tensor, noise: Tensor, std: Coefficient) -> Tensor:
    """x' = μ + s·ε (fp32; the result keeps μ's graph, as the anchors' samples do)."""
    if isinstance(std, Tensor):
        return torch.addcmul(mu, noise, std)
    return torch.add(mu, noise, alpha=std)


class _SquaredDistance(torch.autograd.Function):
    """Σ over ``dims`` of (target − mean)²; the gradient goes to ``mean`` only (the target is a sample, detached
    as the anchors do). Saves the difference: the backward is one pass, and 0 where target = mean."""

    @staticmethod
    def forward(ctx, target: Tensor, mean: Tensor, dims: tuple):
        diff = torch.sub(target, mean)
        norm = torch.linalg.vector_norm(diff, dim=dims)
        ctx.dims, ctx.mean_shape = dims, mean.shape
        ctx.save_for_backward(diff)
        return norm * norm

    @staticmethod
    def backward(ctx, grad: Tensor):
        (diff,) = ctx.saved_tensors
        scale = grad * -2.0
        for d in sorted(ctx.dims):
            scale = scale.unsqueeze(d)
        grad_mean = diff * scale
        if grad_mean.shape != ctx.mean_shape:
            grad_mean = grad_mean.sum_to_size(ctx.mean_shape)
        return None, grad_mean, None


def squared_distance(target: Tensor, mean: Tensor, dims: Sequence[int] | None = None) -> Tensor:
    """Per-sample Σ (target − mean)² in fp32 over ``dims`` (default: every dim but the first)."""
    target = target.detach()
    if torch.promote_types(target.dtype, mean.dtype) not in (torch.float32, torch.float64):
        target = target.float()  # the anchors subtract in fp32 at least; a bf16 target with an fp32 mean promotes
    ndim = max(target.dim(), mean.dim())
    dims = tuple(range(1, ndim)) if dims is None else tuple(dims)
    return _SquaredDistance.apply(target, mean, dims)
