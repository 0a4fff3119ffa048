"""LoRA through peft on a diffusers transformer: add the adapter, its trainable state, and the adapter-free
reference (Flow-GRPO's KL reference is the base model: the same module with the adapter disabled — no copy)."""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn


def add_lora(transformer: nn.Module, rank: int, alpha: float, targets: list[str]) -> nn.Module:
    """Freeze the base weights and add a LoRA adapter (rank, alpha, target module names) — only it trains."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise ImportError("model.lora_rank > 0 needs peft: pip install 'fastgrpo[train]'") from None
    names = [n for n, _ in transformer.named_modules()]
    if not any(n == t or n.endswith("." + t) for t in targets for n in names):  # peft's suffix match
        raise ValueError(f"model.lora_targets={','.join(targets)!r} matches no module of the transformer "
                         "(e.g. to_q,to_k,to_v,to_out.0)")
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                       target_modules=list(targets)))
    for name, param in transformer.named_parameters():  # adapters train in fp32 whatever the base dtype
        if param.requires_grad:
            param.data = param.data.float()
    return transformer


def has_lora(transformer: nn.Module) -> bool:
    return bool(getattr(transformer, "_hf_peft_config_loaded", False))


@contextmanager
def adapters_disabled(transformer: nn.Module):
    """The base model: LoRA adapters off inside the block."""
    transformer.disable_adapters()
    try:
        yield transformer
    finally:
        transformer.enable_adapters()

