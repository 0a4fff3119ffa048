"""When a rollout's rewards are computed (``reward.schedule``): each group's as soon as it is sampled (``inline``),
every group's in one decode + reward call after the last group (``batched``), or each group's in a worker thread
while the next group rolls out (``overlap``).

The rewards are the same numbers whichever schedule runs them (``inline`` and ``overlap`` call the same function on
the same latents; ``batched`` scores the concatenation, equal up to the batch's matmul rounding): the schedule
changes when the work happens, not what is trained. Under ``overlap`` on CUDA the worker runs on a stream of its
own that first waits for the group's sampling to finish (an event recorded on the rollout's stream), and the
rollout's stream waits for the reward before it is read; the latents are kept alive for the worker's stream
(``record_stream``). (The world's random-reward control seeds itself from the images it is given, so under
``batched`` its values differ from the per-group ones; any other reward is a per-image function.)

On CPU overlap does not pay: on the world's default job (2 cores, 2026-12-07, ``fastgrpo bench
reward_schedule``) it ran 0.72× inline although one group's reward takes 1.1 ms — the worker's OpenMP threads
spin after each parallel region and take the cores from the rollout (with ``OMP_WAIT_POLICY=PASSIVE`` the loss
was 6%, but passive waiting slowed the inline iteration by 78%).
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch
from torch import Tensor

SCHEDULES = ("inline", "batched", "overlap")


SERVED = ("remote:", "vlm_judge")
"""Rewards that wait on a server (name prefixes): ``auto`` overlaps them with the rollout."""


def resolve_schedule(schedule: str, names: list[str]) -> str:
    """``reward.schedule`` with ``auto`` made concrete: overlap when a reward waits on a server (its request is
    issued while the next group rolls out), inline otherwise (the measured default on CPU)."""
    if schedule != "auto":
        return schedule
    return "overlap" if any(name.startswith(SERVED) for name in names) else "inline"


class RewardQueue:
    """``submit(latents, prompts)`` per group, then ``results()``: the groups' rewards in submission order.
    ``score(latents, prompts) -> Tensor`` is the trainer's decode + reward; ``concat(list of prompts)`` joins the
    groups' prompts (``batched``)."""

    def __init__(self, score: Callable, schedule: str, concat: Callable | None = None):
        if schedule not in SCHEDULES:
            raise ValueError(f"reward.schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.score, self.schedule, self.concat = score, schedule, concat
        self._items: list = []
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fastgrpo-reward") if schedule == "overlap" else None
        self._stream = None

    def submit(self, latents: Tensor, prompts) -> None:
        if self.schedule == "inline":
            self._items.append(self.score(latents, prompts))
        elif self.schedule == "batched":
            self._items.append((latents, prompts))
        else:
            ready = None
            if latents.is_cuda:
                ready = torch.cuda.Event()
                # on the rollout's stream: the current stream of the latents' device (not of the current device,
                # which differs when a single process trains on cuda:1)
                ready.record(torch.cuda.current_stream(latents.device))
                if self._stream is None:
                    self._stream = torch.cuda.Stream(latents.device)
            self._items.append(self._pool.submit(self._score_aside, latents, prompts, ready))

    def _score_aside(self, latents: Tensor, prompts, ready):
        # grad mode, autocast and the CUDA device are per thread: the worker sets its own
        with torch.no_grad():
            if ready is None:
                return self.score(latents, prompts), None
            torch.cuda.set_device(latents.device)
            with torch.cuda.stream(self._stream):
                self._stream.wait_event(ready)
                latents.record_stream(self._stream)
                values = self.score(latents, prompts)
                done = torch.cuda.Event()
                done.record(self._stream)
            return values, done

    def results(self) -> list[Tensor]:
        """The rewards of every submitted group, in order (waits for the worker; re-raises its error)."""
        try:
            if self.schedule == "inline":
                return list(self._items)
            if self.schedule == "batched":
                if not self._items:
                    return []
                latents = torch.cat([latents for latents, _ in self._items])
                values = self.score(latents, self.concat([prompts for _, prompts in self._items]))
                return list(values.split([len(latents) for latents, _ in self._items]))
            out = []
            for future in self._items:
                values, done = future.result()
                if done is not None:
                    torch.cuda.current_stream(values.device).wait_event(done)
                    values.record_stream(torch.cuda.current_stream(values.device))
                out.append(values)
            return out
        finally:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            for item in self._items:
                if isinstance(item, Future):
                    item.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
