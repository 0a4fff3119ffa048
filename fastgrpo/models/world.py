"""The embedded shapes world as a backbone (fastgrpo/world)."""
from __future__ import annotations

from torch import Tensor, nn

from ..world import World, shapes, velocity
from .base import Backbone, TextEmbeddings


class WorldBackbone(Backbone):
    def __init__(self, world: World):
        self.world = world
        self.transformer = world.transformer
        self.latent_shape = tuple(world.codec.latent_shape)
        # every prompt of the world (and the empty one) encoded now, in one fixed batch: the world's encoder
        # batches cache misses, and a batched matmul rounds by batch — embeddings must not depend on which
        # prompts a run happened to meet first (a resumed run would drift from the uninterrupted one)
        world.encode_prompts([shapes.prompt(c) for c in shapes.COMBOS] + [""])

    @classmethod
    def load(cls, path, device) -> "WorldBackbone":
        return cls(World.load(path, device))

    def encode_prompts(self, texts: list[str]) -> TextEmbeddings:
        return self.world.encode_prompts(texts)

    def velocity(self, transformer: nn.Module, latents: Tensor, sigma: Tensor, text: TextEmbeddings) -> Tensor:
        return velocity(transformer, latents, sigma, text)

    def decode(self, latents: Tensor) -> Tensor:
        return self.world.codec.decode(latents)
