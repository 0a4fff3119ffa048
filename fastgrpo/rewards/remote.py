"""The ``remote:NAME`` reward: the scores of a ``fastgrpo serve-reward NAME`` server (``reward.names=
[remote:pickscore]``, ``reward.paths={remote:pickscore: http://host:8401}``).

Images travel as uint8 (``fastgrpo.rewards.wire``), so a remote score equals the in-process scorer's on the same
images rounded to 8 bits — what a saved image would give. Each request has a timeout and is retried a bounded number
of times with exponential backoff when the server cannot be reached or fails (5xx); a request the server rejects
(4xx), a server that stays unreachable, or an answer with the wrong number of scores, a non-finite score or another
dtype is an error naming the URL — never a silent zero or a stale score. With ``reward.schedule=auto`` (the default)
a run with a remote reward overlaps each group's request with the next group's rollout. A token for a server on
another host is read from ``FASTGRPO_REWARD_TOKEN`` (not the config, which is saved with the run).
Only the standard library is used on this side.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Optional, Sequence

import torch
from torch import Tensor

from . import wire
from .base import RewardConfigError, RewardModel

PREFIX = "remote:"
TOKEN_ENV = "FASTGRPO_REWARD_TOKEN"


def http_json(url: str, body: bytes | None, *, timeout: float, retries: int, backoff: float,
              content_type: str = "application/octet-stream", token: str | None = None) -> dict:
    """POST ``body`` (GET when None) to ``url``, the JSON answer. Unreachable / 5xx: ``retries`` more tries after
    ``backoff``·2^k seconds, then a RuntimeError naming the URL; 4xx: at once."""
    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {token}"} if token else {})}
    last = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as err:
            detail = _error_text(err)
            if err.code < 500:
                raise RuntimeError(f"reward server {url} rejected the request ({err.code}): {detail}") from None
            last = f"HTTP {err.code}: {detail}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
            last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
        except json.JSONDecodeError as err:
            raise RuntimeError(f"reward server {url} answered something other than JSON ({err})") from None
    raise RuntimeError(f"reward server {url} unreachable or failing after {retries + 1} tries (timeout {timeout} s "
                       f"each): {last}")


def _error_text(err) -> str:
    try:
        return json.loads(err.read()).get("error", "")[:300]
    except Exception:  # noqa: BLE001 — the status alone then
        return str(err.reason)


class RemoteReward(RewardModel):
    """Scores from a reward server at ``path`` (its base URL) serving reward ``remote``."""

    name = "remote"

    def __init__(self, path=None, *, remote: str, timeout: float = 120.0, retries: int = 3, backoff: float = 0.5,
                 **common):
        super().__init__(**common)
        if not path or not str(path).startswith(("http://", "https://")):
            raise RewardConfigError(f"{PREFIX}{remote}: reward.paths must give its server's URL "
                                    f"(e.g. {PREFIX}{remote}=http://127.0.0.1:8401), got {path!r}")
        self.name = f"{PREFIX}{remote}"
        self.url = str(path).rstrip("/")
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.token = os.environ.get(TOKEN_ENV) or None
        health = self._call("/health", None)
        if health.get("reward") != remote:
            raise RewardConfigError(f"{self.name}: the server at {self.url} serves {health.get('reward')!r}, not "
                                    f"{remote!r}")
        self.needs_prompts = bool(health.get("needs_prompts"))

    def _call(self, route: str, body: bytes | None) -> dict:
        return http_json(self.url + route, body, timeout=self.timeout, retries=self.retries, backoff=self.backoff,
                         token=self.token)

    def forward(self, images: Tensor, prompts: Optional[Sequence[str]] = None) -> Tensor:
        self._check(images, prompts)
        scores = []
        for start in range(0, images.shape[0], self.batch_size):
            part = images[start:start + self.batch_size]
            texts = list(prompts[start:start + self.batch_size]) if self.needs_prompts else None
            answer = self._call("/score", wire.encode_request(part, texts))
            scores.append(wire.decode_scores(answer, part.shape[0], self.url + "/score"))
        if not scores:
            return torch.empty(0, dtype=torch.float32, device=images.device)
        return torch.cat(scores).to(images.device)

    def extra_repr(self) -> str:
        return f"url={self.url!r}, timeout={self.timeout}, retries={self.retries}"
