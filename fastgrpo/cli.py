"""Command line: ``fastgrpo train`` | ``config`` | ``eval`` | ``sample`` | ``serve-reward`` | ``pretrain-world`` |
``demo`` | ``bench``."""
from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastgrpo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="GRPO training (default: AdaGRPO + MixGRPO on the embedded shapes world)")
    tr.add_argument("--config", default=None, help="a YAML file, or a shipped recipe's name (default, mixgrpo, flow_grpo, ...); none: the default")
    tr.add_argument("--resume", default=None, help="a run directory to continue")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. iterations=20 window.size=2")
    cf = sub.add_parser("config", help="print the resolved config (a recipe and overrides, checked) as YAML, or "
                                       "every key with its type, default and meaning")
    cf.add_argument("--config", default=None, help="a YAML file or a shipped recipe's name, as for train")
    cf.add_argument("--keys", action="store_true", help="list every key: type, default, description")
    cf.add_argument("overrides", nargs="*", help="key=value overrides, as for train")
    pre = sub.add_parser("pretrain-world", help="flow-matching pretraining of the embedded world's weights")
    pre.add_argument("--steps", type=int, default=4800,
                     help="AdamW steps of the drawing stage (the shipped weights: 4800, seed 0)")
    pre.add_argument("--confusion-steps", type=int, default=1200,
                     help="AdamW steps of the noisy-caption stage after it (the shipped weights: 1200, seed 1)")
    target = pre.add_mutually_exclusive_group(required=True)  # never the installed package's weights by default
    target.add_argument("--out", default=None, help="the .safetensors file to write")
    target.add_argument("--replace-shipped", action="store_true",
                        help="overwrite the weights shipped in the installed package (every run then loads them)")
    ev = sub.add_parser("eval", help="reward, its components and exact correctness, mean and 95%% CI over "
                                     "prompts × fixed noise seeds, of a run, a checkpoint or the shipped weights")
    ev.add_argument("target", nargs="?", default="pretrained",
                    help="a run directory (its latest checkpoint), a checkpoint directory (ckpt-*), or 'pretrained' "
                         "(the shipped world; the default)")
    ev.add_argument("--seeds", type=int, default=None, help="noise seeds per prompt (default: the run's eval_seeds, 8)")
    ev.add_argument("--out", default=None, help="also write the results to this JSON file")
    ev.add_argument("--device", default=None, help="cpu or cuda (default: the run's device)")
    smp = sub.add_parser("sample", help="render a grid of the evaluation prompts from a run, a checkpoint or the "
                                        "shipped weights")
    smp.add_argument("run_dir", help="a run directory, a checkpoint directory, or 'pretrained'")
    smp.add_argument("--out", default="samples.png")
    demo = sub.add_parser("demo", help="sample with every step family on an analytic flow; check replay ratios")
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    demo.add_argument("--batch", type=int, default=64)
    srv = sub.add_parser("serve-reward", help="serve a registered reward over HTTP for remote:NAME rewards")
    srv.add_argument("name", help="a registered reward, e.g. pickscore, aesthetic, jpeg_compressibility")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    srv.add_argument("--port", type=int, default=8401)
    srv.add_argument("--token", default=None, help="a shared secret clients send (required beyond 127.0.0.1; "
                                                   "clients read it from FASTGRPO_REWARD_TOKEN)")
    srv.add_argument("--max-batch", type=int, default=64, help="images scored together at most")
    srv.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    srv.add_argument("config", nargs="*", help="the reward's config as key=value, e.g. path=/models/PickScore_v1")
    bench = sub.add_parser("bench", help="run benchmarks; results go to benchmarks/results/<device>/")
    bench.add_argument("name", nargs="?", default=None, help="e.g. flow_step, dpm_solver (default: all)")
    bench.add_argument("--quick", action="store_true", help="a few small cases only")
    bench.add_argument("--out", default=None, help="write results here instead of benchmarks/results/<device>")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.command in ("train", "config"):
        from .train import load_config
        try:
            config = load_config(args.config, tuple(args.overrides))
        except (ValueError, FileNotFoundError) as error:  # a wrong key or value: the message names it
            (tr if args.command == "train" else cf).error(str(error))
        if args.command == "config":
            from .train.config import describe, dump_config
            print(describe(type(config)) if args.keys else dump_config(config), end="")
            return 0
        from .train import train
        train(config, resume=args.resume)
        return 0
    if args.command == "pretrain-world":
        from .world import WEIGHTS
        from .world.pretrain import pretrain
        from pathlib import Path
        if args.steps < 1:
            pre.error(f"--steps must be >= 1, got {args.steps}")
        if args.confusion_steps < 0:
            pre.error(f"--confusion-steps must be >= 0, got {args.confusion_steps}")
        if args.out is not None and Path(args.out).resolve() == WEIGHTS.resolve():
            pre.error(f"--out {args.out} is the weights shipped in the package; pass --replace-shipped instead to "
                      "overwrite them")
        pretrain(WEIGHTS if args.replace_shipped else args.out, steps=args.steps,
                 confusion_steps=args.confusion_steps, replace_shipped=args.replace_shipped)
        return 0
    if args.command == "eval":
        from .train.evaluate import TargetError, run as evaluate_run
        if args.seeds is not None and args.seeds < 1:
            ev.error(f"--seeds must be >= 1, got {args.seeds}")
        try:
            evaluate_run(args.target, seeds=args.seeds, out=args.out, device=args.device)
        except TargetError as error:
            ev.error(str(error))
        return 0
    if args.command == "sample":
        from .train.evaluate import TargetError
        from .train.sample import render_run
        try:
            render_run(args.run_dir, args.out)
        except TargetError as error:
            smp.error(str(error))
        return 0
    if args.command == "serve-reward":
        import yaml

        from .rewards.serve import serve
        config = {}
        for item in args.config:
            key, sep, value = item.partition("=")
            if not sep or not key:
                srv.error(f"reward config {item!r} is not key=value")
            config[key] = yaml.safe_load(value) if value else ""
        if args.max_batch < 1:
            srv.error(f"--max-batch must be >= 1, got {args.max_batch}")
        try:
            serve(args.name, host=args.host, port=args.port, token=args.token, max_batch=args.max_batch,
                  device=args.device, config=config)
        except ValueError as error:  # an unknown reward, a bad key, a public host without a token
            srv.error(str(error))
        return 0
    if args.command == "demo":
        from .demo import run
        run(batch=args.batch, device=args.device)
        return 0
    from .bench import run
    return run(args.name, args.quick, args.out) or 0


if __name__ == "__main__":
    sys.exit(main())
