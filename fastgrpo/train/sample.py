"""``fastgrpo sample RUN_DIR | CHECKPOINT | pretrained``: a grid of the evaluation prompts (the world: training, then
held-out), seed 0 of the evaluation's fixed noise, each tile labelled with its prompt and (world) a ✓/✗ mark."""
from __future__ import annotations

from pathlib import Path

from . import report
from .evaluate import load_target


def render_run(target: str | None, out: str) -> Path:
    trainer, iteration, label = load_target(target, command="sample")
    trainer.cfg.eval_seeds = 1  # the grid shows seed 0 only
    trainer.evaluate()
    images, labels, correct = trainer.last_eval.grid()
    report.save_grid(images, Path(out), prompts=labels, correct=correct)
    print(f"wrote {out} ({label}, iteration {iteration})")
    return Path(out)


__all__ = ["render_run"]
