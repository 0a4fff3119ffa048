"""Data parallel on an existing engine: DDP (replicated weights) or FSDP2 (``fully_shard`` per transformer block,
then the root), the gradient-sync switch for accumulation, and whole state dicts for checkpoints (gathered from
the shards under FSDP; the LoRA adapter only under LoRA)."""
from __future__ import annotations

import contextlib

import torch
from torch import nn


def _is_fsdp(module: nn.Module) -> bool:
    return hasattr(module, "set_requires_gradient_sync")


def wrap(model: nn.Module, kind: str, world_size: int) -> nn.Module:
    """``model`` itself on one process; DDP or FSDP2 under torchrun (the process group must be initialised)."""
    if world_size <= 1:
        return model
    if kind == "fsdp":
        from torch.distributed.fsdp import fully_shard

        _broadcast(model)  # every rank starts from rank 0's weights, as DDP does
        from ..models.base import repeated_blocks

        for block in repeated_blocks(model):
            fully_shard(block)
        fully_shard(model)  # the rest: embeddings, norms, projections
        return model
    from torch.nn.parallel import DistributedDataParallel
    # A float8 base (model.base_fp8) is quantised on every rank from the same weights, so it is equal everywhere and
    # frozen: DDP neither broadcasts it (it cannot flatten torchao's tensors) nor reduces it.
    fp8 = [n for n, p in model.named_parameters() if type(p) is not nn.Parameter and not p.requires_grad]
    if fp8:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, fp8)
    # also broadcasts rank 0's weights; a model of experts runs one of them per step: the other's gradients are unused
    return DistributedDataParallel(model, find_unused_parameters=getattr(model, "experts", None) is not None)


def _broadcast(model: nn.Module) -> None:
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            torch.distributed.broadcast(tensor.data, src=0)


def no_sync(trained: nn.Module, world_size: int, skip: bool):
    """Skip the gradient reduction of this backward (accumulation), or not."""
    if world_size <= 1 or not skip:
        if _is_fsdp(trained):
            trained.set_requires_gradient_sync(True)
        return contextlib.nullcontext()
    if _is_fsdp(trained):
        trained.set_requires_gradient_sync(False)
        return contextlib.nullcontext()
    return trained.no_sync()


def full_weights(trained: nn.Module, model: nn.Module, lora: bool, all_ranks: bool = False) -> dict:
    """The checkpointed weights on CPU: every parameter and buffer, or the trainable (adapter) ones under LoRA.
    Under FSDP a collective: the whole state lands on rank 0 only (every rank with ``all_ranks``)."""
    if _is_fsdp(trained):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(trained, options=StateDictOptions(full_state_dict=True,
                                                                       cpu_offload=not all_ranks))
    else:
        state = model.state_dict()
    if lora:
        keep = {n for n, p in model.named_parameters() if p.requires_grad}
        state = {k: v for k, v in state.items() if k in keep}
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def load_weights(trained: nn.Module, model: nn.Module, state: dict, lora: bool) -> None:
    if _is_fsdp(trained):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(trained, state, options=StateDictOptions(full_state_dict=True, strict=not lora))
        return
    result = model.load_state_dict(state, strict=not lora)
    if lora and result.unexpected_keys:
        raise ValueError(f"unexpected adapter weights {result.unexpected_keys[:3]}")


def optimizer_state(trained: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    if _is_fsdp(trained):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(trained, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_optimizer_state(trained: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    if _is_fsdp(trained):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(trained, optimizer, state, options=StateDictOptions(full_state_dict=True))
        return
    optimizer.load_state_dict(state)


def checkpoint_group():
    """A gloo process group of every rank for background checkpoint writers (``dcp.async_save``): its collectives
    then never interleave with training's on the default group (torch's advice for async saving). None when this
    torch has no ``async_save`` (saves then block). A collective: every rank calls it, in the same order."""
    import logging

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    if not hasattr(dcp, "async_save"):
        logging.getLogger(__name__).warning("checkpoint_async: this torch has no torch.distributed.checkpoint."
                                            "async_save; sharded checkpoints are written before training goes on")
        return None
    return dist.new_group(backend="gloo")
