"""Load open_clip ViT checkpoints (HPS-v2.1's ViT-H-14) into transformers' ``CLIPModel``, key by key.

open_clip's ``CLIP`` and transformers' ``CLIPModel`` compute the same network (pre-LN transformer blocks, class
token pooled after ``ln_post``, text pooled at the end-of-text token after ``ln_final``, bias-free projections,
log ``logit_scale``); only the names and two layouts differ:
- attention: one packed ``in_proj_weight`` (3w, w) = [W_q; W_k; W_v] → separate ``q_proj``/``k_proj``/``v_proj``;
- projections: open_clip multiplies ``x @ proj`` with proj (w, d); ``nn.Linear`` stores the transpose (d, w).
Features open_clip has and ``CLIPModel`` lacks (layer scale ``ls_1``, attention pooling, a text projection with a
bias, SigLIP's ``logit_bias``) leave keys unconsumed and raise.
"""
from __future__ import annotations

import re

import torch
from torch import Tensor

# open_clip → transformers names inside one residual block
_BLOCK = {
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}
_DIRECT = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
_IGNORED = {"attn_mask", "visual.attn_mask"}  # causal-mask buffers older open_clip versions saved
_TOWERS = (("visual.transformer.resblocks.", "vision_model.encoder.layers."),
           ("transformer.resblocks.", "text_model.encoder.layers."))


def open_clip_to_hf(state_dict: dict, config) -> dict:
    """An open_clip ViT ``CLIP`` state dict → a transformers ``CLIPModel`` state dict for ``config`` (CLIPConfig).

    Accepts a ``module.`` prefix (DDP checkpoints). Raises ValueError naming every open_clip key it cannot place,
    every ``CLIPModel`` weight left without a value, and every shape that does not fit ``config``.
    """
    from transformers import CLIPModel

    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    out: dict[str, Tensor] = {}
    unplaced = []
    for key, value in state.items():
        if key in _IGNORED:
            continue
        if key in _DIRECT:
            out[_DIRECT[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        else:
            for src, dst in _TOWERS:
                m = re.fullmatch(re.escape(src) + r"(\d+)\.(.+)", key)
                if m is None:
                    continue
                layer, rest = m.group(1), m.group(2)
                prefix = f"{dst}{layer}.self_attn."
                if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                    kind = "weight" if rest.endswith("weight") else "bias"
                    q, k, v = value.chunk(3, dim=0)
                    out[prefix + f"q_proj.{kind}"], out[prefix + f"k_proj.{kind}"] = q, k
                    out[prefix + f"v_proj.{kind}"] = v
                elif rest in _BLOCK:
                    out[f"{dst}{layer}.{_BLOCK[rest]}"] = value
                else:
                    unplaced.append(key)
                break
            else:
                unplaced.append(key)

    with torch.device("meta"):  # shapes only, no memory, no random init
        expected = {k: v.shape for k, v in CLIPModel(config).state_dict().items()}
    missing = sorted(set(expected) - set(out))
    extra = sorted(set(out) - set(expected))
    wrong = [f"{k}: {tuple(out[k].shape)} vs {tuple(expected[k])}" for k in sorted(set(out) & set(expected))
             if out[k].shape != expected[k]]
    problems = []
    if unplaced:
        problems.append(f"open_clip keys with no CLIPModel counterpart: {unplaced[:10]}")
    if extra:
        problems.append(f"mapped keys the config has no room for (more layers than the config?): {extra[:10]}")
    if missing:
        problems.append(f"CLIPModel weights the checkpoint does not provide: {missing[:10]}")
    if wrong:
        problems.append(f"shapes that do not fit the config: {wrong[:10]}")
    if problems:
        raise ValueError("open_clip checkpoint does not match the CLIPConfig: " + "; ".join(problems))
    return out


def clip_model_from_open_clip(state_dict: dict, config):
    """A ``CLIPModel`` (fp32, eval) holding an open_clip checkpoint; see ``open_clip_to_hf``."""
    from transformers import CLIPModel

    mapped = open_clip_to_hf(state_dict, config)
    model = CLIPModel(config)
    model.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=True)
    return model.eval().requires_grad_(False)
