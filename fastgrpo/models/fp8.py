"""The frozen base in float8 (``model.base_fp8``): the linear layers of the transformer's repeated blocks stored as
float8 e4m3 through torchao, the LoRA adapters (and everything outside the blocks) untouched.

The quantisation, per output channel j of a weight W (out × in), with 448 the largest finite e4m3 value:

    s_j = max_i |W_ji| / 448,    W8_ji = e4m3(W_ji / s_j)          (round to nearest)

``weight``: the layer computes y = x · (s ⊙ W8)ᵀ + b — the weight dequantised to the activation's dtype, then an
ordinary matmul: half the memory of a bf16 base, its speed from memory traffic, runs on any device.
``dynamic``: each activation row r is quantised too, a_r = max_k |x_rk| / 448, x8 = e4m3(x / a), and
y = (a sᵀ) ⊙ (x8 · W8ᵀ) + b on fp8 tensor cores (``torch._scaled_mm``; CUDA compute capability ≥ 8.9) — the form
that can run faster than bf16 on a compute-bound transformer. The backward to a layer's input (the gradient that
reaches the LoRA adapters of earlier layers) is ∂L/∂x = ∂L/∂y · (s ⊙ W8), the activation's rounding passed
straight through (``Float8FrozenLinear``).

Every forward uses the quantised base — rollouts, replays, the KL reference (the base with its adapter off) and
evaluation — not the rollout alone: the PPO ratio's old log-prob comes from the rollout, and a replay through the
unquantised base departs from it by the quantisation error. On the world (float32 base, 2026-12-07) that is
0.9–1.3% of the velocity and up to 9.2e-4 in a sample's per-step log-prob (mean 2e-5 to 3e-4 per step): the size
of the clip range of 1e-4 Flow-GRPO trains with, so a rollout-only fp8 base would clip many samples before the
policy had moved at all. With one base everywhere the first ratio stays exactly 1 and the adapter learns against
the base it samples with, as QLoRA does with a 4-bit base; merging it into the unquantised weights afterwards is a
change of base of that same size. Only under LoRA: a trained weight is not frozen."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from .base import repeated_blocks

log = logging.getLogger(__name__)

MODES = ("none", "weight", "dynamic")
"""What ``model.base_fp8`` may name."""
E4M3_MAX = 448.0
"""The largest finite float8 e4m3 value (``torch.finfo(torch.float8_e4m3fn).max``)."""


class _FrozenMatmul(torch.autograd.Function):
    """y = linear(x, W8, b) through torchao's float8 path; ∂L/∂x = ∂L/∂y · (s ⊙ W8) — the derivative of the
    dequantised weight's product, with the activation's rounding passed straight through (``dynamic``). Written
    out because the fp8 matmul (``torch._scaled_mm``) has no derivative of its own, and the gradient must reach the
    adapters of the layers before this one. W and b are frozen: no gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.weight, ctx.dtype = weight, x.dtype
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        return (grad @ ctx.weight.dequantize().to(grad.dtype)).to(ctx.dtype), None, None


class Float8FrozenLinear(nn.Linear):
    """A frozen ``nn.Linear`` whose weight torchao has quantised: the forward as torchao computes it, the backward
    to the input by ``_FrozenMatmul`` whenever the input carries a gradient (a replay of training)."""

    def forward(self, x):
        if torch.is_grad_enabled() and x.requires_grad:
            return _FrozenMatmul.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


TORCHAO_FLOOR = "0.16"
"""The first torchao release fastgrpo's float8 base is known to work with (the ``fp8`` extra's floor)."""


def why_not(mode: str, device: torch.device) -> str | None:
    """Why ``model.base_fp8=mode`` cannot run on ``device``, or None."""
    if mode == "none":
        return None
    try:
        import torchao.quantization
    except ImportError:
        return "it needs torchao: pip install 'fastgrpo[fp8]'"
    from packaging.version import Version

    version = getattr(torchao, "__version__", "0")
    # 0.16: Float8Tensor weights (qdata, scale) and the configs' set_inductor_config, both used below
    if Version(version) < Version(TORCHAO_FLOOR):
        return f"torchao {version} is too old: pip install 'torchao>={TORCHAO_FLOOR}'"
    if mode == "dynamic":
        if device.type != "cuda":
            return f"dynamic fp8 matmuls need a CUDA GPU (compute capability ≥ 8.9), not {device.type}"
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            return (f"dynamic fp8 matmuls need compute capability ≥ 8.9 (Ada, Hopper, Blackwell); this GPU has "
                    f"{major}.{minor} — model.base_fp8=weight runs on it")
    return None


def _frozen_linears(transformer: nn.Module, mode: str) -> set[nn.Linear]:
    """The frozen ``nn.Linear`` layers inside the repeated blocks (peft's ``base_layer`` under a LoRA wrapper; its
    ``lora_A`` / ``lora_B`` train and stay as they are). ``dynamic`` also needs both sides multiples of 16 (the fp8
    matmul's alignment); the rest stay in their dtype."""
    found = set()
    for block in repeated_blocks(transformer):
        for name, module in block.named_modules():
            if (not isinstance(module, nn.Linear) or isinstance(module, Float8FrozenLinear)  # (quantised before)
                    or module.weight.requires_grad):
                continue
            if any(part.startswith("lora_") for part in name.split(".")):
                continue
            if mode == "dynamic" and (module.in_features % 16 or module.out_features % 16):
                continue
            found.add(module)
    return found


def quantize_base(transformer: nn.Module, mode: str, device: torch.device) -> int:
    """Quantise the frozen linear layers of ``transformer``'s blocks in place (``mode``: weight | dynamic, per
    output channel; see the module's docstring); the number of layers quantised. ``none``: nothing, 0."""
    if mode not in MODES:
        raise ValueError(f"model.base_fp8 must be one of {MODES}, got {mode!r}")
    if mode == "none":
        return 0
    reason = why_not(mode, torch.device(device))
    if reason is not None:
        raise ValueError(f"model.base_fp8={mode}: {reason}")
    from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig, PerRow,
                                      quantize_)

    # set_inductor_config=False: torchao would otherwise change torch._inductor's global settings for the process
    config = (Float8WeightOnlyConfig(set_inductor_config=False) if mode == "weight" else
              Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False))
    chosen = _frozen_linears(transformer, mode)
    if not chosen:
        done = sum(isinstance(m, Float8FrozenLinear) for b in repeated_blocks(transformer) for m in b.modules())
        if done:  # a transformer quantised before (a benchmark's shared backbone)
            return done
        aligned = ""
        if mode == "dynamic" and _frozen_linears(transformer, "weight"):
            aligned = " whose sides are multiples of 16 (use model.base_fp8=weight)"
        raise ValueError(f"model.base_fp8={mode}: {type(transformer).__name__} has no frozen linear layer{aligned} "
                         "in its repeated blocks to quantise")
    before = sum(m.weight.numel() * m.weight.element_size() for m in chosen)
    quantize_(transformer, config, filter_fn=lambda module, _name: module in chosen)
    for module in chosen:
        module.__class__ = Float8FrozenLinear  # the same module and parameters; only its forward differs
    after = sum(m.weight.qdata.numel() + m.weight.scale.numel() * m.weight.scale.element_size() for m in chosen)
    log.info("model.base_fp8=%s: %d linear layers of the blocks in float8 e4m3 (%.3g → %.3g GiB)", mode,
             len(chosen), before / 2**30, after / 2**30)
    return len(chosen)
