"""Shared benchmark machinery: cases, timing, copy bandwidth, peak memory, environment, results files.

Timing: on CUDA ``triton.testing.do_bench`` (warm-up, L2 flushed between runs, median of CUDA-event times); on CPU a
warm-up then the median of ``time.perf_counter`` runs within a time budget. Inputs are fresh ``randn`` per case.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    latent: tuple[int, ...]
    """Per-sample latent shape: (C, H, W) for SD3.5-M, (tokens, channels) for packed FLUX latents."""

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.batch, *self.latent)


_LATENTS = {"sd3_512": (16, 64, 64), "sd3_1024": (16, 128, 128), "flux_1024": (4096, 64)}
CASES = [Case(n, b, lat) for n, lat in _LATENTS.items() for b in (1, 8, 24, 48)]
QUICK_CASES = [Case("sd3_512", 1, _LATENTS["sd3_512"]), Case("sd3_512", 8, _LATENTS["sd3_512"]),
               Case("flux_1024", 1, _LATENTS["flux_1024"])]


CPU_NOTE = ("CPU run: fastgrpo (Triton) skipped — Triton cannot launch on CPU tensors (TRITON_INTERPRET=1 would "
            "interpret it, far too slowly to time); fastgrpo_torch is the path CPU users get. The small CPU cases fit "
            "in cache, so copy_frac (against a 256 MiB DRAM copy) can exceed 1; timings on a shared machine are noisy.")


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def select_cases(quick: bool, device: torch.device) -> list[Case]:
    """All cases on CUDA; a few small ones with ``quick`` or on CPU (a CPU run stays within minutes)."""
    return QUICK_CASES if quick or device.type != "cuda" else CASES


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({_cpu_count()} cores)"


def device_slug(device: torch.device | None = None) -> str:
    """``h100``, ``h200``, another GPU's name slugified, or ``cpu-<cores>c``."""
    device = device or pick_device()
    if device.type != "cuda":
        return f"cpu-{_cpu_count()}c"
    name = torch.cuda.get_device_name(device).lower()
    for known in ("h100", "h200"):
        if known in name:
            return known
    return re.sub(r"[^a-z0-9]+", "-", name.replace("nvidia", "")).strip("-")


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()


def git_commit() -> str:
    """Short commit of the working tree, ``+dirty`` when it has changes. ``FASTGRPO_BENCH_COMMIT`` wins when set
    (a tree copied to a GPU machine may carry a stale .git: pass the checkout's commit along); without git and
    without it, ``unknown``."""
    if os.environ.get("FASTGRPO_BENCH_COMMIT"):
        return os.environ["FASTGRPO_BENCH_COMMIT"]
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        return commit + ("+dirty" if _git("status", "--porcelain") else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("FASTGRPO_BENCH_COMMIT", "unknown")


def _command() -> str:
    """The command line, with paths inside the repository written relative to it (no machine paths)."""
    root = str(Path(__file__).resolve().parents[1]) + "/"
    return " ".join(arg.replace(root, "") for arg in sys.argv)


def environment(device: torch.device | None = None) -> dict:
    device = device or pick_device()
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_name(device),
        "device_slug": device_slug(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": _command(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def randn(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Fresh standard-normal data (never zeros, never a constant)."""
    return torch.randn(shape, device=device, dtype=torch.float32).to(dtype)


BUDGET_S = {False: 1.0, True: 0.2}  # CPU seconds of timed runs per measurement: full run, --quick
_budget_s = BUDGET_S[False]


def configure(quick: bool) -> None:
    """Called by ``fastgrpo bench`` before any benchmark: ``--quick`` (a smoke run, not a figure to report) gives
    each CPU measurement 0.2 s instead of 1 s."""
    global _budget_s
    _budget_s = BUDGET_S[bool(quick)]


def bench(fn: Callable[[], object], device: torch.device, budget_s: float | None = None) -> float:
    """Median wall time of ``fn()`` in ms. CUDA: ``do_bench`` (25 ms warm-up, 100 ms of runs, L2 flushed);
    CPU: two warm-up calls, then at least 5 and at most 100 runs within ``budget_s`` (default: 1 s, 0.2 s after
    ``configure(quick=True)``)."""
    budget_s = _budget_s if budget_s is None else budget_s
    if device.type == "cuda":
        from triton.testing import do_bench
        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    fn()
    times: list[float] = []
    stop = time.perf_counter() + budget_s
    while len(times) < 5 or (len(times) < 100 and time.perf_counter() < stop):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def loop_ms(fn: Callable[[], object], device: torch.device, calls: int = 50) -> float | None:
    """CUDA only: ms per call of ``calls`` back-to-back calls, synchronised once — what an eager training loop
    sees, host (Python, launch) overhead included where it exceeds the GPU time. None on CPU."""
    if device.type != "cuda":
        return None
    fn()
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize(device)
    return 1e3 * (time.perf_counter() - t0) / calls


def graph_ms(fn: Callable[[], object], reps: int = 20) -> float:
    """CUDA: GPU time per call, from ``reps`` calls captured in one CUDA graph and replayed (median of 10 replays,
    CUDA events). No host overhead: what the GPU spends when the step is launched ahead of time, as in a
    training loop whose GPU is busy with the transformer."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / reps)
    del graph
    return statistics.median(times)


def copy_bandwidth(device: torch.device) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + written), median of repeated ``dst.copy_(src)`` on
    1 GiB (CUDA) or 256 MiB (CPU) of fp32."""
    nbytes = 2**30 if device.type == "cuda" else 2**28
    src = randn(nbytes // 4, torch.float32, device)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), device)
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / 1e9


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """Extra CUDA memory one call of ``fn`` needs at its peak (max allocated − allocated before), MiB; None on CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def try_provider(label: str, fn: Callable[[], object], notes: list[str]) -> bool:
    """Call ``fn`` once (compiles, checks it runs); on failure add a note and print the traceback, return False."""
    try:
        fn()
        return True
    except Exception as err:  # a failing provider is reported, the others still get measured
        traceback.print_exc()
        first = (str(err).strip().splitlines() or [""])[0][:200]
        notes.append(f"{label} skipped: {type(err).__name__}: {first}")
        return False


def add_speedups(rows: list[dict], baselines: dict[str, str], key: str = "ms") -> None:
    """Add ``column = baseline[key] / row[key]`` for rows of the same case and workload (None where missing)."""
    for row in rows:
        for column, provider in baselines.items():
            base = next((r.get(key) for r in rows if r["provider"] == provider and r["case"] == row["case"]
                         and r["batch"] == row["batch"] and r["workload"] == row["workload"]), None)
            row[column] = base / row[key] if (base is not None and row.get(key)) else None


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, rows: list[dict], notes: list[str], out_dir: str | None = None, *,
                  copy_gbps: float | None = None, device: torch.device | None = None) -> tuple[Path, Path]:
    """Write ``<name>.json`` (environment, rows, notes) and ``<name>.md`` (header, notes, table) into ``out_dir``,
    by default ``benchmarks/results/<device_slug>/``. Prints the markdown; returns both paths."""
    device = device or pick_device()
    env = environment(device)
    folder = Path(out_dir) if out_dir else RESULTS / env["device_slug"]
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    json_path.write_text(json.dumps({"benchmark": name, "environment": env, "copy_bandwidth_gbps": copy_gbps,
                                     "rows": rows, "notes": notes}, indent=2) + "\n")
    bw = f"{copy_gbps:.0f} GB/s" if copy_gbps is not None else "not measured"
    header = (f"# {name}\n\nDevice: {env['device']} · date: {env['date']} · command: `{env['command']}` · "
              f"commit: {env['commit']} · torch {env['torch']}, triton {env['triton']}, Python {env['python']} · "
              f"peak copy bandwidth (read + write): {bw}\n")
    md = header + "\n" + "".join(f"- {n}\n" for n in notes) + "\n" + markdown_table(rows) + "\n"
    md_path.write_text(md)
    print(md)
    print(f"wrote {json_path} and {md_path}")
    return json_path, md_path


def measure(case: Case, workload: str, provider: str, fn: Callable[[], object], nbytes: int, copy_gbps: float,
            device: torch.device, memory: bool = False, graphable: bool = True) -> dict:
    """One result row: median ms (do_bench), achieved GB/s (ideal bytes / time) and its fraction of the copy
    bandwidth; on CUDA also the eager loop time, the CUDA-graph GPU time (``graphable`` providers: no host sync)
    with its bandwidth fraction, and with ``memory`` the peak extra memory of one call."""
    ms = bench(fn, device)
    gbps = nbytes / (ms * 1e-3) / 1e9
    row = {"case": case.name, "batch": case.batch, "workload": workload, "provider": provider, "ms": ms,
           "gbps": gbps, "copy_frac": gbps / copy_gbps}
    if device.type == "cuda":
        row["loop_ms"] = loop_ms(fn, device)
        row["gpu_ms"] = None
        if graphable:
            try:
                row["gpu_ms"] = graph_ms(fn)
            except Exception as err:  # a provider that cannot be captured keeps its do_bench time only
                print(f"{provider}: CUDA graph capture failed ({type(err).__name__}: {err})")
                torch.cuda.synchronize()
        row["gpu_copy_frac"] = nbytes / (row["gpu_ms"] * 1e-3) / 1e9 / copy_gbps if row["gpu_ms"] else None
    if memory and device.type == "cuda":
        row["peak_mib"] = peak_memory_mib(fn, device)
    return row


def release(device: torch.device) -> None:
    """Drop compiled graphs (a fresh compile per case: no recompile limit, no dynamic-shape fallback) and cache."""
    torch.compiler.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def note_once(notes: list[str], note: str) -> None:
    if note not in notes:
        notes.append(note)
