"""``fastgrpo bench [name] [--quick]``: run the benchmark scripts in ``benchmarks/bench_<name>.py``.

The ``benchmarks/`` folder is looked up in the current directory first, then in the repository next to the
installed package (an editable install). Results go to ``benchmarks/results/<device>/``, or to ``out_dir``.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Optional


def find_benchmarks() -> Path:
    import fastgrpo

    for root in (Path.cwd(), Path(fastgrpo.__file__).resolve().parents[1]):
        folder = root / "benchmarks"
        if folder.is_dir() and any(folder.glob("bench_*.py")):
            return folder
    raise FileNotFoundError("no benchmarks/ folder with bench_*.py in the current directory or next to the "
                            "fastgrpo package; run from a checkout of the repository")


def available(folder: Path) -> list[str]:
    return sorted(p.stem[len("bench_"):] for p in folder.glob("bench_*.py"))


def run(name: Optional[str], quick: bool, out_dir: Optional[str]) -> int:
    """Run ``benchmarks/bench_<name>.py``'s ``main(quick=, out_dir=)``, or every benchmark when ``name`` is None.

    Returns an exit code: 0 when every benchmark ran (or the first non-zero code a ``main`` returned); 2 for an
    unknown ``name``, after printing the available names to stderr."""
    folder = find_benchmarks()
    names = available(folder)
    if name is not None:
        name = name.removeprefix("bench_").removesuffix(".py")
        if name not in names:
            print(f"fastgrpo bench: unknown benchmark {name!r}; available: {', '.join(names)}", file=sys.stderr)
            return 2
    root = str(folder.parent)
    if sys.path[:1] != [root]:  # ahead of any other importable ``benchmarks``
        sys.path.insert(0, root)
    importlib.import_module("benchmarks.common").configure(quick)
    code = 0
    for bench in [name] if name is not None else names:
        module = importlib.import_module(f"benchmarks.bench_{bench}")
        code = code or int(module.main(quick=quick, out_dir=out_dir) or 0)
    return code
