"""The attention kernel of the transformer (``model.attention_backend``), through diffusers' attention dispatcher.

Every backbone is a diffusers transformer (the world and SD3/SD3.5: ``SD3Transformer2DModel``; FLUX.1, FLUX.2,
Qwen-Image, Z-Image and Wan: their own, whose processors go through the dispatcher). Joint attention is the same
math whichever kernel computes it: the image and text tokens' queries, keys and values (after the per-head RMS
norms) are concatenated along the sequence and

    O = softmax(Q Kᵀ / √d) V,    Q, K, V ∈ R^{B × (N_img + N_txt) × H × d},

then split back into the image and text streams. The backends differ only in how O is computed (tiling, precision of
the softmax accumulators, which device): ``native`` is PyTorch's ``scaled_dot_product_attention``, which picks
FlashAttention-2 / memory-efficient / cuDNN / math itself; the others force one kernel or call an external library.

FLUX's processors already go through ``diffusers.models.attention_dispatch.dispatch_attention_fn`` and take a
per-processor backend. SD3's ``JointAttnProcessor2_0`` calls SDPA directly and ignores diffusers'
``set_attention_backend``; for any backend but ``native`` it is replaced by :class:`DispatchJointAttnProcessor`
(below: the same math, the kernel chosen by the dispatcher). ``native`` keeps the stock processors — it is what they
compute — so the default path is diffusers' own.

Hub-downloaded kernels (diffusers' ``*_hub`` backends) are not offered: nothing is downloaded at run time. The
external kernels are not package extras (the lock resolves every extra; xformers pins its own CUDA torch and
SageAttention 2 is not on PyPI): an error names the command that installs each.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    dispatch: str
    """diffusers' ``AttentionBackendName`` value."""
    what: str
    module: str | None = None
    """The Python package it needs (None: torch alone)."""
    install: str | None = None
    """How to get that package."""
    cuda: bool = False
    """Runs on CUDA devices only."""
    half: bool = False
    """Computes in float16 / bfloat16 only (a float32 model needs ``model.autocast``)."""


BACKENDS: dict[str, Backend] = {
    "native": Backend("native", "torch scaled_dot_product_attention (picks flash / efficient / cuDNN / math)"),
    "native_math": Backend("_native_math", "torch SDPA, math kernel only (float32-accurate softmax, most memory)"),
    "native_flash": Backend("_native_flash", "torch SDPA, FlashAttention-2 kernel only", cuda=True, half=True),
    "native_efficient": Backend("_native_efficient", "torch SDPA, memory-efficient kernel only", cuda=True),
    "native_cudnn": Backend("_native_cudnn", "torch SDPA, cuDNN kernel only", cuda=True, half=True),
    "flex": Backend("flex", "torch FlexAttention (no backward on CPU in torch)", cuda=True),
    "flash": Backend("flash", "FlashAttention-2 (flash-attn)", "flash_attn",
                     "pip install 'flash-attn>=2.6.3' --no-build-isolation",
                     cuda=True, half=True),
    "flash3": Backend("_flash_3", "FlashAttention-3 (Hopper)", "flash_attn_interface",
                      "build FlashAttention-3 from its repository's hopper/ folder", cuda=True, half=True),
    "sage": Backend("sage", "SageAttention (INT8 QK, FP16/FP8 PV)", "sageattention",
                    "build SageAttention >= 2.1.1 from its repository (pip install . --no-build-isolation)",
                    cuda=True, half=True),
    "xformers": Backend("xformers", "xFormers memory_efficient_attention", "xformers",
                        "pip install 'xformers>=0.0.29' matching the installed torch", cuda=True),
}
"""``model.attention_backend`` → the dispatcher's backend, what it is, and what it needs."""


def check_backend(name: str, device: torch.device, dtype: torch.dtype | None = None) -> Backend:
    """The backend ``name``, or an error naming ``model.attention_backend``, the backend and what it lacks: the
    device, the precision (``dtype``: what the attention computes in; None: not checked) or its package."""
    if name not in BACKENDS:
        raise ValueError(f"model.attention_backend={name!r}: not one of {sorted(BACKENDS)}")
    backend = BACKENDS[name]
    if backend.cuda and device.type != "cuda":
        raise RuntimeError(f"model.attention_backend={name!r} ({backend.what}) runs on CUDA only, and device is "
                           f"{str(device)!r}; use native or native_math there")
    if backend.half and dtype is not None and dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError(f"model.attention_backend={name!r} ({backend.what}) computes in float16 / bfloat16 only, "
                           f"and this model's attention runs in {dtype}: set model.autocast=true (bfloat16), or "
                           "use native, native_efficient or xformers")
    if backend.module is not None and importlib.util.find_spec(backend.module) is None:
        raise RuntimeError(f"model.attention_backend={name!r} ({backend.what}) needs the Python package "
                           f"{backend.module!r}, which is not installed: {backend.install}")
    from diffusers.models import attention_dispatch

    check = getattr(attention_dispatch, "_check_attention_backend_requirements", None)  # private: may move
    try:  # diffusers' own version checks (e.g. flash-attn too old)
        if check is not None:
            check(attention_dispatch.AttentionBackendName(backend.dispatch))
    except RuntimeError as err:
        raise RuntimeError(f"model.attention_backend={name!r}: {err} ({backend.install or 'a newer torch'})") from err
    return backend


class DispatchJointAttnProcessor:
    """SD3's joint attention (``JointAttnProcessor2_0``'s math) with the kernel chosen by diffusers' dispatcher:
    ``_attention_backend`` as diffusers' own dispatching processors name it. Tensors stay (batch, sequence, heads,
    head_dim), the dispatcher's layout — no transposes around the kernel."""

    _attention_backend = None
    _parallel_config = None

    def __init__(self, backend=None):
        self._attention_backend = backend

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args, **kwargs):
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        batch, n_image = hidden_states.shape[:2]

        def heads(x):
            return x.unflatten(-1, (attn.heads, -1))

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if encoder_hidden_states is not None:
            tq = heads(attn.add_q_proj(encoder_hidden_states))
            tk = heads(attn.add_k_proj(encoder_hidden_states))
            tv = heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                tq = attn.norm_added_q(tq)
            if attn.norm_added_k is not None:
                tk = attn.norm_added_k(tk)
            q, k, v = torch.cat([q, tq], dim=1), torch.cat([k, tk], dim=1), torch.cat([v, tv], dim=1)
        out = dispatch_attention_fn(q, k, v, backend=self._attention_backend).flatten(2, 3).to(q.dtype)
        image = attn.to_out[1](attn.to_out[0](out[:, :n_image]))
        if encoder_hidden_states is None:
            return image
        text = out[:, n_image:]
        if not attn.context_pre_only:
            text = attn.to_add_out(text)
        return image, text


def attention_dtype(transformer: nn.Module, autocast: bool) -> torch.dtype | None:
    """The precision the attention kernels see: bfloat16 under ``model.autocast``, else the dtype of the query
    projection's (base) weight — a LoRA adapter adds in its base layer's dtype; None when that is not a plain
    float dtype (a float8 base) or there is no attention."""
    if autocast:
        return torch.bfloat16
    for module in transformer.modules():
        to_q = getattr(module, "to_q", None)
        if getattr(module, "processor", None) is not None and to_q is not None:
            dtype = getattr(to_q, "base_layer", to_q).weight.dtype
            return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32) else None
    return None


def set_attention_backend(transformer: nn.Module, name: str, device: torch.device,
                          dtype: torch.dtype | None = None) -> str:
    """Route every attention module of ``transformer`` to backend ``name`` (checked first: :func:`check_backend`,
    ``dtype`` the precision the attention computes in); a one-line description of the choice, also logged."""
    backend = check_backend(name, device, dtype)
    from diffusers.models.attention_dispatch import AttentionBackendName
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    target = AttentionBackendName(backend.dispatch)
    routed = replaced = 0
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is None:
            continue
        if isinstance(processor, DispatchJointAttnProcessor) and name == "native":
            module.set_processor(JointAttnProcessor2_0())  # back to the stock processor
            processor = module.processor
        if isinstance(processor, JointAttnProcessor2_0):
            if name != "native":  # the stock processor is SDPA itself
                module.set_processor(DispatchJointAttnProcessor(target))
                replaced += 1
            routed += 1
        elif hasattr(processor, "_attention_backend"):
            processor._attention_backend = target
            routed += 1
        else:
            raise ValueError(f"model.attention_backend={name!r}: {type(module).__name__} uses "
                             f"{type(processor).__name__}, which does not go through diffusers' dispatcher")
    text = (f"attention: {name} — {backend.what}; {routed} attention modules"
            + (f" ({replaced} SD3 joint processors replaced by fastgrpo's dispatching one)" if replaced else ""))
    log.info(text)
    return text
