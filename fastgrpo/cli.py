"""Command line: ``fastgrpo demo`` | ``fastgrpo bench [name] [--quick] [--out DIR]``."""
from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastgrpo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="sample with every step family on an analytic flow; check replay ratios")
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    demo.add_argument("--batch", type=int, default=64)
    bench = sub.add_parser("bench", help="run benchmarks; results go to benchmarks/results/<device>/")
    bench.add_argument("name", nargs="?", default=None, help="e.g. flow_step, dpm_solver (default: all)")
    bench.add_argument("--quick", action="store_true", help="a few small cases only")
    bench.add_argument("--out", default=None, help="write results here instead of benchmarks/results/<device>")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.command == "demo":
        from .demo import run
        run(batch=args.batch, device=args.device)
        return 0
    from .bench import run
    return run(args.name, args.quick, args.out) or 0


if __name__ == "__main__":
    sys.exit(main())
