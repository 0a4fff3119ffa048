"""Several rewards at once: per-reward scores, the (B, K) matrix for ``fastgrpo.ops.group_advantages`` and the
weighted sum Σ_k w_k·r_k.

Two ways to combine them in GRPO: Flow-GRPO z-scores the weighted sum
(``group_advantages(out.matrix, ids, weights=multi.weight_tensor(), aggregate="sum_zscore")``, equivalently
``group_advantages(out.total, ids)``); DanceGRPO/MixGRPO z-score each reward, then weight
(``aggregate="zscore_sum"``, MixGRPO with ``normalize_weights=True``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .registry import build_reward


@dataclass
class MultiRewardOutput:
    scores: dict
    """name → (B,) float32 scores, in the order of the weights."""
    matrix: Tensor
    """(B, K) the scores stacked in that order."""
    total: Tensor
    """(B,) Σ_k w_k·r_k."""


class MultiReward(nn.Module):
    """``MultiReward({"pickscore": 1.0, "hpsv2": 0.5}, pickscore={"path": ...}, hpsv2={"path": ...})``.

    Each name is built with ``build_reward(name, **configs.get(name, {}))``; ``shared`` (e.g. batch_size,
    input_range, precision) is added to every reward's config. Config for a name not in ``weights`` is an error.
    """

    def __init__(self, weights: dict, *, shared: Optional[dict] = None, **configs):
        super().__init__()
        if not weights:
            raise ValueError("MultiReward needs at least one reward in weights")
        unused = sorted(set(configs) - set(weights))
        if unused:
            raise ValueError(f"configs given for rewards not in weights: {unused}; weights has {sorted(weights)}")
        self.names = list(weights)
        self.weights = {name: float(w) for name, w in weights.items()}
        self.rewards = nn.ModuleDict({
            name: build_reward(name, **{**(shared or {}), **configs.get(name, {})}) for name in self.names})

    def weight_tensor(self, device=None) -> Tensor:
        """(K,) weights in the order of ``matrix``'s columns, for ``group_advantages(weights=...)``."""
        return torch.tensor([self.weights[n] for n in self.names], dtype=torch.float32, device=device)

    def forward(self, images: Tensor, prompts: Optional[Sequence[str]] = None) -> MultiRewardOutput:
        scores = {name: self.rewards[name](images, prompts) for name in self.names}
        matrix = torch.stack([scores[n] for n in self.names], dim=1)
        total = matrix @ self.weight_tensor(matrix.device)
        return MultiRewardOutput(scores, matrix, total)
