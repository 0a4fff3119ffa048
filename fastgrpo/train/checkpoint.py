"""Checkpoints: one immutable directory per save plus a ``latest`` pointer, so a crash or a kill -9 at any moment
leaves ``latest`` naming a complete checkpoint.

A save writes ``.ckpt-tmp-<u>/`` (weights, state, fsynced), renames it to a name no earlier save used
(``ckpt-<iteration>-<u>``: saving an iteration twice never touches the first copy), switches ``latest`` atomically,
and only then prunes: older checkpoints beyond ``keep``, and leftovers of killed saves. The checkpoint ``latest``
names is never removed.

``state.pt`` holds plain data only (tensors, dicts, lists, tuples, numbers, strings, None) and is read with
``torch.load(weights_only=True)``: loading a checkpoint runs no pickled code.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from . import atomic

TMP_PREFIX = ".ckpt-tmp-"
_NAME = re.compile(r"ckpt-(\d+)(?:-[A-Za-z0-9_]+)?")
_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def save(out_dir: str | os.PathLike, iteration: int, weights: dict, state: dict, keep: int = 2) -> Path:
    """``weights``: name → tensor (the model or its LoRA adapter); ``state``: everything else, plain data only."""
    from safetensors.torch import save_file

    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the checkpoint 'latest' names), got {keep}")
    check_plain(state)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=TMP_PREFIX))
    return _publish(out, tmp, iteration, state, keep, lambda: save_file(
        {k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors")))


def _publish(out: Path, tmp: Path, iteration: int, state: dict | None, keep: int, write=None) -> Path:
    """Finish a save in ``tmp``: ``write()`` the weights (when not written yet), ``state.pt`` (unless ``state`` is
    None: written already), fsync, rename to a name no earlier save used, switch ``latest``, prune. ``tmp`` is
    removed if anything fails before the rename."""
    final = out / f"ckpt-{iteration:06d}-{tmp.name.removeprefix(TMP_PREFIX)}"
    try:
        if write is not None:
            write()
        if state is not None:
            torch.save(state, tmp / "state.pt")
        atomic.fsync_tree(tmp)
        os.replace(tmp, final)  # a fresh name (mkdtemp's suffix is unique in `out`): nothing is replaced
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    atomic.fsync_dir(out)
    atomic.write_text(out / "latest", final.name + "\n")
    _prune(out, final, keep)
    return final


def _iteration(path: Path) -> int | None:
    match = _NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


def _prune(out: Path, current: Path, keep: int) -> None:
    """Keep ``current`` and the ``keep`` − 1 newest earlier checkpoints. Others at ``current``'s iteration or later
    are stale (a second save of the iteration, or saves of a killed run that this resumed run has redone)."""
    step = _iteration(current)
    earlier, stale = [], []
    for path in out.glob("ckpt-*"):
        it = _iteration(path)
        if path == current or it is None or not path.is_dir():
            continue  # never the one `latest` names; never a folder this module did not write
        (earlier if it < step else stale).append(path)
    earlier.sort(key=lambda p: (_iteration(p), p.stat().st_mtime_ns))
    for path in stale + earlier[:max(0, len(earlier) - (keep - 1))]:
        shutil.rmtree(path, ignore_errors=True)
    for path in out.glob(TMP_PREFIX + "*"):  # a save killed before its rename
        shutil.rmtree(path, ignore_errors=True)


def check_plain(value, where: str = "state") -> None:
    """Raise a TypeError naming the first entry that ``torch.load(weights_only=True)`` would refuse (checked at
    save time, so a resume never finds out too late)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint {where} has a {type(key).__name__} key {key!r}; use str or int keys")
            check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(f"checkpoint {where} has type {type(value).__name__}; state.pt holds only tensors, dicts, "
                        "lists, numbers and strings (it is loaded with weights_only=True)")


def latest(run_dir: str | os.PathLike) -> Path:
    """The checkpoint directory the run's ``latest`` names."""
    run = Path(run_dir)
    pointer = run / "latest"
    if not pointer.is_file():
        raise FileNotFoundError(f"--resume {run}: no 'latest' file; expected a run directory written by "
                                "`fastgrpo train` (with ckpt-*/model.safetensors and state.pt)")
    return run / pointer.read_text().strip()


def load(run_dir: str | os.PathLike) -> tuple[dict | None, dict]:
    """(model state dict, training state) of the run's latest checkpoint; the model state is None for a sharded
    checkpoint (its weights and optimiser state are in ``SHARDS``: :func:`load_shards`)."""
    from safetensors.torch import load_file

    ckpt = latest(run_dir)
    sharded = (ckpt / SHARDS).is_dir()
    for name in ("state.pt",) if sharded else ("model.safetensors", "state.pt"):
        if not (ckpt / name).is_file():
            raise FileNotFoundError(f"--resume {run_dir}: {ckpt / name} is missing")
    state = torch.load(ckpt / "state.pt", weights_only=True)
    return (None if sharded else load_file(str(ckpt / "model.safetensors"))), state


# ---- sharded checkpoints (FSDP2, full fine-tuning) ------------------------------------------------------------

SHARDS = "shards"
"""The torch.distributed.checkpoint folder of a sharded checkpoint: each rank's part (``__<rank>_0.distcp``) and
the metadata that lets any world size read it back."""


def save_sharded(out_dir: str | os.PathLike, iteration: int, trained, optimizer, state: dict, keep: int = 2,
                 background=None):
    """Every rank writes its own shards of the weights and the optimiser state (``torch.distributed.checkpoint``,
    no gather on rank 0) into the same temporary directory; after a barrier rank 0 adds ``state.pt``, renames the
    directory and switches ``latest`` as :func:`save` does. A collective: every rank calls it. Several nodes need
    ``out_dir`` on a file system they share.

    Returns a :class:`PendingSave`, whose ``finish()`` (a collective) publishes. ``background``: None — the shards
    are written before this returns. A process group (gloo: its own, so the writer's collectives never interleave
    with training's) — ``dcp.async_save``: the shards are copied to host memory now and written by a thread while
    training goes on; ``finish()`` waits for the write and only then publishes. Until then ``latest`` names the
    previous checkpoint, so a crash or a kill at any moment still leaves a complete one."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    check_plain(state)
    out = Path(out_dir)
    rank = dist.get_rank()
    name = [None]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        name = [Path(tempfile.mkdtemp(dir=out, prefix=TMP_PREFIX)).name]
    dist.broadcast_object_list(name, src=0)
    tmp = out / name[0]
    if rank == 0:  # the training state of this iteration, written now (the run goes on changing it)
        torch.save(state, tmp / "state.pt")
    model_state, optim_state = get_state_dict(trained, optimizer)
    shards = {"model": model_state, "optim": optim_state}
    if background is not None:
        future = dcp.async_save(shards, checkpoint_id=str(tmp / SHARDS), process_group=background)
        return PendingSave(out, tmp, iteration, keep, future)
    dcp.save(shards, checkpoint_id=str(tmp / SHARDS))  # fsyncs its files
    return PendingSave(out, tmp, iteration, keep, None)


class PendingSave:
    """A sharded save whose shards may still be being written (:func:`save_sharded` with ``background``)."""

    def __init__(self, out: Path, tmp: Path, iteration: int, keep: int, future):
        self.out, self.tmp, self.iteration, self.keep, self.future = out, tmp, iteration, keep, future

    def finish(self) -> Path | None:
        """A collective: wait for this rank's shards, then (after a barrier) rank 0 publishes. The path on rank 0,
        None elsewhere."""
        import torch.distributed as dist

        if self.future is not None:
            self.future.result()  # re-raises the writer's error
            self.future = None
        dist.barrier()
        final = _publish(self.out, self.tmp, self.iteration, None, self.keep) if dist.get_rank() == 0 else None
        dist.barrier()
        return final


def shard_names(ckpt: Path) -> set[str]:
    """The weight names the sharded checkpoint ``ckpt`` (a ckpt-* directory) holds (its metadata; nothing loaded)."""
    import torch.distributed.checkpoint as dcp

    metadata = dcp.FileSystemReader(str(Path(ckpt) / SHARDS)).read_metadata()
    return {key.removeprefix("model.") for key in metadata.state_dict_metadata if key.startswith("model.")}


def load_shards(ckpt: Path, trained, optimizer=None) -> None:
    """Load the sharded checkpoint ``ckpt`` (a ckpt-* directory) into ``trained`` (FSDP2 on any number of ranks —
    each reads the parts its shards need — or a plain module on one process) and, when given, the optimiser."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict, set_model_state_dict,
                                                         set_state_dict)

    path = str(Path(ckpt) / SHARDS)
    if optimizer is None:
        state = {"model": get_model_state_dict(trained)}
        dcp.load(state, checkpoint_id=path)
        set_model_state_dict(trained, state["model"])
        return
    model_state, optim_state = get_state_dict(trained, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(trained, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
