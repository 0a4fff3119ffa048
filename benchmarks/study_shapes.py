"""The alignment study on the embedded shapes world: every recipe config under the same training-time budget and
seeds, evaluated on fixed seeds (training and held-out prompts), plus AdaGRPO's prompt-difficulty ablation.

    python -m benchmarks.study_shapes --budget 45 --seeds 1 --threads 2           # the committed 2-core results
    python -m benchmarks.study_shapes --budget 60 --seeds 3 --evals 10 --jobs 14  # the full study, 16 cores

Budgets count training time only (rollouts, rewards, advantages, updates); the ``--evals`` evaluations of a run
are excluded and fall at the first iteration end past each multiple of ``budget/evals`` seconds (a step that crosses
two marks records its evaluation at both). A run is one (run kind, seed); ``--jobs N`` runs N of them at a time, each
in a fresh spawned process, and every run (sequential or not) uses ``--threads`` torch threads so that runs do not
fight over cores. Runs are ordered seed-major, so each wave of a parallel study holds every run kind.

Run kinds: the recipes (``configs/<recipe>.yaml``) and ``default:<mode>`` for the selection ablation, all by
default; ``--runs a,b,...`` keeps some of them. ``--extra NAME=RECIPE[:KEY=VALUE[,KEY=VALUE...]]`` (repeatable)
adds a variant of a recipe with config overrides, e.g. ``--extra "default_lr5e-5=default:optim.lr=5e-5"``; a comma
starts a new override only when ``key=`` follows it, so list values stay whole (``g2rpo:branch.points=0,1``).

Writes into ``--out`` (default ``benchmarks/results/<device>/``): study_shapes.json (environment, setup, per-seed
curves, rows), study_shapes.md (the table as mean ± sample std over seeds, the ablation), and the plots
study_shapes_reward_vs_time.png (recipes and extras) and study_shapes_ablation_vs_time.png (mean over seeds).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fastgrpo.train import load_config
from fastgrpo.train.loop import Trainer

try:
    from benchmarks import common
except ImportError:  # run as a script
    import common

CONFIGS = Path(__file__).parents[1] / "configs"
RECIPES = ["flow_grpo", "flow_grpo_fast", "dance_grpo", "flow_cps", "g2rpo", "stepwise_flow_grpo", "mixgrpo",
           "mixgrpo_flash", "adagrpo_flow_grpo", "default"]
ABLATION = ["random", "easiest", "hardest", "median"]  # "curriculum" is the default recipe itself
ABLATION_RUNS = [f"default:{m}" for m in ABLATION]
PAPER_ABLATION = {"curriculum": 14.99, "random": 14.71, "easiest": 14.39, "hardest": 14.73, "median": 14.87}
KEYS = ("eval_train_reward", "eval_train_correct", "eval_heldout_reward", "eval_heldout_correct")
TARGET_RUN = "flow_grpo"


@dataclass(frozen=True)
class Run:
    name: str
    recipe: str
    overrides: tuple[str, ...] = ()


def builtin_runs() -> list[Run]:
    return [Run(r, r) for r in RECIPES] + [Run(f"default:{m}", "default", (f"adagrpo.selection={m}",))
                                           for m in ABLATION]


_OVERRIDE_START = re.compile(r",(?=\s*[A-Za-z_][\w.]*=)")


def parse_extra(spec: str) -> Run:
    """``NAME=RECIPE[:KEY=VALUE[,KEY=VALUE...]]`` → a Run. A comma followed by ``key=`` starts a new override;
    any other comma belongs to the value (``branch.points=0,1``)."""
    name, eq, rest = spec.partition("=")
    recipe, _, tail = rest.partition(":")
    name, recipe = name.strip(), recipe.strip()
    if not eq or not name or not recipe:
        raise ValueError(f"--extra {spec!r} must look like NAME=RECIPE[:KEY=VALUE[,KEY=VALUE...]]")
    if not (CONFIGS / f"{recipe}.yaml").is_file():
        known = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.yaml")))
        raise ValueError(f"--extra {spec!r}: no configs/{recipe}.yaml (recipes: {known})")
    overrides = tuple(o.strip() for o in _OVERRIDE_START.split(tail)) if tail.strip() else ()
    return Run(name, recipe, overrides)


def select_runs(names: str | None, extras: list[str]) -> list[Run]:
    """The built-in runs named in ``names`` (comma-separated; all when None), in the study's order, then the
    extras. Every config is loaded here, so a bad override fails before any training."""
    builtin = builtin_runs()
    runs = builtin
    if names is not None:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in {r.name for r in builtin}]
        if unknown:
            raise ValueError(f"--runs: unknown {unknown}; choose from {[r.name for r in builtin]}")
        runs = [r for r in builtin if r.name in wanted]
    runs = runs + [parse_extra(e) for e in extras]
    seen = set()
    for run in runs:
        if run.name in seen:
            raise ValueError(f"run name {run.name!r} appears twice")
        seen.add(run.name)
        load_config(str(CONFIGS / f"{run.recipe}.yaml"), run.overrides)
    if not runs:
        raise ValueError("no runs selected")
    return runs


def run_one(run: Run, seed: int, budget: float, evals: int, device: str, tmp: str) -> list[dict]:
    """Train for ``budget`` seconds of training time; the curve holds evals + 1 points (time 0, then one per mark)."""
    cfg = load_config(str(CONFIGS / f"{run.recipe}.yaml"),
                      run.overrides + (f"seed={seed}", "iterations=100000", f"device={device}", f"out_dir={tmp}"))
    trainer = Trainer(cfg)
    curve = [{"time": 0.0, "iteration": 0, **trainer.evaluate()}]
    interval, spent = budget / evals, 0.0
    while len(curve) <= evals:
        t0 = time.perf_counter()
        trainer.step()
        trainer.iteration += 1
        spent += time.perf_counter() - t0
        if spent >= len(curve) * interval:
            point = {"time": spent, "iteration": trainer.iteration, **trainer.evaluate()}
            while len(curve) <= evals and spent >= len(curve) * interval:
                curve.append(point)
    return curve


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _task(run: Run, seed: int, budget: float, evals: int, device: str, tmp: str):
    """One run in a worker: (curve, None) or (None, the traceback), so one failing run does not stop the study."""
    try:
        return run_one(run, seed, budget, evals, device, tmp), None
    except Exception:
        return None, traceback.format_exc()


def execute(runs: list[Run], seeds: int, budget: float, evals: int, device: str, jobs: int, threads: int
            ) -> tuple[dict[str, list[list[dict]]], list[str]]:
    """Every (run, seed), seed-major; returns each run's curves ordered by seed, and the failures."""
    tasks = [(run, seed) for seed in range(seeds) for run in runs]
    curves: dict[str, dict[int, list[dict]]] = {run.name: {} for run in runs}
    failures: list[str] = []
    start = time.perf_counter()

    def record(run: Run, seed: int, curve, error) -> None:
        done = sum(map(len, curves.values())) + len(failures) + 1
        head = f"[{done}/{len(tasks)} {time.perf_counter() - start:.0f} s] {run.name} seed {seed}"
        if error is not None:
            failures.append(f"{run.name} seed {seed}: {error.strip().splitlines()[-1]}")
            print(f"{head}: FAILED\n{error}", flush=True)
            return
        curves[run.name][seed] = curve
        print(f"{head}: eval train reward {curve[0]['eval_train_reward']:.3f} → {curve[-1]['eval_train_reward']:.3f}"
              f" in {curve[-1]['iteration']} iterations", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        if jobs == 1:
            _start_worker(threads)
            for i, (run, seed) in enumerate(tasks):
                record(run, seed, *_task(run, seed, budget, evals, device, f"{tmp}/{i}"))
        else:
            # spawn: a fresh interpreter per run (max_tasks_per_child=1), no state shared with the parent or
            # with an earlier run
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=(threads,),
                                     max_tasks_per_child=1) as pool:
                futures = {pool.submit(_task, run, seed, budget, evals, device, f"{tmp}/{i}"): (run, seed)
                           for i, (run, seed) in enumerate(tasks)}
                for future in as_completed(futures):
                    record(*futures[future], *future.result())
    return {name: [by_seed[s] for s in sorted(by_seed)] for name, by_seed in curves.items()}, failures


# ---- aggregation ---------------------------------------------------------------------------------------------
def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n − 1) of the values that are not None; std None below two values."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def time_to(curve: list[dict], target: float, key: str = "eval_train_reward") -> float | None:
    """Training seconds at the first evaluation whose ``key`` reaches ``target``; None if none does. An upper bound:
    the evaluations fall every ``budget/evals`` seconds, at the end of the step that crosses the mark."""
    return next((p["time"] for p in curve if p[key] >= target), None)


def mean_curve(curves: list[list[dict]], key: str = "eval_train_reward") -> list[tuple[float, float]]:
    """(mean time, mean ``key``) over seeds of the k-th evaluation, for every k that all seeds have."""
    length = min(map(len, curves))
    return [(statistics.fmean(c[k]["time"] for c in curves), statistics.fmean(c[k][key] for c in curves))
            for k in range(length)]


def summarize(name: str, curves: list[list[dict]], target: float | None) -> dict:
    """One row: start values, final values, iterations, s/iteration and the time to ``target`` (mean and std over
    seeds; the time over the seeds that reached it, counted in ``reached``)."""
    row: dict = {"run": name, "seeds": len(curves)}
    for key in KEYS[:2]:
        row[key.removeprefix("eval_") + "_start"] = mean_std(c[0][key] for c in curves)[0]
    finals = {key.removeprefix("eval_"): [c[-1][key] for c in curves] for key in KEYS}
    finals["iterations"] = [c[-1]["iteration"] for c in curves]
    finals["s_per_iteration"] = [c[-1]["time"] / max(1, c[-1]["iteration"]) for c in curves]
    if target is not None:
        reach = [time_to(c, target) for c in curves]
        finals[f"s_to_{TARGET_RUN}_final"] = reach
        row["reached"] = sum(r is not None for r in reach)
    for column, values in finals.items():
        row[column], row[column + "_std"] = mean_std(values)
    return row


# ---- outputs -------------------------------------------------------------------------------------------------
_FORMATS = {"iterations": "{:.1f}", "s_per_iteration": "{:.2f}", f"s_to_{TARGET_RUN}_final": "{:.0f}"}


def cell(row: dict, column: str) -> str:
    """``mean ± std`` (``mean`` alone for one seed, ``–`` for None) in the column's format."""
    mean, std = row.get(column), row.get(column + "_std")
    if mean is None:
        return "–"
    fmt = _FORMATS.get(column, "{:.3f}")
    return fmt.format(mean) + (" ± " + fmt.format(std) if std is not None else "")


def table(rows: list[dict]) -> list[dict]:
    target = f"s_to_{TARGET_RUN}_final"
    shown = []
    for row in rows:
        line = {"run": row["run"], "seeds": row["seeds"],
                "train_reward_start": f"{row['train_reward_start']:.3f}",
                "train_correct_start": f"{row['train_correct_start']:.3f}"}
        for column in ("train_reward", "train_correct", "heldout_reward", "heldout_correct", "iterations",
                       "s_per_iteration"):
            line[column] = cell(row, column)
        if target in row:
            line[target] = cell(row, target) + f" ({row['reached']}/{row['seeds']})"
        shown.append(line)
    return shown


def ablation_table(rows: list[dict]) -> list[dict]:
    by_name = {r["run"]: r for r in rows}
    out = []
    for mode, paper in PAPER_ABLATION.items():
        row = by_name.get("default" if mode == "curriculum" else f"default:{mode}")
        if row is not None:
            out.append({"selection": mode, **{c: cell(row, c) for c in ("train_reward", "train_correct",
                                                                         "heldout_reward", "heldout_correct")},
                        "paper_hps_v3": f"{paper:.2f}"})
    return out


_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 128), (128, 0, 0),
            (0, 128, 0), (255, 215, 0), (0, 0, 0), (70, 240, 240)]


def plot(lines: dict[str, list[tuple[float, float]]], path: Path, title: str, size=(760, 420)) -> None:
    """Lines of (training seconds, eval train reward) with a fitted y axis and a legend on the right."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = 50, 28, size[0] - 190, size[1] - 36
    points = [p for line in lines.values() for p in line]
    x_max = max((t for t, _ in points), default=1.0) or 1.0
    y_lo, y_hi = min((y for _, y in points), default=0.0), max((y for _, y in points), default=1.0)
    pad = max(0.005, 0.05 * (y_hi - y_lo))
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def xy(t: float, y: float) -> tuple[float, float]:
        return left + t / x_max * (right - left), bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top)

    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    draw.text((left, 8), title, fill=(0, 0, 0))
    for k in range(5):
        y = y_lo + k / 4 * (y_hi - y_lo)
        draw.text((4, xy(0, y)[1] - 6), f"{y:.3f}", fill=(0, 0, 0))
        t = k / 4 * x_max
        draw.text((xy(t, y_lo)[0] - 8, bottom + 4), f"{t:.0f}", fill=(0, 0, 0))
    draw.text(((left + right) // 2 - 50, bottom + 18), "training seconds", fill=(0, 0, 0))
    for i, (name, line) in enumerate(lines.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        if len(line) > 1:
            draw.line([xy(t, y) for t, y in line], fill=colour, width=2)
        draw.line([(right + 10, top + 6 + 16 * i), (right + 30, top + 6 + 16 * i)], fill=colour, width=3)
        draw.text((right + 36, top + 16 * i), name, fill=colour)
    img.save(path)


def write(folder: Path, device: torch.device, setup: dict, runs: list[Run], results: dict[str, list[list[dict]]],
          rows: list[dict], notes: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    env = common.environment(device)
    json_path, md_path = folder / "study_shapes.json", folder / "study_shapes.md"
    json_path.write_text(json.dumps({"benchmark": "study_shapes", "environment": env, "setup": setup,
                                     "runs": [asdict(r) for r in runs], "rows": rows, "notes": notes,
                                     "curves": results}, indent=1) + "\n")
    header = (f"# study_shapes\n\nDevice: {env['device']} · date: {env['date']} · command: `{setup['command']}` · "
              f"commit: {env['commit']} · torch {env['torch']}, Python {env['python']} · CPU: {setup['cpu']} · "
              f"{setup['jobs']} job(s) × {setup['threads_per_run']} thread(s) per run "
              f"({setup['cores_used']} cores used) · study wall time {setup['wall_s']:.0f} s\n")
    md = header + "\n" + "".join(f"- {n}\n" for n in notes) + "\n" + common.markdown_table(table(rows)) + "\n"
    ablation = ablation_table(rows)
    if ablation:
        md += ("\n## AdaGRPO's prompt-difficulty ablation (curriculum = the default recipe)\n\n"
               + common.markdown_table(ablation) + "\n")
    md_path.write_text(md)
    print(md)
    print(f"wrote {json_path} and {md_path}")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per run (default 60)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per run kind (default 1)")
    parser.add_argument("--evals", type=int, default=5, help="evaluations per run after the initial one (default 5)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--runs", default=None, help="comma-separated run kinds (default: every recipe and "
                                                      "default:<mode> of the ablation)")
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=RECIPE[:KEY=VALUE[,KEY=VALUE...]]",
                        help="add a variant of a recipe with overrides (repeatable)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the runs train (default cpu, the configs' device)")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/<device>/")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if min(args.budget, args.seeds, args.evals, args.jobs, args.threads) <= 0:
        parser.error("--budget, --seeds, --evals, --jobs and --threads must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    try:
        runs = select_runs(args.runs, args.extra)
    except ValueError as err:
        parser.error(str(err))
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)  # the parent trains too when --jobs 1; recorded as torch_threads
    started = time.perf_counter()
    results, failures = execute(runs, args.seeds, args.budget, args.evals, args.device, args.jobs, args.threads)
    wall = time.perf_counter() - started
    cores = min(args.jobs, len(runs) * args.seeds) * args.threads
    runs = [r for r in runs if results[r.name]]
    results = {r.name: results[r.name] for r in runs}
    target = None
    if TARGET_RUN in results:
        target = statistics.fmean(c[-1]["eval_train_reward"] for c in results[TARGET_RUN])
    rows = [summarize(name, curves, target) for name, curves in results.items()]
    # the exact invocation, shell-quoted (--extra values keep their spaces and commas), paths repo-relative
    command = shlex.join(["python", "-m", "benchmarks.study_shapes", *argv]).replace(str(common.REPO) + "/", "")
    setup = {"command": command, "device": args.device, "cpu": common.device_name(torch.device("cpu")),
             "jobs": args.jobs, "threads_per_run": args.threads, "cores_used": cores,
             "budget_s": args.budget, "seeds": args.seeds, "evals_per_run": args.evals, "wall_s": wall}
    notes = [
        f"Training-time budget {args.budget:.0f} s per run, {args.seeds} seed(s) (mean ± sample std over seeds), "
        f"{args.evals} fixed-seed ODE evaluations of the 64 training and 11 held-out prompts per run (every "
        f"{args.budget / args.evals:.0f} s of training, excluded from the budget); *_start is before training. "
        f"{args.jobs} run(s) at a time, {args.threads} torch thread(s) each.",
    ]
    if target is not None:
        notes.append(f"s_to_{TARGET_RUN}_final: training seconds until the eval train reward first reached "
                     f"Flow-GRPO's final value, mean over seeds ({target:.3f}), seen at the evaluations (so up to "
                     f"{args.budget / args.evals:.0f} s plus one step late); mean ± std over the seeds that reached "
                     "it (reached/seeds), – if none did.")
        by_name = {r["run"]: r for r in rows}
        if "default" in by_name:
            default, flow = by_name["default"], by_name[TARGET_RUN]
            reach = default[f"s_to_{TARGET_RUN}_final"]
            notes.append(
                f"Goal (issue 7): the default (AdaGRPO + MixGRPO) beats Flow-GRPO's final reward "
                f"({flow['train_reward']:.3f}) and reaches it in ≤ 50% of the time: final "
                f"{default['train_reward']:.3f} → "
                f"{'beats' if default['train_reward'] > flow['train_reward'] else 'does NOT beat'} it; reached in "
                f"{default['reached']}/{default['seeds']} seed(s)"
                + (f", after {reach:.0f} s of {args.budget:.0f} s on average." if reach is not None else "."))
    if any(name in ABLATION_RUNS for name in results):
        notes.append("default:<mode> rows are AdaGRPO's prompt-difficulty ablation (its paper, HPS-v3 on FLUX: "
                     "random 14.71, easiest 14.39, hardest 14.73, medium 14.87, curriculum 14.99).")
    for run in runs:
        if run.name not in RECIPES + ABLATION_RUNS:
            notes.append(f"{run.name}: configs/{run.recipe}.yaml with {', '.join(run.overrides) or 'no overrides'}.")
    notes += [f"FAILED: {f}" for f in failures]
    folder = Path(args.out) if args.out else common.RESULTS / common.device_slug(device)
    write(folder, device, setup, runs, results, rows, notes)
    lines = {n: mean_curve(c) for n, c in results.items() if n not in ABLATION_RUNS}
    plot(lines, folder / "study_shapes_reward_vs_time.png",
         f"eval train reward vs training seconds (mean of {args.seeds} seed(s))")
    ablation = {n: mean_curve(c) for n, c in results.items() if n in ["default"] + ABLATION_RUNS}
    if len(ablation) > 1:
        plot(ablation, folder / "study_shapes_ablation_vs_time.png",
             f"AdaGRPO selection ablation (mean of {args.seeds} seed(s))")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
