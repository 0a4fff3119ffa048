"""What the policy is trained for: the prompts (training / evaluation) and the reward of decoded images.

* ``WorldTask``: the shapes world's prompts (training and held-out combinations), its programmatic reward, and
  the exact-correctness metric at evaluation;
* ``PromptTask``: prompts from text files and registered reward models (``fastgrpo.rewards``), one or several
  with weights — the real-model path.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor


@dataclass
class Prompts:
    texts: list[str]
    meta: Optional[Tensor] = None
    """Per-prompt task data (the world: (n, 3) colour/shape/position ids)."""

    def take(self, index) -> "Prompts":
        index = [int(i) for i in (index.tolist() if isinstance(index, Tensor) else index)]
        return Prompts([self.texts[i] for i in index], None if self.meta is None else self.meta[index])

    def repeat(self, times: int) -> "Prompts":
        """Each prompt ``times`` times in a row (a group's targets)."""
        return Prompts([t for t in self.texts for _ in range(times)],
                       None if self.meta is None else self.meta.repeat_interleave(times, 0))

    def __len__(self) -> int:
        return len(self.texts)

    @staticmethod
    def cat(parts: list["Prompts"]) -> "Prompts":
        """The prompts of ``parts``, one after another."""
        metas = [p.meta for p in parts]
        return Prompts([t for p in parts for t in p.texts],
                       None if any(m is None for m in metas) else torch.cat(metas))


class WorldTask:
    """``random_reward``: train on ``shapes.random_reward`` (the control); metrics keep the real reward."""
    has_correctness = True

    def __init__(self, random_reward: bool = False):
        from ..world import shapes

        self.shapes = shapes
        self._train_reward = shapes.random_reward if random_reward else shapes.reward
        self.train = self._prompts(shapes.TRAIN)
        self.heldout = self._prompts(shapes.HELD_OUT)
        self.evaluation = {"train": self.train, "heldout": self.heldout}

    def _prompts(self, combos) -> Prompts:
        combos = torch.tensor(combos)
        return Prompts([self.shapes.prompt(tuple(c)) for c in combos.tolist()], combos)

    def reward(self, images: Tensor, prompts: Prompts) -> Tensor:
        return self._train_reward(images, prompts.meta.to(images.device))

    def groups(self, prompts: Prompts) -> dict[str, Tensor]:
        """The prompts of each shape (bool masks, one per class): where a gain or a failure sits."""
        return {name: prompts.meta[:, 1] == i for i, name in enumerate(self.shapes.SHAPES)}

    def scores(self, images: Tensor, prompts: Prompts) -> dict[str, Tensor]:
        """Per-sample evaluation scores (B,): the world's reward, each of its components, exact correctness (0/1)."""
        combos = prompts.meta.to(images.device)
        return {"reward": self.shapes.reward(images, combos), **self.shapes.components(images, combos),
                "correct": self.shapes.correct(images, combos).float()}


def read_prompts(path: str, key: str) -> list[str]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{key}={path!r} is not a file; it must be a text file with one prompt per line")
    texts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"{key}={path!r} holds no prompts (one per line)")
    return texts


class PromptTask:
    has_correctness = False

    def __init__(self, train: list[str], evaluation: list[str], scorer, weights: list[float], names: list[str]):
        self.train = Prompts(train)
        self.evaluation = {"train": Prompts(evaluation)}
        self.scorer = scorer
        self.names = names
        self.weights = torch.tensor(weights, dtype=torch.float32)

    @classmethod
    def from_config(cls, cfg, device) -> "PromptTask":
        from ..rewards import MultiReward

        train = read_prompts(cfg.data.train_prompts, "data.train_prompts")
        evaluation = (read_prompts(cfg.data.eval_prompts, "data.eval_prompts") if cfg.data.eval_prompts
                      else train[:cfg.data.eval_count])
        names = cfg.reward.names
        weights = cfg.reward.weights or [1.0] * len(names)
        configs = {n: {"path": path} for n, path in cfg.reward.paths.items()}
        scorer = MultiReward(dict(zip(names, weights)), shared={"batch_size": cfg.reward.batch_size}, **configs)
        return cls(train, evaluation, scorer.to(device).eval(), weights, names)

    def reward_matrix(self, images: Tensor, prompts: Prompts) -> Tensor:
        """(B, K) per-reward scores."""
        return self.scorer(images, prompts.texts).matrix

    def reward(self, images: Tensor, prompts: Prompts) -> Tensor:
        return self.reward_matrix(images, prompts) @ self.weights.to(images.device)

    def groups(self, prompts: Prompts) -> dict[str, Tensor]:
        """No groups: free-text prompts have no classes to break the evaluation down by."""
        return {}

    def scores(self, images: Tensor, prompts: Prompts) -> dict[str, Tensor]:
        """Per-sample evaluation scores (B,): the weighted reward, and each reward of several."""
        matrix = self.reward_matrix(images, prompts)
        out = {"reward": matrix @ self.weights.to(matrix.device)}
        if len(self.names) > 1:
            out.update({f"reward_{n}": matrix[:, k] for k, n in enumerate(self.names)})
        return out


def build_task(cfg, device):
    if cfg.model.kind == "world":
        return WorldTask(random_reward=cfg.reward.names == ["world_random"])
    return PromptTask.from_config(cfg, device)
