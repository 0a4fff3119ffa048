"""``fastgrpo pretrain-world``: flow-matching pretraining of the shapes world (reproduces the shipped weights).

x_σ = (1 − σ)·x0 + σ·ε, σ ~ U(0, 1), target v = ε − x0, MSE; 10% of prompts dropped to "" so classifier-free
guidance works. The text encoder stays at its seeded random initialisation (frozen features that already
separate the 17 words); only the transformer trains.

Captions are noisy, as web alt-text is: with probability ``caption_noise`` an image's shape word names a shape
drawn uniformly from the training combinations of its colour and position (the image keeps its true shape; a
held-out combination's prompt never appears). The model so learns clean coloured shapes at the right
place but follows the shape word only part of the time — exact correctness starts in the 0.3–0.6 band, with
headroom that RL on the (clean) reward can take, as GRPO does for a real model's object confusions.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from . import World, WEIGHTS, shapes, velocity


def pretrain(out, steps: int = 2400, batch: int = 32, lr: float = 1e-3, seed: int = 0, log_every: int = 100,
             caption_noise: float = 0.1, replace_shipped: bool = False) -> World:
    """``steps`` AdamW steps with a cosine learning rate (deterministic for a seed on one machine and torch
    version; ~10 minutes on 2 CPU cores), written to ``out``. ``out`` has no default and may name the shipped
    weights only with ``replace_shipped``: every installed copy of fastgrpo loads those, so replacing them by
    accident silently changes every later run."""
    out = Path(out)
    if out.resolve() == WEIGHTS.resolve() and not replace_shipped:
        raise ValueError(f"out={str(out)!r} is the weights shipped in the package; name another file, or pass "
                         "replace_shipped=True (`--replace-shipped`) to overwrite them")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= caption_noise <= 1.0:
        raise ValueError(f"caption_noise must be in [0, 1], got {caption_noise}")
    torch.manual_seed(seed)
    world = World("cpu")
    gen = torch.Generator().manual_seed(seed)
    combos = torch.tensor(shapes.TRAIN)
    # the training shapes of each (colour, position): what a noisy caption may name
    options = torch.tensor([[s for s in range(len(shapes.SHAPES)) if (c, s, p) in shapes.TRAIN]
                            for c, _, p in shapes.TRAIN])
    opt = torch.optim.AdamW(world.transformer.parameters(), lr=lr, weight_decay=0.0)
    start, ema_loss = time.time(), None
    for step in range(1, steps + 1):
        pick = torch.randint(0, len(combos), (batch,), generator=gen)
        x0 = world.codec.encode(shapes.render(combos[pick], gen))
        drop = torch.rand(batch, generator=gen) < 0.1
        said = combos[pick].clone()  # what the caption says
        noisy = torch.rand(batch, generator=gen) < caption_noise
        choice = torch.randint(0, options.shape[1], (batch,), generator=gen)
        said[:, 1] = torch.where(noisy, options[pick, choice], said[:, 1])
        text = world.encode_prompts(["" if d else shapes.prompt(tuple(c)) for c, d in zip(said.tolist(),
                                                                                          drop.tolist())])
        sigma = torch.rand(batch, generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        s = sigma.view(-1, 1, 1, 1)
        v = velocity(world.transformer, (1 - s) * x0 + s * noise, sigma, text)
        loss = (v - (noise - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:  # cosine decay over the step budget
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / steps))
        opt.step()
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        if step % log_every == 0:
            print(f"step {step}: loss {ema_loss:.4f}", flush=True)
    world.save(out)
    print(f"pretrained {steps} steps in {(time.time() - start) / 60:.1f} min; wrote {out}")
    return world
