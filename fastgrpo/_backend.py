"""Which implementation of an op runs: the Triton kernel or the PyTorch reference.

Rule (per call, from the tensors, never from a host sync):
- ``backend=`` argument, else the ``FASTGRPO_BACKEND`` environment variable (``triton`` | ``torch`` | ``auto``);
- ``auto``: Triton for CUDA tensors, and for CPU tensors when ``TRITON_INTERPRET=1`` (Triton's interpreter);
  otherwise the PyTorch reference (Triton cannot launch on CPU tensors without the interpreter).
The first call of each op on each path logs the choice once (logger ``fastgrpo``).
"""
from __future__ import annotations

import importlib.util
import logging
import os

import torch

BACKENDS = ("auto", "triton", "torch")
logger = logging.getLogger("fastgrpo")
_announced: set[tuple[str, str]] = set()


# resolved once at import: a cached function call would break torch.compile's tracing of the dispatch
_TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    return _TRITON_AVAILABLE


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def requested_backend(backend: str | None = None) -> str:
    choice = backend if backend is not None else os.environ.get("FASTGRPO_BACKEND", "auto") or "auto"
    choice = choice.lower()
    if choice not in BACKENDS:
        source = "backend" if backend is not None else "FASTGRPO_BACKEND"
        raise ValueError(f"{source} must be one of {BACKENDS}, got {choice!r}")
    return choice


def triton_can_run(device: torch.device) -> bool:
    if not triton_available():
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


def pick_backend(op: str, device: torch.device, backend: str | None = None) -> str:
    """Return ``"triton"`` or ``"torch"`` for ``op`` on ``device``; raise if a forced path cannot run."""
    choice = requested_backend(backend)
    if choice == "auto":
        choice = "triton" if triton_can_run(device) else "torch"
    elif choice == "triton" and not triton_can_run(device):
        why = "triton is not installed" if not triton_available() else (
            f"Triton cannot launch on {device.type} tensors; set TRITON_INTERPRET=1 to interpret it on CPU")
        raise ValueError(f"backend='triton' requested for {op}, but {why}")
    if not torch.compiler.is_compiling() and (op, choice) not in _announced:
        _announced.add((op, choice))
        logger.info("fastgrpo.%s runs on the %s path (%s)", op, choice, device.type)
    return choice
