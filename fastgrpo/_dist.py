"""torch.distributed state, read without assuming it is initialised."""
from __future__ import annotations

import torch


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def world_size() -> int:
    return rank_and_world()[1]
