"""Run outputs: labelled sample grids with correctness marks and before/after pairs (PIL), the evaluation curves
with confidence bands (matplotlib, Agg), metrics as JSONL."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from . import atomic

TILE = 128
"""Longest side of a grid tile in pixels: a grid is a preview; 16 samples at 512² were a ~12k×6k PNG at full size."""
LABEL_LINES = 2
GOOD, BAD = (0, 140, 40), (200, 20, 20)
"""Colours of the correctness marks (✓ green, ✗ red)."""
MARK = 15
"""Side of a correctness badge in pixels (drawn at a tile's top-right corner)."""


def thumbnails(images: torch.Tensor, tile: int = TILE) -> torch.Tensor:
    """``images`` (N, C, H, W) in [0, 1] as uint8, area-downscaled so the longer side is at most ``tile`` (what a
    grid shows; small samples stay as they are)."""
    images = images.detach().float().clamp(0, 1).cpu()
    h, w = images.shape[-2:]
    if max(h, w) > tile:
        size = (max(1, h * tile // max(h, w)), max(1, w * tile // max(h, w)))
        images = torch.nn.functional.interpolate(images, size=size, mode="area")
    return (images * 255).round().to(torch.uint8)


def render_grid(images: torch.Tensor, prompts: list[str] | None = None, correct=None, columns: int = 8,
                tile: int = TILE):
    """The grid as a PIL image: ``images`` (N, C, H, W), float in [0, 1] or uint8, as thumbnails, each labelled
    with its prompt and, with ``correct`` (N bools), a ✓ (green) or ✗ (red) badge in its top-right corner. Samples
    larger than ``tile`` are downscaled (box filter); smaller ones (the world's 32²) are upscaled by a whole factor,
    nearest-neighbour, so their pixels stay sharp. The marks are drawn as strokes, not glyphs: the default font
    has no ✓."""
    from PIL import Image, ImageDraw, ImageFont

    n, channels, h, w = images.shape
    if prompts is not None and len(prompts) != n:
        raise ValueError(f"prompts: {len(prompts)} prompts for {n} images")
    if correct is not None and len(correct) != n:
        raise ValueError(f"correct: {len(correct)} marks for {n} images")
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
    if images.dtype == torch.uint8:
        pixels = images.expand(-1, 3, -1, -1)
    else:
        pixels = (images.detach().float().clamp(0, 1).expand(-1, 3, -1, -1) * 255).round().to(torch.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        x, y = pad + c * (size[0] + pad), pad + r * (size[1] + label + pad)
        thumb = Image.fromarray(pixels[i].permute(1, 2, 0).cpu().numpy()).resize(size, resample)
        canvas.paste(thumb, (x, y))
        if prompts is not None:
            for k, text in enumerate(_fit(prompts[i], size[0], draw, font)):
                draw.text((x, y + size[1] + 1 + k * line), text, fill=(0, 0, 0), font=font)
        if correct is not None:
            _mark(draw, x + size[0] - MARK - 1, y + 1, bool(correct[i]))
    return canvas


def _mark(draw, x: int, y: int, ok: bool) -> None:
    """A ✓ or ✗ badge, MARK px square, white with a coloured border, at (x, y)."""
    colour = GOOD if ok else BAD
    draw.rectangle((x, y, x + MARK - 1, y + MARK - 1), fill=(255, 255, 255), outline=colour)
    if ok:
        draw.line([(x + 3, y + 8), (x + 6, y + 11), (x + 11, y + 3)], fill=colour, width=2)
    else:
        draw.line([(x + 4, y + 4), (x + 10, y + 10)], fill=colour, width=2)
        draw.line([(x + 4, y + 10), (x + 10, y + 4)], fill=colour, width=2)


def save_grid(images: torch.Tensor, path: Path, prompts: list[str] | None = None, correct=None, columns: int = 8,
              tile: int = TILE) -> None:
    """``render_grid`` written to ``path`` (PNG)."""
    render_grid(images, prompts, correct, columns, tile).save(path)


def save_before_after(before: torch.Tensor, after: torch.Tensor, path: Path, prompts: list[str],
                      correct_before=None, correct_after=None, titles=("before", "after"), columns: int = 4):
    """Two grids side by side, tile for tile: ``before`` (left) and ``after`` (right) — the same prompts and the
    same noise — each titled, with the same labels and correctness marks as ``render_grid``. Returns the image."""
    from PIL import Image, ImageDraw, ImageFont

    if before.shape[0] != after.shape[0]:
        raise ValueError(f"before has {before.shape[0]} images, after {after.shape[0]}: pair the same prompts")
    left = render_grid(before, prompts, correct_before, columns)
    right = render_grid(after, prompts, correct_after, columns)
    font = ImageFont.load_default()
    head, gap = font.getbbox("Ag")[3] + 8, 16
    canvas = Image.new("RGB", (left.width + gap + right.width, head + max(left.height, right.height)), "white")
    draw = ImageDraw.Draw(canvas)
    for x, panel, title in ((0, left, titles[0]), (left.width + gap, right, titles[1])):
        canvas.paste(panel, (x, head))
        draw.text((x + 4, 3), title, fill=(0, 0, 0), font=font)
    draw.line([(left.width + gap // 2, 0), (left.width + gap // 2, canvas.height)], fill=(160, 160, 160), width=1)
    canvas.save(path)
    return canvas


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


_BOUNDS = ("_lo", "_hi")
_TITLES = {"reward": "reward", "correct": "exact correctness (fraction)", "components": "reward component"}


def _split(key: str) -> tuple[str, str]:
    """``eval_<set>_<metric>`` → (set, metric)."""
    name, metric = key.removeprefix("eval_").split("_", 1)
    return name, metric


def _panels(keys) -> dict[str, list[str]]:
    """``eval_<set>_<metric>`` keys (the interval bounds ``_lo`` / ``_hi`` left out) grouped by panel: train and
    held-out share a panel; reward, correctness and each named reward of several (``reward_<name>``) get their own
    y axis (a PickScore ≈ 20 and a correctness in [0, 1] do not fit one scale); the world's reward components, all in
    [0, 1], share one."""
    panels: dict[str, list[str]] = {}
    for key in keys:
        if key.endswith(_BOUNDS):
            continue
        metric = _split(key)[1]
        panel = metric if metric in ("reward", "correct") or metric.startswith("reward_") else "components"
        panels.setdefault(panel, []).append(key)
    order = {"reward": 0, "correct": 1, "components": 3}  # named rewards (2) between correctness and components
    return dict(sorted(panels.items(), key=lambda item: order.get(item[0], 2)))


def _extrapolating(x, xp, fp):
    """Piecewise-linear through (xp, fp), continued past both ends along the end segments (``np.interp`` would
    clamp, piling the top axis's ticks at the margins)."""
    import numpy as np

    x = np.asarray(x, dtype=float)
    y = np.interp(x, xp, fp)
    left, right = x < xp[0], x > xp[-1]
    y[left] = fp[0] + (x[left] - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
    y[right] = fp[-1] + (x[right] - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    return y


def save_curve(history: list[dict], keys, path: Path):
    """Each key against the iteration (bottom axis) and the wall seconds since the run started (top axis, from
    ``wall_s``), one panel per metric, axes fitted to the data, the 95% confidence interval (``<key>_lo`` /
    ``_hi``) as a shaded band; returns the Figure. Drawn on an Agg canvas: no display needed, and no pyplot global
    state in a training process."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = _panels(keys)
    fig = Figure(figsize=(7.0, 2.6 * max(1, len(panels))), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(panels)), 1, sharex=True, squeeze=False)[:, 0]
    banded = False
    for ax, (panel, group) in zip(axes, panels.items()):
        for key in group:
            rows = [h for h in history if key in h]
            if not rows:
                continue
            x = [h["iteration"] for h in rows]
            line, = ax.plot(x, [h[key] for h in rows], marker="o", markersize=3, label=key.removeprefix("eval_"),
                            linestyle="--" if _split(key)[0] != "train" else "-")
            bounds = [(h[key + "_lo"], h[key + "_hi"]) for h in rows if key + "_lo" in h]
            if len(bounds) == len(rows):
                ax.fill_between(x, *zip(*bounds), color=line.get_color(), alpha=0.18, linewidth=0)
                banded = True
        ax.set_ylabel(_TITLES.get(panel, panel))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncol=2 if len(group) > 4 else 1)
    axes[-1].set_xlabel("iteration")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    timed = [(h["iteration"], h["wall_s"]) for h in history if "wall_s" in h]
    if len(timed) >= 2 and all(b[0] > a[0] and b[1] > a[1] for a, b in zip(timed, timed[1:])):
        it, wall = (np.array(v, dtype=float) for v in zip(*timed))
        top = axes[0].secondary_xaxis("top", functions=(lambda i: _extrapolating(i, it, wall),
                                                        lambda s: _extrapolating(s, wall, it)))
        top.set_xlabel("wall time since the run started (s)")
    if banded:
        fig.suptitle("shaded: 95% confidence interval (t over per-prompt means)", fontsize="small")
    fig.savefig(path, dpi=100)
    return fig


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Replace the file with ``records``, atomically (a kill leaves the old log or the new one)."""
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in records))
