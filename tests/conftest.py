"""Test setup. Without a GPU, Triton kernels run under the interpreter: TRITON_INTERPRET must be set before
triton decorates any kernel, so it is set here, first."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# under pytest-xdist (`make test` runs one worker per core, up to 4) each worker gets its share of the cores, and the
# processes its tests start (gloo ranks, CLI runs) inherit it through OMP_NUM_THREADS: no oversubscribed cores
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    _share = max(1, _cores // _workers)
    torch.set_num_threads(_share)
    os.environ["OMP_NUM_THREADS"] = str(_share)


def pytest_collection_modifyitems(config, items):
    slow = os.environ.get("FASTGRPO_SLOW") == "1"  # `make test-slow`; `make test` (CI) leaves them out
    for item in items:
        if "slow" in item.keywords and not slow:
            item.add_marker(pytest.mark.skip(reason="a long CPU test: make test-slow (FASTGRPO_SLOW=1)"))
        elif "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
