"""What a reward request and its answer look like on the wire (``fastgrpo serve-reward`` and the ``remote:``
client).

Request: ``POST /score`` with a safetensors body — one uint8 tensor ``images`` (B, 3, H, W), the prompts as a JSON
list in the file's metadata under ``prompts`` (safetensors holds tensors and text only: nothing in it executes, unlike
pickle). Answer: JSON ``{"reward": name, "dtype": "float32", "scores": [B floats]}``; an error is JSON
``{"error": message}`` with status 400 (a bad request), 401 (a wrong token) or 500 (the scorer failed).
"""
from __future__ import annotations

import json
import math

import torch
from torch import Tensor

SCORE_DTYPE = "float32"
MAX_BODY = 512 * 2**20
"""Largest request body a server reads (512 MiB: 64 images at 1024² are 192 MiB)."""


class PayloadError(ValueError):
    """A request the server cannot read; its message says what is wrong."""


class PayloadTooLarge(PayloadError):
    """A request body over the server's limit (HTTP 413)."""


def to_uint8(images: Tensor) -> Tensor:
    """(B, 3, H, W) images in [0, 1] (or uint8 already) → uint8 on the host, rounded as PIL's ``fromarray`` of
    ``x·255`` would be."""
    if images.dtype == torch.uint8:
        return images.cpu().contiguous()
    return (images.detach().float() * 255).round().clamp(0, 255).to(torch.uint8).cpu().contiguous()


def encode_request(images: Tensor, prompts: list[str] | None) -> bytes:
    from safetensors.torch import save

    return save({"images": to_uint8(images)}, metadata={"prompts": json.dumps(list(prompts or []))})


def decode_request(body: bytes) -> tuple[Tensor, list[str] | None]:
    """(uint8 images, prompts or None) from a request body; a ``PayloadError`` for anything else."""
    from safetensors.torch import load

    try:
        tensors = load(body)
    except Exception as err:  # noqa: BLE001 — any unreadable body is the same client error
        raise PayloadError(f"the body is not a safetensors file ({type(err).__name__}: {err})") from None
    images = tensors.get("images")
    if images is None or set(tensors) != {"images"}:
        raise PayloadError(f"expected one tensor 'images', got {sorted(tensors)}")
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise PayloadError(f"'images' must be uint8 (B, 3, H, W) with B >= 1, got {images.dtype} "
                           f"{tuple(images.shape)}")
    try:
        prompts = json.loads(_metadata(body).get("prompts", "[]"))
    except (ValueError, TypeError) as err:
        raise PayloadError(f"metadata 'prompts' is not a JSON list ({err})") from None
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise PayloadError("metadata 'prompts' must be a JSON list of strings")
    if prompts and len(prompts) != images.shape[0]:
        raise PayloadError(f"{len(prompts)} prompts for {images.shape[0]} images")
    return images, (prompts or None)


def _metadata(body: bytes) -> dict:
    """The ``__metadata__`` of a safetensors file held in memory (its JSON header)."""
    size = int.from_bytes(body[:8], "little")
    header = json.loads(body[8:8 + size])
    return header.get("__metadata__") or {}


def encode_scores(name: str, scores: Tensor) -> dict:
    return {"reward": name, "dtype": SCORE_DTYPE, "scores": scores.detach().float().cpu().tolist()}


def decode_scores(answer: dict, count: int, where: str) -> Tensor:
    """The (count,) float32 scores of an answer; a ``RuntimeError`` naming ``where`` (the URL) for a wrong count,
    a non-finite score or another dtype — never a silent zero."""
    if not isinstance(answer, dict) or not isinstance(answer.get("scores"), list):
        raise RuntimeError(f"reward server {where} answered without a 'scores' list: {str(answer)[:200]}")
    if answer.get("dtype") != SCORE_DTYPE:
        raise RuntimeError(f"reward server {where} answered scores of dtype {answer.get('dtype')!r}, expected "
                           f"{SCORE_DTYPE!r}")
    scores = answer["scores"]
    if len(scores) != count:
        raise RuntimeError(f"reward server {where} answered {len(scores)} scores for {count} images")
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores):
        bad = next(s for s in scores if not (isinstance(s, (int, float)) and math.isfinite(s)))
        raise RuntimeError(f"reward server {where} answered a non-finite or non-numeric score: {bad!r}")
    return torch.tensor(scores, dtype=torch.float32)
