"""``fastgrpo sample RUN_DIR``: a grid of every training prompt, fixed seeds, from a run's latest checkpoint."""
from __future__ import annotations

from pathlib import Path

from . import report
from .config import load_config
from .loop import Trainer


def render_run(run_dir: str, out: str) -> Path:
    config = load_config(str(Path(run_dir) / "config.yaml"))
    trainer = Trainer(config, resume=run_dir)
    trainer.evaluate()
    report.save_grid(trainer._last_eval_images, Path(out), prompts=trainer._last_eval_prompts)
    print(f"wrote {out} (iteration {trainer.iteration})")
    return Path(out)


__all__ = ["render_run"]
