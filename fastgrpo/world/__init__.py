"""The embedded default world: a tiny SD3-class text-to-image flow model of coloured shapes that trains on a
2-core CPU in minutes, offline. Its pretrained weights ship in ``fastgrpo/world/weights/world.safetensors`` and
are reproduced by ``fastgrpo pretrain-world --replace-shipped`` (or ``--out FILE`` for a copy of your own)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from . import shapes
from .model import PixelCodec, PromptEncoder, TextEmbeddings, build_text_encoder, build_tokenizer, build_transformer

WEIGHTS = Path(__file__).parent / "weights" / "world.safetensors"

__all__ = ["World", "WEIGHTS", "shapes", "velocity", "TextEmbeddings"]


def velocity(transformer, latents: Tensor, sigma: Tensor, text: TextEmbeddings) -> Tensor:
    """v = f(x, σ) through the diffusers SD3 transformer (its timestep is σ·1000, as SD3 pipelines pass it)."""
    return transformer(hidden_states=latents, encoder_hidden_states=text.hidden, pooled_projections=text.pooled,
                       timestep=sigma * 1000.0, return_dict=False)[0]


class World:
    """Transformer, text encoder, tokenizer and codec of the shapes world."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.transformer = build_transformer().to(self.device)
        self.text_encoder = build_text_encoder()
        self.tokenizer = build_tokenizer()
        self.codec = PixelCodec()
        self.encode_prompts = PromptEncoder(self.tokenizer, self.text_encoder, self.device)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> "World":
        from safetensors.torch import load_file

        path = Path(path) if path is not None else WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"world weights not found at {path}; build them with `fastgrpo pretrain-world --out "
                                    f"{path}` (or `--replace-shipped` for the packaged file)")
        state = load_file(str(path))
        world = cls(device)
        for name, module in (("transformer", world.transformer), ("text_encoder", world.text_encoder)):
            prefix = name + "."
            part = {k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)}
            module.load_state_dict(part)
        world.encode_prompts = PromptEncoder(world.tokenizer, world.text_encoder, world.device)
        return world

    def save(self, path: str | os.PathLike, dtype: torch.dtype = torch.bfloat16) -> None:
        """Write both models' weights to one safetensors file, crash-safe (temp file, fsync, rename, fsync of the
        folder: a kill leaves the old file or the new one)."""
        from safetensors.torch import save

        from ..train.atomic import write_bytes

        state = {f"transformer.{k}": v.detach().to("cpu", dtype).contiguous()
                 for k, v in self.transformer.state_dict().items()}
        state.update({f"text_encoder.{k}": v.detach().to("cpu", dtype).contiguous()
                      for k, v in self.text_encoder.state_dict().items()})
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, save(state))
