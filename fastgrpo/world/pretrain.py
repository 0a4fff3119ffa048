"""``fastgrpo pretrain-world``: flow-matching pretraining of the shapes world (reproduces the shipped weights).

x_σ = (1 − σ)·x0 + σ·ε, σ ~ U(0, 1), target v = ε − x0, MSE; 10% of prompts dropped to "" so classifier-free
guidance works. The text encoder stays at its seeded random initialisation (frozen features that already
separate the 17 words); only the transformer trains.

Two stages, each AdamW with a cosine learning rate and its own seed:

1. **Drawing** (``steps``, lr ``lr``, caption noise ``caption_noise`` = 0.1): the model learns to draw every
   colour, shape and position cleanly (trained alone, 4800 steps give exact correctness ≈ 0.9; half of that
   leaves the diagonal shapes too rough for the correctness check, and then RL cannot lift it).
2. **Confusion** (``confusion_steps``, lr ``confusion_lr``, caption noise ``confusion_noise`` = 0.45): captions
   turn noisy, as web alt-text is — with probability p an image's shape word names a shape drawn uniformly from
   the training combinations of its colour and position (the image keeps its true shape; a held-out
   combination's prompt never appears). A model that fits this follows the shape word with probability
   1 − p + p/3 = 0.7 and draws one of the other two shapes otherwise: it errs in its *choice* of shape, the
   headroom that RL on the (clean) reward takes quickly, as GRPO does for a real model's object confusions.
   Noisy captions from the start (e.g. 0.4 for 4800 steps) also roughen the drawing, which RL then lifts slowly.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from . import World, WEIGHTS, shapes, velocity


_COMBOS = torch.tensor(shapes.TRAIN)
_OPTIONS = torch.tensor([[s for s in range(len(shapes.SHAPES)) if (c, s, p) in shapes.TRAIN]
                         for c, _, p in shapes.TRAIN])
"""Row i: the training shapes of ``shapes.TRAIN[i]``'s colour and position — what a noisy caption may name."""


def noisy_captions(pick: torch.Tensor, caption_noise: float, gen: torch.Generator) -> torch.Tensor:
    """What the captions of ``shapes.TRAIN[pick]`` say, (N, 3) (colour, shape, position): with probability
    ``caption_noise`` the shape is replaced by one drawn uniformly from the training shapes of the same colour and
    position (possibly the true one), so a held-out combination is never named."""
    said = _COMBOS[pick].clone()
    noisy = torch.rand(len(pick), generator=gen) < caption_noise
    choice = torch.randint(0, _OPTIONS.shape[1], (len(pick),), generator=gen)
    said[:, 1] = torch.where(noisy, _OPTIONS[pick, choice], said[:, 1])
    return said


def _stage(world: World, steps: int, lr: float, caption_noise: float, seed: int, batch: int, log_every: int,
           name: str) -> None:
    """``steps`` AdamW steps of the flow-matching loss on rendered shapes with noisy captions, in place."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(world.transformer.parameters(), lr=lr, weight_decay=0.0)
    ema_loss = None
    for step in range(1, steps + 1):
        pick = torch.randint(0, len(_COMBOS), (batch,), generator=gen)
        x0 = world.codec.encode(shapes.render(_COMBOS[pick], gen))
        drop = torch.rand(batch, generator=gen) < 0.1
        said = noisy_captions(pick, caption_noise, gen)
        text = world.encode_prompts(["" if d else shapes.prompt(tuple(c)) for c, d in zip(said.tolist(),
                                                                                          drop.tolist())])
        sigma = torch.rand(batch, generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        s = sigma.view(-1, 1, 1, 1)
        v = velocity(world.transformer, (1 - s) * x0 + s * noise, sigma, text)
        loss = (v - (noise - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:  # cosine decay over the stage's step budget
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / steps))
        opt.step()
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        if step % log_every == 0 or step == steps:
            print(f"{name} step {step}/{steps}: loss {ema_loss:.4f}", flush=True)


def pretrain(out, steps: int = 4800, confusion_steps: int = 1200, batch: int = 32, lr: float = 1e-3,
             confusion_lr: float = 3e-4, caption_noise: float = 0.1, confusion_noise: float = 0.45, seed: int = 0,
             log_every: int = 300, replace_shipped: bool = False) -> World:
    """The two stages (drawing, then confusion; seeds ``seed`` and ``seed + 1``), written to ``out``:
    deterministic for a seed on one machine, torch version and thread count; 16.5 minutes on an idle 2-core CPU.
    ``out`` has no default and may name the shipped weights only with ``replace_shipped``: every installed
    copy of fastgrpo loads those, so replacing them by accident silently changes every later run."""
    out = Path(out)
    if out.resolve() == WEIGHTS.resolve() and not replace_shipped:
        raise ValueError(f"out={str(out)!r} is the weights shipped in the package; name another file, or pass "
                         "replace_shipped=True (`--replace-shipped`) to overwrite them")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if confusion_steps < 0:
        raise ValueError(f"confusion_steps must be >= 0, got {confusion_steps}")
    for key, p in (("caption_noise", caption_noise), ("confusion_noise", confusion_noise)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{key} must be in [0, 1], got {p}")
    torch.manual_seed(seed)
    world = World("cpu")
    start = time.time()
    _stage(world, steps, lr, caption_noise, seed, batch, log_every, "drawing")
    if confusion_steps:
        _stage(world, confusion_steps, confusion_lr, confusion_noise, seed + 1, batch, log_every, "confusion")
    world.save(out)
    print(f"pretrained {steps} + {confusion_steps} steps in {(time.time() - start) / 60:.1f} min; wrote {out}")
    return world
