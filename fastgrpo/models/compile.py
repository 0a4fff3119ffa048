"""Compilation of the transformer in place (``nn.Module.compile``: parameter names, checkpoints, LoRA filters and
FSDP2's per-block sharding unchanged), either its whole forward or each repeated block (regional, as diffusers'
``compile_repeated_blocks`` and torchtitan do: one block traced, its code reused by the others — far less compile
time on deep models).

Rollout (no grad) and replay (grad) both run compiled code (an inference graph and the training graph): the first
PPO ratio stays exactly 1 (tests/test_compile.py), as long as no variant falls back to eager — hence the raised
recompile limit below. Measured on the embedded world's default job (2-core CPU, 2026-12-07,
``fastgrpo bench default_job``, median of 12 iterations): eager 2.60 s; the whole transformer 1.43 s (1.82×) after
a first iteration of 114 s from an empty inductor cache, 1.60 s (1.62×) after 11.3 s from a warm one; each block
2.21 / 2.03 s (1.17× / 1.28×). Off by default (``model.compile``): a fresh machine's first 80-iteration run ends
≈ 20 s later, later and longer runs gain."""
from __future__ import annotations

import logging
import shutil
import warnings

import torch
from torch import nn

from .base import BLOCK_LISTS, repeated_blocks

log = logging.getLogger(__name__)

RECOMPILE_LIMIT = 64
"""Compiled variants kept per block forward (dynamo's default: 8)."""
SCOPES = ("transformer", "blocks")
"""What ``model.compile_scope`` may name (the config's choices are this tuple)."""


def why_not(device: torch.device) -> str | None:
    """The reason torch.compile cannot run here, or None."""
    if not hasattr(torch, "compiler") or not hasattr(nn.Module, "compile"):
        return f"torch {torch.__version__} has no nn.Module.compile (torch >= 2.2 needed)"
    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        return "inductor on CPU needs a C++ compiler (g++ / clang++), none is on PATH"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "inductor on CUDA needs triton (pip install 'fastgrpo[triton]')"
    return None


def compile_transformer(transformer: nn.Module, device: torch.device, scope: str = "blocks") -> int:
    """Compile ``transformer`` in place: each repeated block (``scope="blocks"``) or its whole forward
    (``"transformer"``); the number of modules compiled. Where compilation is impossible, one warning naming the
    reason and 0 (the run goes on eager)."""
    if scope not in SCOPES:
        raise ValueError(f"model.compile_scope must be one of {SCOPES}, got {scope!r}")
    reason = why_not(device)
    if reason is not None:
        warnings.warn(f"model.compile=true: running eager — {reason}", RuntimeWarning, stacklevel=2)
        return 0
    blocks = repeated_blocks(transformer)
    if scope == "transformer":
        blocks = [transformer]
    elif not blocks:
        warnings.warn(f"model.compile=true: {type(transformer).__name__} has none of {BLOCK_LISTS}; running eager",
                      RuntimeWarning, stacklevel=2)
        return 0
    # One code object (the block's forward, or the transformer's) has many variants — SD3's last block
    # (context_pre_only), train/eval mode, grad on/off, each batch size before dynamic shapes — and they pass
    # dynamo's default limit of 8 within an evaluation and an iteration, after which the rest runs eager: a replay
    # eager against a compiled rollout no longer reproduces its log-probs exactly.
    import torch._dynamo

    dynamo = torch._dynamo.config
    limit = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"  # its name before 2.7
    setattr(dynamo, limit, max(getattr(dynamo, limit), RECOMPILE_LIMIT))
    for block in blocks:
        block.compile()
    log.info("model.compile: %s compiled (torch.compile)", f"{len(blocks)} transformer blocks" if scope == "blocks"
             else f"the whole {type(transformer).__name__} forward")
    return len(blocks)
