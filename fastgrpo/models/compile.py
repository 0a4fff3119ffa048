"""Regional compilation: ``torch.compile`` of each transformer block in place (``nn.Module.compile``), as diffusers'
``compile_repeated_blocks`` and torchtitan do — the blocks share one structure, so dynamo traces one and reuses its
code for the others, and the parameter names (checkpoints, LoRA filters, FSDP2 sharding per block) stay unchanged.

Rollout (no grad) and replay (grad) both run the compiled blocks, but inductor compiles a different graph for each
(an inference graph at the rollout's batch, the training graph at the replay's): the first PPO ratio, exactly 1
eager, stayed exactly 1 step after step on the world's default job and departed by one float32 ulp (1.2e-7) on a
small config whose evaluation compiled first (tests/test_compile.py) — far inside any PPO clip, but not the exact
replay of the eager path. Measured on the embedded world's default job (2-core CPU, 2026-12-06, inductor,
``fastgrpo bench default_job``): 92–99 s of compilation in the first iteration from an empty cache, then 1.85 s
per iteration against 2.3–2.5 s eager (1.25–1.34×) — it pays after 150–190 iterations, so it is off by default
(``model.compile``)."""
from __future__ import annotations

import logging
import shutil
import warnings

import torch
from torch import nn

log = logging.getLogger(__name__)

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
    for block in blocks:
        block.compile()
    log.info("model.compile: %d transformer blocks compiled (torch.compile, regional)", len(blocks))
    return len(blocks)
