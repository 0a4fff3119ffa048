"""``vlm_judge``: a vision-language model as the reward, through an OpenAI-compatible chat endpoint (what
``vllm serve MODEL`` or sglang expose): ``reward.names=[vlm_judge]``, ``reward.paths={vlm_judge: http://host:8000/v1}``.

Each image is sent with the text of ``template`` (``{prompt}`` replaced by its prompt) as one user message (the
image as a PNG data URL), temperature 0; the first match of ``pattern`` in the answer is the score, divided by
``scale`` (a 0–10 answer → [0, 1]). An answer without a match is an error naming the URL, the prompt and the
answer — never a default score. Requests run ``concurrency`` at a time (the server batches them); each has a
timeout and bounded retries (``fastgrpo.rewards.remote.http_json``). A key, when the server wants one
(``vllm serve --api-key``), is read from ``FASTGRPO_REWARD_TOKEN``.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import torch
from torch import Tensor

from .base import RewardConfigError, RewardModel
from .registry import register
from .remote import TOKEN_ENV, http_json
from .wire import to_uint8

TEMPLATE = ("Does this image match the prompt \"{prompt}\"? Rate the match and the image quality together on a "
            "scale from 0 (not at all) to 10 (perfectly). Answer with the number only.")


def png_data_url(image: Tensor) -> str:
    """A (3, H, W) uint8 image as a ``data:image/png;base64,…`` URL."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@register("vlm_judge")
class VlmJudge(RewardModel):
    name = "vlm_judge"
    needs_prompts = True

    def __init__(self, path=None, *, model: str = "default", template: str = TEMPLATE,
                 pattern: str = r"-?\d+(?:\.\d+)?", scale: float = 10.0, max_tokens: int = 16,
                 concurrency: int = 8, timeout: float = 120.0, retries: int = 3, backoff: float = 0.5, **common):
        super().__init__(**common)
        if not path or not str(path).startswith(("http://", "https://")):
            raise RewardConfigError("vlm_judge: reward.paths must give the chat endpoint's base URL "
                                    f"(e.g. vlm_judge=http://127.0.0.1:8000/v1), got {path!r}")
        if "{prompt}" not in template:
            raise RewardConfigError("vlm_judge: template must contain {prompt}")
        try:
            self.pattern = re.compile(pattern)
        except re.error as err:
            raise RewardConfigError(f"vlm_judge: pattern {pattern!r} is not a regular expression: {err}") from None
        if scale <= 0 or concurrency < 1:
            raise RewardConfigError(f"vlm_judge: scale must be > 0 and concurrency >= 1, got {scale}, {concurrency}")
        self.url = str(path).rstrip("/") + "/chat/completions"
        self.model, self.template, self.scale = model, template, float(scale)
        self.max_tokens, self.concurrency = int(max_tokens), int(concurrency)
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.token = os.environ.get(TOKEN_ENV) or None

    def _ask(self, image: Tensor, prompt: str) -> float:
        body = {"model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                "messages": [{"role": "user", "content": [
                    {"type": "text", "text": self.template.format(prompt=prompt)},
                    {"type": "image_url", "image_url": {"url": png_data_url(image)}}]}]}
        answer = http_json(self.url, json.dumps(body).encode(), timeout=self.timeout, retries=self.retries,
                           backoff=self.backoff, content_type="application/json", token=self.token)
        try:
            text = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise RuntimeError(f"vlm_judge: {self.url} answered without choices[0].message.content: "
                               f"{str(answer)[:200]}") from None
        match = self.pattern.search(text or "")
        if match is None:
            raise ValueError(f"vlm_judge: the answer of {self.url} for prompt {prompt!r} holds no score matching "
                             f"{self.pattern.pattern!r}: {text!r}")
        return float(match.group(0)) / self.scale

    def forward(self, images: Tensor, prompts: Optional[Sequence[str]] = None) -> Tensor:
        self._check(images, prompts)
        pixels = to_uint8(images)
        with ThreadPoolExecutor(min(self.concurrency, max(len(pixels), 1))) as pool:
            scores = list(pool.map(self._ask, pixels, list(prompts)))
        return torch.tensor(scores, dtype=torch.float32, device=images.device)

    def extra_repr(self) -> str:
        return f"url={self.url!r}, model={self.model!r}, scale={self.scale}"
