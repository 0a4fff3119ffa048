"""Crash-safe file writes for run outputs: write a temporary file beside the target, fsync it, rename it over the
target (``os.replace`` is atomic on POSIX), fsync the folder. A kill at any moment leaves the old file or the new
one, never a mix; the fsyncs make the same hold across a power loss."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (its directory entry is what changed)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file in ``folder`` (one level) and the folder itself: a checkpoint is complete on disk before
    anything points at it."""
    for item in folder.iterdir():
        if item.is_file():
            with open(item, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(folder)


def write_text(path: Path, text: str) -> None:
    _write(path, lambda fh: fh.write(text.encode("utf-8")))


def write_bytes(path: Path, data: bytes) -> None:
    _write(path, lambda fh: fh.write(data))


def save_torch(path: Path, obj) -> None:
    """``torch.save(obj)`` to ``path``, crash-safe like ``write_text``."""
    import torch

    _write(path, lambda fh: torch.save(obj, fh))


def _write(path: Path, fill) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide run outputs from the other users of a shared machine
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_dir(path.parent)
