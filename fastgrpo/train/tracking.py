"""Where a run's metrics go besides ``metrics.jsonl`` (``logging.backends``): TensorBoard and Weights & Biases.

Each gets the same scalars per iteration, the evaluation sample grids (and the final before/after) as images, and —
wandb — the resolved config. A resumed run continues the same wandb run: its id is kept in ``wandb_id`` in the run
directory (written atomically at the first start) and passed to ``wandb.init(id=..., resume="allow")``. Iterations a
killed run logged after its last checkpoint are run again on resume: TensorBoard hides the old events
(``purge_step``), metrics.jsonl drops them; wandb keeps the first values of a step it has already seen online (it
does not accept a step lower than its last one), so a resumed wandb run may show those few steps from before the
kill. ``wandb`` is optional (``pip install -e ".[wandb]"``; ``logging.wandb_mode=offline`` or ``WANDB_MODE``
without an account).
"""
from __future__ import annotations

import secrets
from pathlib import Path

from . import atomic

WANDB_ID = "wandb_id"


class Tracking:
    """The backends of ``cfg.logging`` for the run in ``out`` (rank 0 only)."""

    def __init__(self, cfg, out: Path, *, purge_step: int, config: dict):
        backends = cfg.logging.backends
        self.tensorboard = _tensorboard(out / "tensorboard", purge_step) if "tensorboard" in backends else None
        self.wandb = _wandb(cfg.logging, out, config) if "wandb" in backends else None

    def scalars(self, record: dict) -> None:
        step = record["iteration"]
        values = {k: v for k, v in record.items() if k != "iteration" and isinstance(v, (int, float))
                  and not isinstance(v, bool)}
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def image(self, tag: str, path: Path, step: int) -> None:
        """A PNG the run wrote (a sample grid), as an image at ``step``."""
        if self.tensorboard is not None:
            from matplotlib.image import imread

            pixels = imread(str(path))[..., :3]
            self.tensorboard.add_image(tag, pixels, step, dataformats="HWC")
        if self.wandb is not None:
            import wandb

            self.wandb.log({tag: wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def _tensorboard(folder: Path, purge_step: int):
    """TensorBoard's writer when tensorboard is installed (the ``train`` extra); events from ``purge_step`` on (a
    killed run's, redone after resume) are hidden, as metrics.jsonl drops them."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder), purge_step=purge_step)


def _wandb(cfg, out: Path, config: dict):
    try:
        import wandb
    except ImportError:
        raise ImportError("logging.backends includes wandb, which is not installed: pip install -e \".[wandb]\" "
                          "(or drop wandb from logging.backends)") from None
    id_file = out / WANDB_ID
    if id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = secrets.token_hex(6)  # wandb ids: lower-case letters and digits
        atomic.write_text(id_file, run_id + "\n")
    return wandb.init(project=cfg.project, name=cfg.name or out.resolve().name, id=run_id, resume="allow",
                      dir=str(out), config=config, mode=cfg.wandb_mode)
