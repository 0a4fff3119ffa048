"""The backbone interface the trainer uses, and the bounded text-embedding cache the real pipelines share."""
from __future__ import annotations

import functools
import gc
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..world.model import TextEmbeddings

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks", "layers", "blocks")
"""The repeated blocks of the diffusers transformers fastgrpo trains (SD3, Qwen-Image: the first; FLUX.1/.2: the
first two; Z-Image: ``layers``; Wan: ``blocks``)."""


def repeated_blocks(transformer: nn.Module) -> list[nn.Module]:
    """The transformer's repeated blocks (what FSDP2 shards and regional compilation compiles one by one), of each
    expert for a model made of several (``experts``: Wan2.2 A14B)."""
    parts = getattr(transformer, "experts", None) or (transformer,)
    return [block for part in parts for name in BLOCK_LISTS for block in getattr(part, name, ())]


class Backbone:
    """What the loop needs of a flow model. Subclasses set ``transformer`` (the trained module),
    ``latent_shape`` (one sample's latent, without the batch) and implement ``encode_prompts``, ``velocity`` and
    ``decode``."""

    transformer: nn.Module
    latent_shape: tuple[int, ...]

    def encode_prompts(self, texts: list[str]) -> TextEmbeddings:
        """Per-prompt conditioning (frozen encoders, cached)."""
        raise NotImplementedError

    def velocity(self, transformer: nn.Module, latents: Tensor, sigma: Tensor, text: TextEmbeddings) -> Tensor:
        """v = f(x_σ, σ, text) for a batch: ``sigma`` is (B,) in [0, 1]."""
        raise NotImplementedError

    def decode(self, latents: Tensor) -> Tensor:
        """Images (B, 3, H, W) float in [0, 1]."""
        raise NotImplementedError

    def denoiser(self, transformer: nn.Module):
        """``f(x, σ, text) -> v`` with ``transformer`` (the trained one, a DDP/FSDP wrapper, or the reference); its
        ``guidance_at`` is the backbone's."""
        f = functools.partial(self.velocity, transformer)
        f.guidance_at = self.guidance_at
        return f

    def guidance_at(self, sigma: float, guidance: float) -> float:
        """The CFG scale at the step at σ: ``guidance`` (the run's ``sampling.guidance``) for every step here."""
        return guidance

    def keep_from(self, pipe, text_encoders: tuple[str, ...]) -> None:
        """What a pipeline backbone keeps of its loaded pipeline: its text encoders (``text_encoders``: the
        attribute names; freed on request) and its scheduler's config (``sampling.shift=auto``)."""
        self.text_encoders = PipelineTextEncoders(pipe, text_encoders)
        self.scheduler_config = dict(pipe.scheduler.config)

    scheduler_config: dict | None = None
    """A pipeline backbone's scheduler config (``sampling.shift=auto`` reads it); None: no pipeline schedule."""
    image_seq_len: int = 0
    """Image tokens per sample at ``model.resolution`` (what a pipeline's resolution-dependent shift depends on)."""

    def dynamic_mu(self, steps: int) -> float:
        """μ of the pipeline's resolution-dependent shift: diffusers' ``calculate_shift`` (linear in the image token
        count between the scheduler's base and max sequence lengths and shifts: FLUX.1, Qwen-Image, Z-Image, SD3)."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c = self.scheduler_config
        return calculate_shift(self.image_seq_len, c["base_image_seq_len"], c["max_image_seq_len"], c["base_shift"],
                               c["max_shift"])

    def auto_shift(self, steps: int) -> float:
        """``sampling.shift=auto``: the shift s whose σ = s·t/(1 + (s − 1)·t) on t = 1, 1 − 1/T, …, 1/T is the grid
        the pipeline itself samples with at this resolution and T — ``exp(μ)`` under its scheduler's dynamic
        shifting (μ for ``time_shift_type=linear``), else the scheduler's fixed ``shift`` (``flow_shift``: UniPC,
        Wan). A scheduler whose grid no single shift gives (``shift_terminal``, Karras / exponential / beta
        sigmas) is an error naming it."""
        import math

        c = self.scheduler_config
        if c is None:
            raise ValueError("sampling.shift=auto takes the shift from a pipeline's scheduler; this model has none "
                             "(set sampling.shift to a number)")
        for key in ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
            if c.get(key):
                raise ValueError(f"sampling.shift=auto: the pipeline's scheduler sets {key}={c[key]}, a grid no "
                                 "single shift gives; set sampling.shift to a number")
        if not c.get("use_dynamic_shifting"):
            return float(c.get("flow_shift") or c.get("shift") or 1.0)
        mu = self.dynamic_mu(steps)
        return float(math.exp(mu) if c.get("time_shift_type", "exponential") == "exponential" else mu)

    text_encoders: "PipelineTextEncoders | None" = None
    """A pipeline backbone's frozen text encoders (what :meth:`free_text_encoders` releases); None: nothing to free
    (the world's text model is part of its transformer's inputs and tiny)."""

    def free_text_encoders(self) -> int:
        """Drop the frozen text encoders once every prompt is cached (``model.free_text_encoders``); the bytes
        released. Later prompts must already be in the cache (:meth:`EmbeddingCache.freeze`)."""
        if self.text_encoders is None:
            return 0
        released = self.text_encoders.free()
        self.encode_prompts.freeze()
        return released


class EmbeddingCache:
    """Each distinct prompt is encoded once and kept (least recently used first out, at most ``size`` prompts:
    a T5 sequence of an SD3 prompt is ~2.7 MB in bf16, so the cache is bounded). Prompts are encoded one at a
    time: a batched matmul's rounding depends on the batch, so an embedding must not depend on which prompts
    happened to miss the cache with it (a resumed run would drift from the uninterrupted one)."""

    def __init__(self, encode: Callable[[list[str]], tuple[Tensor, Tensor]], size: int = 512):
        self.encode = encode
        self.size = size
        self._cache: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    def freeze(self) -> None:
        """No more encoding (the encoders are gone): a prompt not cached is an error."""
        def gone(texts):
            raise RuntimeError(f"prompt {texts[0]!r} is not among the {len(self._cache)} prompts whose embeddings "
                               "were cached before the text encoders were freed (model.free_text_encoders=false "
                               "keeps them)")
        self.encode = gone

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> TextEmbeddings:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        fresh = {}
        for t in missing:
            hidden, pooled = self.encode([t])
            fresh[t] = (hidden[0], pooled[0])
        rows = [fresh[t] if t in fresh else self._cache[t] for t in texts]
        for t, row in fresh.items():
            self._cache[t] = row
        for t in texts:
            self._cache.move_to_end(t)
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return TextEmbeddings(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]))


def require_pipeline_dir(path, kind: str, components: tuple[str, ...]) -> Path:
    """The local diffusers pipeline directory at ``model.path``, or an error naming the key and what it must hold."""
    need = f"a diffusers {kind} pipeline saved with save_pretrained: model_index.json and " + \
        ", ".join(f"{c}/" for c in components)
    if path is None:
        raise ValueError(f"model.path is required for model.kind={kind!r}: {need} (weights are never downloaded)")
    root = Path(os.path.expanduser(str(path)))
    if not root.is_dir():
        raise FileNotFoundError(f"model.path={str(path)!r} is not a directory; it must be {need}")
    missing = [c for c in ("model_index.json", *components) if not (root / c).exists()]
    if missing:
        raise FileNotFoundError(f"model.path={str(path)!r} lacks {missing}; it must be {need}")
    return root


def load_pipeline(pipeline_cls, cfg, device, components: tuple[str, ...], frozen: tuple[str, ...],
                  transformer_class: str):
    """``pipeline_cls.from_pretrained(model.path)`` from local files only, checked: the frozen parts on ``device``
    in ``model.dtype``, the transformer in fp32 for full fine-tuning (the base dtype under LoRA)."""
    name = pipeline_cls.__name__
    root = require_pipeline_dir(cfg.path, name, components)
    dtype = DTYPES[cfg.dtype]
    try:
        pipe = pipeline_cls.from_pretrained(str(root), dtype=dtype, local_files_only=True)
    except Exception as err:
        raise ValueError(f"model.path={cfg.path!r}: cannot load it as a {name}: {type(err).__name__}: {err}") from err
    if type(pipe.transformer).__name__ != transformer_class:
        raise ValueError(f"model.path={cfg.path!r}: cannot load it as a {name}: its transformer is "
                         f"{type(pipe.transformer).__name__}, not {transformer_class}")
    for part in frozen:
        freeze(getattr(pipe, part, None), device, dtype)
    pipe.transformer.to(device, dtype=torch.float32 if cfg.lora_rank == 0 else dtype)
    return pipe


class PipelineTextEncoders:
    """The text encoders of a loaded diffusers pipeline, freed on request (``Backbone.free_text_encoders``)."""

    def __init__(self, pipe, names: tuple[str, ...]):
        self.pipe, self.names = pipe, names

    def free(self) -> int:
        released = 0
        for name in self.names:
            module = getattr(self.pipe, name, None)
            if module is not None:
                released += sum(p.numel() * p.element_size() for p in module.parameters())
                setattr(self.pipe, name, None)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return released


def padded_tokens(tokens: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """One prompt's (n, D) token embeddings as the cache keeps text of varying length: zero-padded to
    (1, ``length``, D), with n as a (1, 1) tensor in the pooled slot (the models that use it have no pooled
    embedding); the velocity call takes each prompt's first n tokens back."""
    hidden = tokens.new_zeros(1, length, tokens.shape[-1])
    hidden[0, :tokens.shape[0]] = tokens
    return hidden, torch.tensor([[float(tokens.shape[0])]], device=tokens.device)


def decode_video_vae(vae, latents: Tensor, chunk: int = 8) -> Tensor:
    """5-D latents (B, C, F, h, w) → videos (B, 3, F', H, W) in [0, 1] through a Wan-family VAE: ``x·std + mean`` per
    channel (its config's ``latents_std`` / ``latents_mean``, as its pipelines undo them), ``chunk`` at a time."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latents.device)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(latents.device)
    dtype = next(vae.parameters()).dtype
    out = []
    with torch.no_grad():
        for part in latents.split(chunk):
            video = vae.decode((part.float() * std + mean).to(dtype), return_dict=False)[0]
            out.append((video.float() * 0.5 + 0.5).clamp(0, 1))
    return torch.cat(out)


def freeze(module: nn.Module | None, device, dtype) -> nn.Module | None:
    if module is None:
        return None
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def decode_vae(vae, latents: Tensor, chunk: int = 8) -> Tensor:
    """Latents in the transformer's space → images in [0, 1] through a diffusers VAE, ``chunk`` at a time (the
    decoder's activations at 1024² dominate memory otherwise)."""
    scale = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    dtype = next(vae.parameters()).dtype
    out = []
    with torch.no_grad():
        for part in latents.split(chunk):
            image = vae.decode((part / scale + shift).to(dtype), return_dict=False)[0]
            out.append((image.float() * 0.5 + 0.5).clamp(0, 1))
    return torch.cat(out)
