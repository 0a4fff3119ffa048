"""Regional compilation: ``torch.compile`` of each transformer block in place (``nn.Module.compile``), as diffusers'
``compile_repeated_blocks`` and torchtitan do — the blocks share one structure, so dynamo traces one and reuses its
code for the others, and the parameter names (checkpoints, LoRA filters, FSDP2 sharding per block) stay unchanged.

Rollout (no grad) and replay (grad) both run compiled blocks (an inference graph and the training graph): the
first PPO ratio stays exactly 1 (tests/test_compile.py), as long as no block variant falls back to eager — hence
the raised recompile limit below. Measured on the embedded world's default job (2-core CPU,
2026-12-07, ``fastgrpo bench default_job``): 97.5 s for the first iteration from an empty inductor cache (12.7 s
from a warm one), then 1.87 s per iteration against 2.59 s eager (1.39×) — a fresh machine's first 80-iteration run
loses, later runs gain; off by default (``model.compile``)."""
from __future__ import annotations

import logging
import shutil
import warnings

import torch
from torch import nn

log = logging.getLogger(__name__)

RECOMPILE_LIMIT = 64
"""Compiled variants kept per block forward (dynamo's default: 8)."""
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")
"""The repeated blocks of the diffusers transformers fastgrpo trains (SD3: the first; FLUX: both)."""


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


def compile_blocks(transformer: nn.Module, device: torch.device) -> int:
    """Compile each repeated block of ``transformer`` in place; the number compiled. Where compilation is
    impossible, one warning naming the reason and 0 (the run goes on eager)."""
    reason = why_not(device)
    if reason is not None:
        warnings.warn(f"model.compile=true: running eager — {reason}", RuntimeWarning, stacklevel=2)
        return 0
    blocks = [block for name in BLOCK_LISTS for block in getattr(transformer, name, ())]
    if not blocks:
        warnings.warn(f"model.compile=true: {type(transformer).__name__} has none of {BLOCK_LISTS}; running eager",
                      RuntimeWarning, stacklevel=2)
        return 0
    # One code object (the block's forward) serves every block; its variants — the last SD3 block
    # (context_pre_only), train/eval mode, grad on/off, each batch size before dynamic shapes — pass dynamo's
    # default limit of 8 within an evaluation and an iteration, after which the rest runs eager: a replay eager
    # against a compiled rollout no longer reproduces its log-probs exactly.
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for block in blocks:
        block.compile()
    log.info("model.compile: %d transformer blocks compiled (torch.compile, regional)", len(blocks))
    return len(blocks)
