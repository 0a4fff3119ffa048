"""The embedded world: 32×32 images of one coloured shape at a position, the prompts that describe them, a
programmatic reward, and an exact-correctness metric kept separate from the reward (to catch reward hacking).

Prompts: "a {colour} {shape} at the {position}" — 5 colours × 3 shapes × 5 positions = 75; a fixed held-out split
of combinations is never trained on. Reward (each part in [0, 1], averaged, times a foreground-presence factor):
colour (similarity of the foreground's mean colour to the target), position (Gaussian of the foreground
centroid's distance to the target), shape (softmax over the IoUs with all three candidate shapes placed at the
centroid — plain overlap with the target alone was seen to be hacked into rounded blobs).
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.25, 0.95),
           "yellow": (0.95, 0.9, 0.1), "white": (0.95, 0.95, 0.95)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {"left": (16.0, 8.0), "right": (16.0, 24.0), "top": (8.0, 16.0), "bottom": (24.0, 16.0),
             "center": (16.0, 16.0)}  # (row, col) centre of the shape
SIZE = 32
COMBOS = list(itertools.product(range(len(COLOURS)), range(len(SHAPES)), range(len(POSITIONS))))
HELD_OUT = [c for c in COMBOS if (c[0] + 2 * c[1] + 3 * c[2]) % 7 == 0]  # 10 combinations never trained
TRAIN = [c for c in COMBOS if c not in HELD_OUT]
_PALETTE = torch.tensor(list(COLOURS.values()))
_CENTRES = torch.tensor(list(POSITIONS.values()))


def prompt(combo: tuple[int, int, int]) -> str:
    c, s, p = combo
    return f"a {list(COLOURS)[c]} {SHAPES[s]} at the {list(POSITIONS)[p]}"


def shape_masks(shape: Tensor, centre: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """Binary masks (B, 32, 32) of shapes (B,) centred at ``centre`` (B, 2: row, col); ``scale`` ~ 1 (size)."""
    rows = torch.arange(SIZE, dtype=torch.float32).view(1, SIZE, 1)
    cols = torch.arange(SIZE, dtype=torch.float32).view(1, 1, SIZE)
    dr = rows - centre[:, 0].view(-1, 1, 1)
    dc = cols - centre[:, 1].view(-1, 1, 1)
    scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1, 1, 1)
    circle = dr ** 2 + dc ** 2 <= (6.0 * scale) ** 2
    square = (dr.abs() <= 5.5 * scale) & (dc.abs() <= 5.5 * scale)
    # upward triangle with its centroid at ``centre``: apex 8 rows above, base 4 rows below, as wide as tall
    triangle = (dr >= -8.0 * scale) & (dr <= 4.0 * scale) & (dc.abs() <= (dr + 8.0 * scale) / 2.0)
    stack = torch.stack([circle, square, triangle], 1)  # (B, 3, H, W)
    return stack[torch.arange(shape.numel()), shape.long()].float()


def render(combos: Tensor, generator: torch.Generator | None = None, jitter: bool = True) -> Tensor:
    """Images (B, 3, 32, 32) in [0, 1] for combos (B, 3) = (colour, shape, position); jitter position/size/colour."""
    b = combos.shape[0]
    centre = _CENTRES[combos[:, 2]].clone()
    scale = torch.ones(b)
    colour = _PALETTE[combos[:, 0]].clone()
    if jitter:
        centre += torch.randint(-1, 2, (b, 2), generator=generator).float()
        scale += 0.15 * (torch.rand(b, generator=generator) - 0.5)
        colour = (colour + 0.05 * torch.randn(b, 3, generator=generator)).clamp(0, 1)
    mask = shape_masks(combos[:, 1], centre, scale)
    return mask.unsqueeze(1) * colour.view(b, 3, 1, 1)


def _foreground(images: Tensor) -> Tensor:
    return torch.sigmoid((images.amax(1) - 0.3) * 20.0)  # (B, H, W) soft mask of lit pixels


def _centroid(fg: Tensor) -> tuple[Tensor, Tensor]:
    mass = fg.sum((1, 2)).clamp(min=1e-6)
    rows = torch.arange(SIZE, dtype=fg.dtype, device=fg.device)
    r = (fg.sum(2) * rows).sum(1) / mass
    c = (fg.sum(1) * rows).sum(1) / mass
    return torch.stack([r, c], 1), mass


def _shape_ious(fg: Tensor, centre: Tensor) -> Tensor:
    """IoU of the foreground with each candidate shape at ``centre``: (B, 3)."""
    ious = []
    for s in range(len(SHAPES)):
        m = shape_masks(torch.full((fg.shape[0],), s), centre.cpu()).to(fg.device)
        inter = (fg * m).sum((1, 2))
        union = (fg + m - fg * m).sum((1, 2)).clamp(min=1e-6)
        ious.append(inter / union)
    return torch.stack(ious, 1)


def reward(images: Tensor, combos: Tensor) -> Tensor:
    """Programmatic reward in [0, 1] per image (B,), see the module docstring."""
    images = images.float().clamp(0, 1)
    combos = combos.to(images.device)
    fg = _foreground(images)
    centre, mass = _centroid(fg)
    mean_colour = (images * fg.unsqueeze(1)).sum((2, 3)) / mass.unsqueeze(1)
    target = _PALETTE.to(images.device)[combos[:, 0]]
    colour = 1.0 - (mean_colour - target).norm(dim=1) / math.sqrt(3.0)
    dist = (centre - _CENTRES.to(images.device)[combos[:, 2]]).norm(dim=1)
    position = torch.exp(-dist ** 2 / (2 * 4.0 ** 2))
    shape = torch.softmax(10.0 * _shape_ious(fg, centre), 1).gather(1, combos[:, 1:2].long()).squeeze(1)
    presence = torch.clamp(mass / 40.0, max=1.0)  # an empty canvas earns nothing
    return presence * (colour + position + shape) / 3.0


def correct(images: Tensor, combos: Tensor) -> Tensor:
    """Exact correctness (B,) bool: nearest palette colour, nearest position and best-IoU shape all match, and the
    foreground is a plausible size (a single shape, not a blob filling the canvas or nothing)."""
    images = images.float().clamp(0, 1)
    combos = combos.to(images.device)
    fg = (images.amax(1) > 0.5).float()
    centre, mass = _centroid(fg)
    mean_colour = (images * fg.unsqueeze(1)).sum((2, 3)) / mass.unsqueeze(1)
    colour_ok = torch.cdist(mean_colour, _PALETTE.to(images.device)).argmin(1) == combos[:, 0]
    position_ok = torch.cdist(centre, _CENTRES.to(images.device)).argmin(1) == combos[:, 2]
    shape_ok = _shape_ious(fg, centre).argmax(1) == combos[:, 1]
    size_ok = (mass > 30) & (mass < 200)
    return colour_ok & position_ok & shape_ok & size_ok
