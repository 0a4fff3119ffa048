"""``fastgrpo serve-reward NAME``: any registered scorer behind HTTP (Starlette on uvicorn), so a reward model can
live on its own GPU or machine while the trainers score through the ``remote:NAME`` reward.

Endpoints: ``GET /health`` → ``{"reward": NAME, "needs_prompts": bool}``; ``POST /score`` → the scores (the wire
format: ``fastgrpo.rewards.wire``). Requests that arrive together are batched: one worker thread takes every
waiting request of the same image size, up to ``max_batch`` images, scores them in one call and answers each —
the model sees large batches when several trainers (or ranks) ask at once, and runs one call at a time. Bound to
127.0.0.1 unless told otherwise; another host needs ``--token`` (clients send ``Authorization: Bearer TOKEN``).
A malformed request is answered 400 and the server goes on.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import queue
import threading
from concurrent.futures import Future

import torch

from . import wire

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


_NOTHING = object()


class Batcher:
    """One worker thread scoring queued requests, several at a time when they share an image size."""

    def __init__(self, scorer, max_batch: int = 64):
        self.scorer, self.max_batch = scorer, max_batch
        self.calls = 0
        """Scorer calls so far (tests: requests that arrived together share one)."""
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="fastgrpo-reward-batcher", daemon=True)
        self._thread.start()

    def submit(self, images, prompts) -> Future:
        future: Future = Future()
        self._queue.put((images, prompts, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _work(self) -> None:
        held = _NOTHING  # a request taken from the queue that did not fit the last batch (or the stop sentinel)
        while True:
            item = held if held is not _NOTHING else self._queue.get()
            held = _NOTHING
            if item is None:
                return
            batch = [item]
            size = item[0].shape[0]
            while size < self.max_batch:  # whatever else is waiting, of the same image size
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None or nxt[0].shape[1:] != item[0].shape[1:] or size + nxt[0].shape[0] > self.max_batch:
                    held = nxt
                    break
                batch.append(nxt)
                size += nxt[0].shape[0]
            self._score(batch)

    def _score(self, batch) -> None:
        try:
            images = torch.cat([images for images, _, _ in batch])
            prompts = None
            if getattr(self.scorer, "needs_prompts", False):
                if any(p is None for _, p, _ in batch):
                    raise wire.PayloadError(f"reward {self.scorer.name!r} needs one prompt per image")
                prompts = [t for _, p, _ in batch for t in p]
            device = getattr(self.scorer, "device", torch.device("cpu"))
            scores = self.scorer(images.to(device), prompts)
            self.calls += 1
            start = 0
            for images, _, future in batch:
                future.set_result(scores[start:start + images.shape[0]].float().cpu())
                start += images.shape[0]
        except Exception as err:  # noqa: BLE001 — each waiting request gets the error
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(err)


async def read_body(request, limit: int) -> bytes:
    """The request body, read in chunks and refused (``wire.PayloadTooLarge``) as soon as it passes ``limit`` bytes
    — a declared Content-Length over it before reading anything — so no client makes the server hold more."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise wire.PayloadTooLarge(f"request body of {declared} bytes exceeds {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise wire.PayloadTooLarge(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def make_app(scorer, name: str, *, token: str | None = None, max_batch: int = 64, max_body: int = wire.MAX_BODY):
    """The Starlette application serving ``scorer`` (a registered reward, built) as ``name``."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    batcher = Batcher(scorer, max_batch)

    def authorised(request) -> bool:
        if token is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    async def health(request):
        if not authorised(request):
            return JSONResponse({"error": "a wrong or missing token"}, status_code=401)
        return JSONResponse({"reward": name, "needs_prompts": bool(getattr(scorer, "needs_prompts", False))})

    async def score(request):
        if not authorised(request):
            return JSONResponse({"error": "a wrong or missing token"}, status_code=401)
        try:
            images, prompts = wire.decode_request(await read_body(request, max_body))
        except wire.PayloadTooLarge as err:
            return JSONResponse({"error": str(err)}, status_code=413)
        except wire.PayloadError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        try:
            scores = await asyncio.wrap_future(batcher.submit(images, prompts))
        except wire.PayloadError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        except Exception as err:  # noqa: BLE001 — the scorer failed: say so, keep serving
            log.exception("reward %s failed", name)
            return JSONResponse({"error": f"{name}: {type(err).__name__}: {err}"}, status_code=500)
        return JSONResponse(wire.encode_scores(name, scores))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = Starlette(routes=[Route("/health", health), Route("/score", score, methods=["POST"])], lifespan=lifespan)
    app.state.batcher = batcher
    return app


def check_bind(host: str, token: str | None) -> None:
    if host not in LOOPBACK and not token:
        raise ValueError(f"--host {host}: serving beyond this machine needs --token (a shared secret the clients "
                         "send); or keep the default --host 127.0.0.1")


def serve(name: str, *, host: str = "127.0.0.1", port: int = 8401, token: str | None = None, max_batch: int = 64,
          device: str | None = None, config: dict | None = None) -> None:
    """Build reward ``name`` from ``config`` (its keys, e.g. ``path``), move it to ``device`` (CUDA when there is
    one) and serve it until interrupted."""
    import uvicorn

    from .registry import build_reward

    check_bind(host, token)
    scorer = build_reward(name, **(config or {}))
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(scorer, torch.nn.Module):
        scorer = scorer.to(target).eval()
    log.info("serving reward %s on http://%s:%d (%s, batches of up to %d images)", name, host, port, target,
             max_batch)
    uvicorn.run(make_app(scorer, name, token=token, max_batch=max_batch), host=host, port=port, log_level="info")
