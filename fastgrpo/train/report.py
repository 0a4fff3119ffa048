"""Run outputs without plotting dependencies: a sample grid and a reward curve as PNGs (PIL), metrics as JSONL."""
from __future__ import annotations

import json
from pathlib import Path

import torch


def save_grid(images: torch.Tensor, path: Path, columns: int = 8, scale: int = 3) -> None:
    from PIL import Image

    images = images.detach().float().clamp(0, 1).cpu()
    n, _, h, w = images.shape
    rows = (n + columns - 1) // columns
    canvas = torch.zeros(3, rows * (h + 1), columns * (w + 1))
    for i in range(n):
        r, c = divmod(i, columns)
        canvas[:, r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = images[i]
    array = (canvas.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(array).resize((array.shape[1] * scale, array.shape[0] * scale), Image.NEAREST).save(path)


def save_curve(history: list[dict], keys: tuple[str, ...], path: Path, size=(480, 300)) -> None:
    """Lines of ``keys`` against the iteration, on a [0, 1] axis."""
    from PIL import Image, ImageDraw

    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = 40, 20, size[0] - 10, size[1] - 34
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    for y in (0.0, 0.5, 1.0):
        py = bottom - y * (bottom - top)
        draw.text((5, py - 6), f"{y:.1f}", fill=(0, 0, 0))
    its = [h["iteration"] for h in history]
    span = max(1, (max(its) - min(its)) if its else 1)
    for k, key in enumerate(keys):
        pts = [(left + (h["iteration"] - min(its)) / span * (right - left), bottom - h[key] * (bottom - top))
               for h in history if key in h]
        if len(pts) > 1:
            draw.line(pts, fill=colours[k % 4], width=2)
        label = key.removeprefix("eval_")
        draw.text((left + 5 + (k % 2) * 200, bottom + 4 + (k // 2) * 12), label, fill=colours[k % 4])
    img.save(path)


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
