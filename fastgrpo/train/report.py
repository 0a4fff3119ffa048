"""Run outputs: a labelled sample grid (PIL), the evaluation curves (matplotlib, Agg), metrics as JSONL."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from . import atomic

TILE = 128
"""Longest side of a grid tile in pixels: a grid is a preview; 16 samples at 512² were a ~12k×6k PNG at full size."""
LABEL_LINES = 2


def save_grid(images: torch.Tensor, path: Path, prompts: list[str] | None = None, columns: int = 8,
              tile: int = TILE) -> None:
    """``images`` (N, C, H, W) in [0, 1] as thumbnails, each labelled with its prompt. Samples larger than ``tile``
    are downscaled (box filter); smaller ones (the world's 32²) are upscaled by a whole factor, nearest-neighbour,
    so their pixels stay sharp."""
    from PIL import Image, ImageDraw, ImageFont

    n, channels, h, w = images.shape
    if prompts is not None and len(prompts) != n:
        raise ValueError(f"prompts: {len(prompts)} prompts for {n} images")
    if channels not in (1, 3):
        raise ValueError(f"images: expected 1 or 3 channels, got shape {tuple(images.shape)}")
    if max(h, w) <= tile:
        factor = tile // max(h, w)
        size, resample = (w * factor, h * factor), Image.NEAREST
    else:
        size, resample = (max(1, w * tile // max(h, w)), max(1, h * tile // max(h, w))), Image.BOX
    font = ImageFont.load_default()
    line = font.getbbox("Ag")[3] + 2
    label = LABEL_LINES * line if prompts is not None else 0
    pad = 4
    cols = max(1, min(columns, n))
    rows = (n + cols - 1) // cols
    canvas = Image.new("RGB", (cols * (size[0] + pad) + pad, rows * (size[1] + label + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    pixels = (images.detach().float().clamp(0, 1).expand(-1, 3, -1, -1) * 255).round().to(torch.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        x, y = pad + c * (size[0] + pad), pad + r * (size[1] + label + pad)
        thumb = Image.fromarray(pixels[i].permute(1, 2, 0).cpu().numpy()).resize(size, resample)
        canvas.paste(thumb, (x, y))
        if prompts is not None:
            for k, text in enumerate(_fit(prompts[i], size[0], draw, font)):
                draw.text((x, y + size[1] + 1 + k * line), text, fill=(0, 0, 0), font=font)
    canvas.save(path)


def _fit(text: str, width: int, draw, font) -> list[str]:
    """``text`` word-wrapped to ``width`` pixels in at most LABEL_LINES lines, cut with "..." where it is longer."""
    lines = [""]
    for word in text.split():
        trial = f"{lines[-1]} {word}".strip()
        if lines[-1] and draw.textlength(trial, font=font) > width:
            lines.append(word)
        else:
            lines[-1] = trial
    if len(lines) > LABEL_LINES:
        lines = lines[:LABEL_LINES - 1] + [lines[LABEL_LINES - 1] + "..."]
    out = []
    for s in lines:
        while len(s) > 3 and draw.textlength(s, font=font) > width:  # a long word, or the added "..."
            s = s[:-4] + "..."
        out.append(s)
    return out


def _panels(keys) -> dict[str, list[str]]:
    """``eval_<set>_<metric>`` keys grouped by metric: train and held-out share a panel, and each metric gets its own
    y axis (a PickScore ≈ 20 and a correctness in [0, 1] do not fit one scale)."""
    panels: dict[str, list[str]] = {}
    for key in keys:
        rest = key.removeprefix("eval_")
        panels.setdefault(rest.split("_", 1)[-1], []).append(key)
    return panels


def save_curve(history: list[dict], keys, path: Path):
    """Each key against the iteration, one panel per metric, axes fitted to the data; returns the Figure. Drawn on
    an Agg canvas: no display needed, and no pyplot global state in a training process."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = _panels(keys)
    fig = Figure(figsize=(6.4, 2.4 * max(1, len(panels))), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(panels)), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (metric, group) in zip(axes, panels.items()):
        for key in group:
            points = [(h["iteration"], h[key]) for h in history if key in h]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=key.removeprefix("eval_"))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[-1].set_xlabel("iteration")
    fig.savefig(path, dpi=100)
    return fig


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Replace the file with ``records``, atomically (a kill leaves the old log or the new one)."""
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in records))
