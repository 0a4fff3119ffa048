"""Checkpoints: one immutable directory per save (``ckpt-<iteration>``, written under a temporary name and renamed
into place) plus a ``latest`` pointer replaced atomically, so a crash or kill never leaves a half-written
checkpoint as the one a resume would load. The two newest checkpoints are kept."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save(out_dir: str | os.PathLike, iteration: int, weights: dict, state: dict, keep: int = 2) -> Path:
    """``weights``: name → tensor (the model or its LoRA adapter); ``state``: everything else (torch.save)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"ckpt-{iteration:06d}"
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".ckpt-tmp-"))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    _atomic_write_text(out / "latest", final.name + "\n")
    for old in sorted(out.glob("ckpt-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(run_dir: str | os.PathLike) -> tuple[dict, dict]:
    """(model state dict, training state) of the run's latest checkpoint."""
    from safetensors.torch import load_file

    run = Path(run_dir)
    pointer = run / "latest"
    if not pointer.is_file():
        raise FileNotFoundError(f"--resume {run}: no 'latest' file; expected a run directory written by "
                                "`fastgrpo train` (with ckpt-*/model.safetensors and state.pt)")
    ckpt = run / pointer.read_text().strip()
    for name in ("model.safetensors", "state.pt"):
        if not (ckpt / name).is_file():
            raise FileNotFoundError(f"--resume {run}: {ckpt / name} is missing")
    return load_file(str(ckpt / "model.safetensors")), torch.load(ckpt / "state.pt", weights_only=False)
