"""The embedded world: 32×32 images of one coloured shape at a position, the prompts that describe them, a
programmatic reward, and an exact-correctness metric kept separate from the reward (to catch reward hacking).

Prompts: "a {colour} {shape} at the {position}" — 5 colours × 4 shapes × 5 positions = 100; a fixed held-out split
of 25 combinations (one shape per colour/position pair) is never trained on.

Shapes are told apart by their masks: bar (horizontal), pillar (vertical), triangle (apex up) and wedge (apex
down) overlap pairwise with IoU ≤ ``MAX_IOU`` (0.6) when centred on the same point (a circle and a square at this
size reached 0.87, so shape was invisible to the reward and to the metric). ``check_shapes`` enforces the bound when the module is imported: a world whose classes
overlap more is rejected with the offending pair named.

Reward (``components`` → ``reward``, each component in [0, 1], their product is the reward):

* presence = min(1, foreground mass / 30 px) — an empty canvas earns nothing;
* colour = exp(−max(0, d − 0.3)²/(2·0.1²)), d = distance of the bright pixels' mean colour to the target colour
  (palette colours are ≥ 0.8 apart, so within 0.3 is unambiguous);
* position = exp(−max(0, r − 2)²/(2·2²)), r = distance (px) of the foreground centroid to the target position;
* shape = sigmoid((m − 0.1)/0.04), m = IoU(target shape) − max IoU(other shapes and a filled-disk distractor),
  every mask placed at the foreground centroid — a margin against the other classes, so a blob that half-matches
  every shape (m ≤ 0) scores < 0.1 (plain overlap with the target alone was hacked into rounded blobs).

Colour and position saturate at 1 inside the rendering jitter, so once right they stop paying: the reward is ≈ 1
for a correct render and climbs only with what ``correct`` checks. A correct render is one whose nearest palette
colour, nearest position and best-IoU shape (distractor included; by a margin ≥ 0.1, target IoU ≥ 0.5) all match, with a single-shape
foreground size.
"""
from __future__ import annotations

import itertools
import zlib
from typing import Callable

import torch
from torch import Tensor

COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.25, 0.95),
           "yellow": (0.95, 0.9, 0.1), "white": (0.95, 0.95, 0.95)}
POSITIONS = {"left": (16.0, 8.0), "right": (16.0, 24.0), "top": (8.0, 16.0), "bottom": (24.0, 16.0),
             "center": (16.0, 16.0)}  # (row, col) of the shape's centroid
SIZE = 32
MAX_IOU = 0.6
"""Largest mask IoU allowed between two shape classes centred on the same point."""

MaskFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""(dr, dc, scale) → bool mask: dr, dc are row/column offsets from the centroid, scale ~ 1 is the size."""


# Filled shapes with 5-px strokes: the model sees 4×4-pixel patches (pixel-unshuffle 2, patch 2), and after the
# pretraining budget it drew hollow frames, thin crosses and 3-px rings as blobs or speckle (correct 0.00–0.01)
# while it drew filled bars and triangles. Half-widths like 2.5 keep a stroke's pixel count fixed over the ±7.5%
# size jitter.
def _bar(dr, dc, k):
    return (dr.abs() <= 2.5 * k) & (dc.abs() <= 9.5 * k)


def _pillar(dr, dc, k):
    return _bar(dc, dr, k)


def _triangle(dr, dc, k):
    # apex up, base 13 rows below it; shifted 0.25 px up so its centroid sits on the centre
    dr = dr + 0.25 * k
    return (dr >= -8.0 * k) & (dr <= 5.0 * k) & (dc.abs() <= (dr + 8.0 * k) * 0.6)


def _wedge(dr, dc, k):
    return _triangle(-dr, dc, k)  # apex down


def _disk(dr, dc, k):
    return dr ** 2 + dc ** 2 <= (7.5 * k) ** 2


SHAPE_MASKS: dict[str, MaskFn] = {"bar": _bar, "pillar": _pillar, "triangle": _triangle, "wedge": _wedge}
SHAPES = tuple(SHAPE_MASKS)
DISTRACTORS: dict[str, MaskFn] = {"disk": _disk}
"""Never prompted, but scored against: a filled disk (the blob that half-matches every shape) wins the IoU
comparison over a shape that has been rounded off, so it earns no shape margin."""


def pairwise_iou(masks: dict[str, MaskFn] = SHAPE_MASKS) -> dict[tuple[str, str], float]:
    """Mask IoU of every pair of classes, both drawn at scale 1 centred on the canvas centre."""
    grid = _offsets(torch.tensor([[SIZE / 2, SIZE / 2]]))
    drawn = {name: fn(*grid, torch.ones(1, 1, 1)).float() for name, fn in masks.items()}
    return {(a, b): ((drawn[a] * drawn[b]).sum() / ((drawn[a] + drawn[b]) > 0).sum()).item()
            for a, b in itertools.combinations(drawn, 2)}


def check_shapes(masks: dict[str, MaskFn] = SHAPE_MASKS, bound: float = MAX_IOU) -> None:
    """Raise ValueError if two shape classes overlap with mask IoU above ``bound`` (indistinguishable at SIZE)."""
    for (a, b), iou in pairwise_iou(masks).items():
        if iou > bound:
            raise ValueError(f"shapes {a!r} and {b!r} overlap with mask IoU {iou:.2f} > {bound} at {SIZE}×{SIZE}: "
                             "the reward and the correctness metric could not tell them apart; make them more "
                             "distinct (or the canvas larger)")


def _offsets(centre: Tensor) -> tuple[Tensor, Tensor]:
    rows = torch.arange(SIZE, dtype=torch.float32, device=centre.device).view(1, SIZE, 1)
    cols = torch.arange(SIZE, dtype=torch.float32, device=centre.device).view(1, 1, SIZE)
    return rows - centre[:, 0].view(-1, 1, 1), cols - centre[:, 1].view(-1, 1, 1)


check_shapes()

COMBOS = list(itertools.product(range(len(COLOURS)), range(len(SHAPES)), range(len(POSITIONS))))
HELD_OUT = [c for c in COMBOS if (c[0] + c[1] + 2 * c[2]) % 4 == 0]  # 25: one shape per (colour, position)
TRAIN = [c for c in COMBOS if c not in HELD_OUT]
_PALETTE = torch.tensor(list(COLOURS.values()))
_CENTRES = torch.tensor(list(POSITIONS.values()))


def prompt(combo: tuple[int, int, int]) -> str:
    c, s, p = combo
    return f"a {list(COLOURS)[c]} {SHAPES[s]} at the {list(POSITIONS)[p]}"


def all_shape_masks(centre: Tensor, scale: Tensor | float = 1.0, distractors: bool = False) -> Tensor:
    """Masks (B, n_shapes [+ n_distractors], 32, 32) of every class centred at ``centre`` (B, 2: row, col)."""
    dr, dc = _offsets(centre.float())
    scale = torch.as_tensor(scale, dtype=torch.float32, device=centre.device).reshape(-1, 1, 1)
    fns = [*SHAPE_MASKS.values(), *(DISTRACTORS.values() if distractors else ())]
    return torch.stack([fn(dr, dc, scale) for fn in fns], 1).float()


def shape_masks(shape: Tensor, centre: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """Binary masks (B, 32, 32) of shapes (B,) centred at ``centre`` (B, 2: row, col); ``scale`` ~ 1 (size)."""
    stack = all_shape_masks(centre, scale)
    return stack[torch.arange(shape.numel()), shape.long().to(stack.device)]


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


def _centroid(fg: Tensor) -> tuple[Tensor, Tensor]:
    mass = fg.sum((1, 2)).clamp(min=1e-6)
    rows = torch.arange(SIZE, dtype=fg.dtype, device=fg.device)
    r = (fg.sum(2) * rows).sum(1) / mass
    c = (fg.sum(1) * rows).sum(1) / mass
    return torch.stack([r, c], 1), mass


def shape_ious(fg: Tensor, centre: Tensor) -> Tensor:
    """IoU of a (soft) foreground (B, H, W) with each class, then each distractor, placed at ``centre`` (B, 2):
    (B, n_shapes + n_distractors)."""
    m = all_shape_masks(centre.to(fg.device), distractors=True)
    fg = fg.unsqueeze(1)
    inter = (fg * m).sum((2, 3))
    union = (fg + m - fg * m).sum((2, 3)).clamp(min=1e-6)
    return inter / union


def _margin(ious: Tensor, shape: Tensor) -> Tensor:
    """IoU of the target class minus the best IoU among the other classes and the distractors."""
    target = ious.gather(1, shape.view(-1, 1)).squeeze(1)
    others = ious.scatter(1, shape.view(-1, 1), float("-inf")).amax(1)
    return target - others


def components(images: Tensor, combos: Tensor) -> dict[str, Tensor]:
    """Per-sample reward components (B,) each in [0, 1]: presence, colour, position, shape (see the module
    docstring); ``reward`` is their product."""
    images = images.float().clamp(0, 1)
    combos = combos.to(images.device).long()
    fg = torch.sigmoid((images.amax(1) - 0.3) * 20.0)  # soft mask of lit pixels
    centre, mass = _centroid(fg)
    # colour of the bright pixels only: the dim fringe a flow model leaves around a shape would otherwise pull the
    # mean towards black, and RL would spend itself polishing colour (seen: colour +0.16, shape +0.01)
    core = torch.sigmoid((images.amax(1) - 0.5) * 20.0).unsqueeze(1)
    mean_colour = (images * core).sum((2, 3)) / core.sum((2, 3)).clamp(min=1e-6)
    colour_err = (mean_colour - _PALETTE.to(images.device)[combos[:, 0]]).norm(dim=1)
    dist = (centre - _CENTRES.to(images.device)[combos[:, 2]]).norm(dim=1)
    margin = _margin(shape_ious(fg, centre), combos[:, 1])
    return {"presence": (mass / 30.0).clamp(max=1.0),
            "colour": torch.exp(-(colour_err - 0.3).clamp(min=0) ** 2 / (2 * 0.1 ** 2)),
            "position": torch.exp(-(dist - 2.0).clamp(min=0) ** 2 / (2 * 2.0 ** 2)),
            "shape": torch.sigmoid((margin - 0.1) / 0.04)}


def reward(images: Tensor, combos: Tensor) -> Tensor:
    """Programmatic reward in [0, 1] per image (B,): the product of ``components``."""
    parts = components(images, combos)
    return parts["presence"] * parts["colour"] * parts["position"] * parts["shape"]


def random_reward(images: Tensor, combos: Tensor) -> Tensor:
    """The control reward (``reward.names=[world_random]``): U(0, 1) per image, independent of what it shows and
    of the prompt. Seeded by a checksum of the images, so a run (and its resume) reproduces it."""
    data = images.detach().float().cpu().contiguous().numpy().tobytes()
    gen = torch.Generator().manual_seed(zlib.crc32(data))
    return torch.rand(images.shape[0], generator=gen).to(images.device)


def correct(images: Tensor, combos: Tensor) -> Tensor:
    """Exact correctness (B,) bool: nearest palette colour, nearest position and best-IoU shape (target IoU ≥ 0.5,
    ahead of every other class by ≥ 0.1) all match, and the foreground is a plausible size (a single shape, not a
    blob filling the canvas or nothing)."""
    images = images.float().clamp(0, 1)
    combos = combos.to(images.device).long()
    fg = (images.amax(1) > 0.5).float()
    centre, mass = _centroid(fg)
    mean_colour = (images * fg.unsqueeze(1)).sum((2, 3)) / mass.unsqueeze(1)
    colour_ok = torch.cdist(mean_colour, _PALETTE.to(images.device)).argmin(1) == combos[:, 0]
    position_ok = torch.cdist(centre, _CENTRES.to(images.device)).argmin(1) == combos[:, 2]
    ious = shape_ious(fg, centre)
    target = ious.gather(1, combos[:, 1:2]).squeeze(1)
    shape_ok = (target >= 0.5) & (_margin(ious, combos[:, 1]) >= 0.1)
    size_ok = (mass > 30) & (mass < 260)
    return colour_ok & position_ok & shape_ok & size_ok
