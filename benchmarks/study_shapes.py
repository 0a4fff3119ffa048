"""The alignment study on the embedded shapes world: every recipe config and a random-reward control under the same
training-time budget and seeds, evaluated on fixed seeds (training and held-out prompts), plus AdaGRPO's
prompt-difficulty ablation; every claim carries a 95% interval.

    python -m benchmarks.study_shapes --budget 150 --seeds 3 --evals 3 --jobs 2 --threads 1  # 2 cores
    python -m benchmarks.study_shapes --budget 60 --seeds 3 --evals 10 --jobs 14             # 16 cores

Budgets count training time only (rollouts, rewards, advantages, updates); the ``--evals`` evaluations of a run
are excluded and fall at the first iteration end past each multiple of ``budget/evals`` seconds (a step that crosses
two marks records its evaluation at both). A run is one (run kind, seed); ``--jobs N`` runs N of them at a time, each
in a fresh spawned process, and every run (sequential or not) uses ``--threads`` torch threads so that runs do not
fight over cores. Runs are ordered seed-major, so each wave of a parallel study holds every run kind.

Run kinds: the recipes (``configs/<recipe>.yaml``), ``control`` (the default recipe trained on a random reward,
``reward.names=[world_random]``: uniform noise that ignores the image; its evaluation still reports the real reward
and correctness, so it is the floor a real gain must clear) and ``default:<mode>`` for the selection ablation, all
by default; ``--runs a,b,...`` keeps some of them. ``--extra NAME=RECIPE[:KEY=VALUE[,KEY=VALUE...]]`` (repeatable)
adds a variant of a recipe with config overrides, e.g. ``--extra "default_lr5e-5=default:optim.lr=5e-5"``; a comma
starts a new override only when ``key=`` follows it, so list values stay whole (``g2rpo:branch.points=0,1``).

Statistics. The unit is the training seed: with n ≥ 2 seeds every final value (correctness, reward, iterations,
s/iteration, time to threshold) is the mean x̄ with the 95% t-interval x̄ ± t(0.975, n − 1)·s/√n, s the sample
standard deviation (n − 1). With one seed there is no interval over seeds: correctness and reward show the run's own
evaluation interval over prompts (``eval_*_lo`` / ``_hi`` from the trainer's evaluation), and the notes say so.
Differences between run kinds (default vs control, vs default:random, vs default:median; mixgrpo_flash vs mixgrpo)
are Welch intervals: d = x̄_a − x̄_b, se² = s_a²/n_a + s_b²/n_b, df = se⁴ / ((s_a²/n_a)²/(n_a − 1) +
(s_b²/n_b)²/(n_b − 1)) (Welch–Satterthwaite, rounded down, at least 1), d ± t(0.975, df)·se; a pair "separates"
when the interval excludes 0. ``--threshold`` (default 0.85): training seconds at the first evaluation whose exact
correctness on the training prompts reaches it, averaged over the seeds that reached it (reached/seeds).

Writes into ``--out`` (default ``benchmarks/results/<device>/``): study_shapes.json (environment, setup, per-seed
curves, rows with means and interval bounds, comparisons), study_shapes.md (the table as ``mean [lo, hi]``, the
ablation against the paper's numbers) and the plots study_shapes_correct_vs_time.png and
study_shapes_reward_vs_time.png (recipes, control and extras) and study_shapes_ablation_vs_time.png: the mean over
seeds at each evaluation with a shaded 95% band over seeds.

``--merge FILE`` extends an earlier study (its study_shapes.json) instead of repeating it: its curves join this
call's for the run kinds this call does not train (a kind trained in both takes this call's curves), and every row,
comparison and plot is computed over the union. The earlier study must have used the same budget, seeds, evals,
eval seeds, jobs and threads (a mismatch is an error naming the setting); its command, commit, date and wall time
are kept under ``setup.merged``.
"""
from __future__ import annotations

import argparse
import json
import math
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
from fastgrpo.train.evaluate import t_quantile
from fastgrpo.train.loop import Trainer
from fastgrpo.world import shapes

try:
    from benchmarks import common
except ImportError:  # run as a script
    import common

CONFIGS = Path(__file__).parents[1] / "configs"
RECIPES = ["flow_grpo", "flow_grpo_fast", "dance_grpo", "flow_cps", "g2rpo", "stepwise_flow_grpo", "mixgrpo",
           "mixgrpo_flash", "adagrpo_flow_grpo", "grpo_guard", "tempflow_grpo", "pave_grpo", "diffusion_nft", "awm",
           "dgpo", "default"]
CONTROL = "control"
ABLATION = ["random", "easiest", "hardest", "median"]  # "curriculum" is the default recipe itself
ABLATION_RUNS = [f"default:{m}" for m in ABLATION]
PAPER_ABLATION = {"curriculum": 14.99, "random": 14.71, "easiest": 14.39, "hardest": 14.73, "median": 14.87}
KEYS = ("eval_train_correct", "eval_train_reward", "eval_heldout_correct", "eval_heldout_reward")
COMPARISONS = [("default", CONTROL), ("default", "default:random"), ("default", "default:median"),
               ("mixgrpo_flash", "mixgrpo"), ("grpo_guard", "flow_grpo"), ("diffusion_nft", "default"),
               ("awm", "default"), ("dgpo", "default")]
LEVEL = 0.95
THRESHOLD = 0.85


@dataclass(frozen=True)
class Run:
    name: str
    recipe: str
    overrides: tuple[str, ...] = ()


def builtin_runs() -> list[Run]:
    """The recipes, then the random-reward control, then the selection ablation."""
    return ([Run(r, r) for r in RECIPES] + [Run(CONTROL, "default", ("reward.names=[world_random]",))]
            + [Run(f"default:{m}", "default", (f"adagrpo.selection={m}",)) for m in ABLATION])


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


MERGE_KEYS = {"budget_s": "budget", "seeds": "seeds", "evals_per_run": "evals", "jobs": "jobs",
              "threads_per_run": "threads"}


def load_merge(path: str, args, eval_seeds: int) -> dict:
    """The earlier study at ``path``, checked to be comparable with this call (same budget, seeds, evals, eval seeds,
    jobs and threads): a ValueError names the first setting that differs."""
    try:
        data = json.loads(Path(path).read_text())
        setup, runs, curves = data["setup"], data["runs"], data["curves"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--merge {path}: not a study_shapes.json ({err})") from None
    for key, option in MERGE_KEYS.items():
        if setup.get(key) != getattr(args, option):
            raise ValueError(f"--merge {path}: its --{option} was {setup.get(key)}, this call's is "
                             f"{getattr(args, option)}; merged studies must share it")
    if setup.get("eval_seeds") != eval_seeds:
        raise ValueError(f"--merge {path}: evaluated on {setup.get('eval_seeds')} eval seeds, this call on "
                         f"{eval_seeds} (configs/default.yaml eval_seeds)")
    env = data.get("environment", {})
    history = setup.get("merged", []) + [{"command": setup.get("command"), "commit": env.get("commit"),
                                           "date": env.get("date"), "wall_s": setup.get("wall_s")}]
    return {"runs": [Run(r["name"], r["recipe"], tuple(r["overrides"])) for r in runs], "curves": curves,
            "history": history}


def merge_runs(new: list[Run], old: list[Run]) -> list[Run]:
    """The union, in the study's order (built-in kinds first, then extras as they came); a kind in both is new's."""
    names = {r.name for r in new}
    union = new + [r for r in old if r.name not in names]
    order = {r.name: i for i, r in enumerate(builtin_runs())}
    return sorted(union, key=lambda r: order.get(r.name, len(order)))  # stable: extras keep their order


def run_config(run: Run, seed: int, device: str, tmp: str):
    """The run's recipe with its overrides, for one seed, training without an iteration limit."""
    return load_config(str(CONFIGS / f"{run.recipe}.yaml"),
                       run.overrides + (f"seed={seed}", "iterations=100000", f"device={device}", f"out_dir={tmp}"))


def run_one(run: Run, seed: int, budget: float, evals: int, device: str, tmp: str) -> list[dict]:
    """Train for ``budget`` seconds of training time; the curve holds evals + 1 points (time 0, then one per mark)."""
    trainer = Trainer(run_config(run, seed, device, tmp))
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
        print(f"{head}: eval train correct {curve[0]['eval_train_correct']:.3f} → "
              f"{curve[-1]['eval_train_correct']:.3f} in {curve[-1]['iteration']} iterations", flush=True)

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


# ---- statistics ----------------------------------------------------------------------------------------------
def t_interval(values, level: float = LEVEL) -> tuple[float | None, float | None, float | None]:
    """(mean, lo, hi) of the values that are not None: x̄ ± t((1 + level)/2, n − 1)·s/√n with s the sample standard
    deviation (n − 1); lo = hi = None for one value, all None for none."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    half = t_quantile(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def welch(a, b, level: float = LEVEL) -> dict:
    """Welch's interval for mean(a) − mean(b) (each at least two values): d = x̄_a − x̄_b, v = s²/n per side,
    se = √(v_a + v_b), df = (v_a + v_b)² / (v_a²/(n_a − 1) + v_b²/(n_b − 1)) rounded down (at least 1; n_a + n_b − 2
    when both variances are 0), d ± t((1 + level)/2, df)·se; ``separates`` when the interval excludes 0."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"welch needs at least two values per side, got {len(a)} and {len(b)}")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    denominator = va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)
    # + 1e-9: an integer df (equal n and variances give 2(n − 1)) must not round down past itself
    df = max(1, math.floor((va + vb) ** 2 / denominator + 1e-9)) if denominator > 0 else len(a) + len(b) - 2
    diff = statistics.fmean(a) - statistics.fmean(b)
    half = t_quantile(0.5 + level / 2, df) * math.sqrt(va + vb)
    lo, hi = diff - half, diff + half
    return {"diff": diff, "lo": lo, "hi": hi, "df": df, "n_a": len(a), "n_b": len(b),
            "separates": lo > 0 or hi < 0}


# ---- aggregation ---------------------------------------------------------------------------------------------
def time_to(curve: list[dict], target: float, key: str = "eval_train_correct") -> float | None:
    """Training seconds at the first evaluation whose ``key`` reaches ``target``; None if none does. An upper bound:
    the evaluations fall every ``budget/evals`` seconds, at the end of the step that crosses the mark."""
    return next((p["time"] for p in curve if p[key] >= target), None)


def mean_curve(curves: list[list[dict]], key: str = "eval_train_correct") -> list[tuple[float, float]]:
    """(mean time, mean ``key``) over seeds of the k-th evaluation, for every k that all seeds have."""
    return [(t, mean) for t, mean, _, _ in curve_band(curves, key)]


def curve_band(curves: list[list[dict]], key: str = "eval_train_correct"
               ) -> list[tuple[float, float, float | None, float | None]]:
    """(mean time, mean, lo, hi) over seeds of the k-th evaluation's ``key``, for every k that all seeds have; lo
    and hi are the t-interval over seeds (``t_interval``), None for one seed."""
    length = min(map(len, curves))
    return [(statistics.fmean(c[k]["time"] for c in curves), *t_interval(c[k][key] for c in curves))
            for k in range(length)]


def _final(curves: list[list[dict]], key: str) -> tuple[float, float | None, float | None]:
    """The final ``key`` over seeds: the t-interval over seeds, or for one seed the run's own evaluation interval
    over prompts (``key_lo`` / ``key_hi`` of its last point; None where the evaluation had none)."""
    if len(curves) > 1:
        return t_interval(c[-1][key] for c in curves)
    last = curves[0][-1]
    return last[key], last.get(key + "_lo"), last.get(key + "_hi")


def _put(row: dict, column: str, stats: tuple) -> None:
    row[column], row[column + "_lo"], row[column + "_hi"] = stats


def summarize(name: str, curves: list[list[dict]], threshold: float = THRESHOLD) -> dict:
    """One row: start values (mean over seeds), final values, iterations, s/iteration and the training seconds to
    ``threshold`` train correctness, each as mean, ``_lo`` and ``_hi`` (``_final`` / ``t_interval``); the time over
    the seeds that reached it, counted in ``reached``. ``interval`` says what the brackets span: seeds or prompts."""
    row: dict = {"run": name, "seeds": len(curves), "interval": "seeds" if len(curves) > 1 else "prompts"}
    for key in KEYS[:2]:
        row[key.removeprefix("eval_") + "_start"] = statistics.fmean(c[0][key] for c in curves)
    for key in KEYS:
        _put(row, key.removeprefix("eval_"), _final(curves, key))
    _put(row, "iterations", t_interval(c[-1]["iteration"] for c in curves))
    _put(row, "s_per_iteration", t_interval(c[-1]["time"] / max(1, c[-1]["iteration"]) for c in curves))
    reach = [time_to(c, threshold) for c in curves]
    _put(row, "s_to_threshold", t_interval(reach))
    row["threshold"], row["reached"] = threshold, sum(r is not None for r in reach)
    return row


def comparisons(results: dict[str, list[list[dict]]], key: str = "eval_train_correct") -> list[dict]:
    """``welch`` on the final ``key`` of each COMPARISONS pair whose run kinds both have at least two seeds."""
    out = []
    for a, b in COMPARISONS:
        if len(results.get(a, [])) >= 2 and len(results.get(b, [])) >= 2:
            finals = [[c[-1][key] for c in results[name]] for name in (a, b)]
            out.append({"a": a, "b": b, "key": key, **welch(*finals)})
    return out


def comparison_note(c: dict) -> str:
    verdict = "separates" if c["separates"] else "0 is inside the interval (no difference shown)"
    return (f"{c['a']} − {c['b']}, final train correctness: {c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}] "
            f"(Welch 95%, df {c['df']}, {c['n_a']} and {c['n_b']} seeds): {verdict}.")


# ---- outputs -------------------------------------------------------------------------------------------------
_FORMATS = {"iterations": "{:.1f}", "s_per_iteration": "{:.2f}", "s_to_threshold": "{:.0f}"}


def cell(row: dict, column: str) -> str:
    """``mean [lo, hi]`` (``mean`` alone without an interval, ``–`` for None) in the column's format."""
    mean, lo, hi = row.get(column), row.get(column + "_lo"), row.get(column + "_hi")
    if mean is None:
        return "–"
    fmt = _FORMATS.get(column, "{:.3f}").format
    return fmt(mean) + (f" [{fmt(lo)}, {fmt(hi)}]" if lo is not None and hi is not None else "")


def table(rows: list[dict]) -> list[dict]:
    shown = []
    for row in rows:
        line = {"run": row["run"], "seeds": row["seeds"],
                "train_correct_start": f"{row['train_correct_start']:.3f}",
                "train_reward_start": f"{row['train_reward_start']:.3f}"}
        for column in ("train_correct", "train_reward", "heldout_correct", "heldout_reward", "iterations",
                       "s_per_iteration"):
            line[column] = cell(row, column)
        line[f"s_to_correct_{row['threshold']:g}"] = cell(row, "s_to_threshold") + f" ({row['reached']}/{row['seeds']})"
        shown.append(line)
    return shown


def ablation_table(rows: list[dict]) -> list[dict]:
    by_name = {r["run"]: r for r in rows}
    out = []
    for mode, paper in PAPER_ABLATION.items():
        row = by_name.get("default" if mode == "curriculum" else f"default:{mode}")
        if row is not None:
            out.append({"selection": mode, **{c: cell(row, c) for c in ("train_correct", "train_reward",
                                                                         "heldout_correct", "heldout_reward")},
                        "paper_hps_v3": f"{paper:.2f}"})
    return out


def plot(bands: dict[str, list[tuple]], path: Path, title: str, ylabel: str) -> None:
    """One line per run kind of (training seconds, mean over seeds), with its 95% band over seeds shaded where
    there is one (``curve_band``); matplotlib's Agg backend, legend outside on the right."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5))
    colours = plt.get_cmap("tab10" if len(bands) <= 10 else "tab20")
    for i, (name, band) in enumerate(bands.items()):
        colour = colours(i % colours.N)
        times, means = [p[0] for p in band], [p[1] for p in band]
        ax.plot(times, means, marker="o", markersize=3, color=colour, label=name)
        if all(p[2] is not None for p in band):
            ax.fill_between(times, [p[2] for p in band], [p[3] for p in band], color=colour, alpha=0.15)
    ax.set_xlabel("training seconds")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plots(folder: Path, results: dict[str, list[list[dict]]], seeds: int, eval_seeds: int) -> None:
    """study_shapes_correct_vs_time.png and study_shapes_reward_vs_time.png (every run kind but the ablation's)
    and study_shapes_ablation_vs_time.png (default and default:<mode>, where there is one)."""
    band = "95% t-band over seeds" if seeds > 1 else "one seed, no band"
    about = (f"mean over {seeds} training seed(s), {band}; {len(shapes.TRAIN)} training prompts × {eval_seeds} "
             "eval seeds")
    main = {n: c for n, c in results.items() if n not in ABLATION_RUNS}
    ablation = {n: c for n, c in results.items() if n in ["default"] + ABLATION_RUNS}
    correct, reward = "exact correctness (fraction)", "world reward (mean over prompts)"
    figures = [("correct", main, "eval_train_correct", correct, "exact correctness on training prompts"),
               ("reward", main, "eval_train_reward", reward, "reward on training prompts"),
               ("ablation", ablation if len(ablation) > 1 else {}, "eval_train_correct", correct,
                "AdaGRPO selection ablation: exact correctness on training prompts")]
    for stem, chosen, key, ylabel, what in figures:
        if chosen:
            plot({n: curve_band(c, key) for n, c in chosen.items()}, folder / f"study_shapes_{stem}_vs_time.png",
                 f"{what} vs training seconds\n{about}", ylabel)


def write(folder: Path, device: torch.device, setup: dict, runs: list[Run], results: dict[str, list[list[dict]]],
          rows: list[dict], compared: list[dict], notes: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    env = common.environment(device)
    json_path, md_path = folder / "study_shapes.json", folder / "study_shapes.md"
    json_path.write_text(json.dumps({"benchmark": "study_shapes", "environment": env, "setup": setup,
                                     "runs": [asdict(r) for r in runs], "rows": rows, "comparisons": compared,
                                     "notes": notes, "curves": results}, indent=1) + "\n")
    header = (f"# study_shapes\n\nDevice: {env['device']} · date: {env['date']} · command: `{setup['command']}` · "
              f"commit: {env['commit']} · torch {env['torch']}, Python {env['python']} · CPU: {setup['cpu']} · "
              f"{setup['jobs']} job(s) × {setup['threads_per_run']} thread(s) per run "
              f"({setup['cores_used']} cores used) · study wall time {setup['wall_s']:.0f} s\n")
    for part in setup.get("merged", []):
        header += (f"\nMerged with an earlier study: `{part['command']}` · commit: {part['commit']} · date: "
                   f"{part['date']} · wall time {part['wall_s']:.0f} s\n")
    md = header + "\n" + "".join(f"- {n}\n" for n in notes) + "\n" + common.markdown_table(table(rows)) + "\n"
    ablation = ablation_table(rows)
    if ablation:
        md += ("\n## AdaGRPO's prompt-difficulty ablation (curriculum = the default recipe)\n\n"
               + common.markdown_table(ablation) + "\n")
    md_path.write_text(md)
    print(md)
    print(f"wrote {json_path} and {md_path}")
    return folder


def study_notes(args, runs: list[Run], rows: list[dict], compared: list[dict], eval_seeds: int) -> list[str]:
    """The md/JSON notes: setup and statistics, the single-seed caveat, threshold, control, ablation, extras."""
    notes = [
        f"Training-time budget {args.budget:g} s per run, {args.seeds} training seed(s) per run kind; {args.evals} "
        f"fixed-seed ODE evaluations per run of the {len(shapes.TRAIN)} training and {len(shapes.HELD_OUT)} "
        f"held-out prompts × {eval_seeds} eval seeds (every {args.budget / args.evals:g} s of training, excluded "
        f"from the budget); *_start is before training (mean over seeds). {args.jobs} run(s) at a time, "
        f"{args.threads} torch thread(s) each.",
        "Cells are mean [95% interval]: over training seeds, x̄ ± t(0.975, n − 1)·s/√n (s the sample std).",
    ]
    single = [r["run"] for r in rows if r["seeds"] == 1]
    if single:
        notes.append(f"One seed ({', '.join(single)}): no interval over training seeds; the correctness and reward "
                     "brackets are the run's own evaluation interval over prompts (t-interval over the per-prompt "
                     "means of the eval seeds), which leaves out seed-to-seed variation; iterations, s/iteration "
                     "and times show the value alone.")
    notes.append(f"s_to_correct_{args.threshold:g}: training seconds until the exact correctness on the training "
                 f"prompts first reached {args.threshold:g}, seen at the evaluations (so up to "
                 f"{args.budget / args.evals:g} s plus one step late); mean [interval] over the seeds that "
                 "reached it (reached/seeds), – if none did.")
    if any(r.name == CONTROL for r in runs):
        notes.append("control: the default recipe trained on a random reward (reward.names=[world_random], uniform "
                     "noise that ignores the image); its evaluation reports the real reward and correctness, so it "
                     "is the floor a real gain must clear.")
    notes += [comparison_note(c) for c in compared]
    if any(r.name in ABLATION_RUNS for r in runs):
        notes.append("default:<mode> rows are AdaGRPO's prompt-difficulty ablation (its paper, HPS-v3 on FLUX: "
                     "random 14.71, easiest 14.39, hardest 14.73, medium 14.87, curriculum 14.99).")
    for run in runs:
        if run.name not in RECIPES + [CONTROL] + ABLATION_RUNS:
            notes.append(f"{run.name}: configs/{run.recipe}.yaml with {', '.join(run.overrides) or 'no overrides'}.")
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per run (default 60)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per run kind (default 1)")
    parser.add_argument("--evals", type=int, default=5, help="evaluations per run after the initial one (default 5)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--threshold", type=float, default=THRESHOLD,
                        help=f"train correctness whose time to reach is reported (default {THRESHOLD})")
    parser.add_argument("--runs", default=None, help="comma-separated run kinds (default: every recipe, control "
                                                      "and default:<mode> of the ablation)")
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=RECIPE[:KEY=VALUE[,KEY=VALUE...]]",
                        help="add a variant of a recipe with overrides (repeatable)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the runs train (default cpu, the configs' device)")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/<device>/")
    parser.add_argument("--merge", default=None, metavar="FILE",
                        help="an earlier study_shapes.json (same budget, seeds, evals, jobs, threads) whose other "
                             "run kinds join this one's")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if min(args.budget, args.seeds, args.evals, args.jobs, args.threads) <= 0:
        parser.error("--budget, --seeds, --evals, --jobs and --threads must be positive")
    if not 0.0 <= args.threshold <= 1.0:
        parser.error("--threshold is a correctness fraction in [0, 1]")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    try:
        runs = select_runs(args.runs, args.extra)
    except ValueError as err:
        parser.error(str(err))
    eval_seeds = load_config(str(CONFIGS / "default.yaml")).eval_seeds
    merged = None
    if args.merge:
        try:
            merged = load_merge(args.merge, args, eval_seeds)
        except ValueError as err:
            parser.error(str(err))
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)  # the parent trains too when --jobs 1; recorded as torch_threads
    started = time.perf_counter()
    results, failures = execute(runs, args.seeds, args.budget, args.evals, args.device, args.jobs, args.threads)
    wall = time.perf_counter() - started
    cores = min(args.jobs, len(runs) * args.seeds) * args.threads
    runs = [r for r in runs if results[r.name]]
    if merged:
        results = {**{r.name: merged["curves"][r.name] for r in merged["runs"] if r.name in merged["curves"]},
                   **{r.name: results[r.name] for r in runs}}
        runs = [r for r in merge_runs(runs, merged["runs"]) if results.get(r.name)]
    results = {r.name: results[r.name] for r in runs}
    rows = [summarize(name, curves, args.threshold) for name, curves in results.items()]
    compared = comparisons(results)
    # the exact invocation, shell-quoted (--extra values keep their spaces and commas), paths repo-relative
    command = shlex.join(["python", "-m", "benchmarks.study_shapes", *argv]).replace(str(common.REPO) + "/", "")
    setup = {"command": command, "device": args.device, "cpu": common.device_name(torch.device("cpu")),
             "jobs": args.jobs, "threads_per_run": args.threads, "cores_used": cores,
             "budget_s": args.budget, "seeds": args.seeds, "evals_per_run": args.evals, "eval_seeds": eval_seeds,
             "threshold": args.threshold, "train_prompts": len(shapes.TRAIN),
             "heldout_prompts": len(shapes.HELD_OUT), "wall_s": wall}
    if merged:
        setup["merged"] = merged["history"]
    notes = study_notes(args, runs, rows, compared, eval_seeds) + [f"FAILED: {f}" for f in failures]
    folder = Path(args.out) if args.out else common.RESULTS / common.device_slug(device)
    write(folder, device, setup, runs, results, rows, compared, notes)
    plots(folder, results, args.seeds, eval_seeds)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
