"""Evaluation a user can trust: every evaluation prompt × ``eval_seeds`` fixed noise seeds, ODE samples at the
training sampler, each score as the mean with a 95% confidence interval — in the trainer (``eval_every``) and in
``fastgrpo eval RUN_DIR | CHECKPOINT | pretrained``.

Scores (``task.scores``): the reward; on the world also each reward component (``shapes.components``) and exact
correctness (``shapes.correct``, 0/1). Keys in ``metrics.jsonl``: ``eval_<set>_<score>`` (the mean) and
``eval_<set>_<score>_lo`` / ``_hi`` (the interval), sets ``train`` and (world) ``heldout``. ``fastgrpo eval``
also reports correctness and reward per group of prompts where the task defines groups (the world: per shape),
with the same interval over the group's prompts.

Noise: sample k of prompt i in set j starts from row i of randn((P, ...)) drawn with seed EVAL_SEED + 1000·j + k —
the same for every checkpoint, every batch size and any larger ``eval_seeds``, so two evaluations are paired (the
same prompts, the same noise; of the same weights, the same numbers).

The interval: a t-interval over the per-prompt means. Let y_i be prompt i's mean over its S seeds (i = 1..P),
ȳ their mean (= the mean over all P·S samples), s their sample standard deviation (n − 1); then
ȳ ± t_{0.975, P−1}·s/√P. Why prompts, not samples, are the unit: the S samples of one prompt share the prompt, so
they are correlated (a prompt the model cannot draw fails on every seed); treating P·S samples as independent would
shrink the interval by up to √S. Each y_i folds in its seeds' noise, so s measures prompt-to-prompt spread plus the
seed noise left in y_i — the cluster-robust interval for a sample of prompts (a cluster bootstrap over prompts
estimates the same variance, less stably at P = 10). It reads as "what this model would score on other prompts
like these"; for the fixed prompt list alone it is conservative. With a single prompt the seeds are the unit
(df = S − 1); with one sample there is no interval (the _lo/_hi keys are left out). Correctness intervals are not
clipped to [0, 1].

t quantiles: torch's StudentT has no icdf (NotImplementedError in torch 2.13), and scipy is not a dependency, so
``t_quantile`` inverts the exact CDF for integer df (Abramowitz & Stegun 26.7.3–4, a finite trigonometric sum) by
bisection.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..models import TextEmbeddings
from . import video
from .rollout import sample

EVAL_SEED = 12345
LEVEL = 0.95
GRID_PER_SET = 32
"""Prompts per evaluation set shown in a sample grid (seed 0)."""
_SET_LABELS = {"heldout": "held-out"}


def t_cdf(t: float, df: int) -> float:
    """P(T ≤ t) for Student's t with integer ``df`` ≥ 1: with θ = atan(|t|/√ν), A = P(|T| ≤ |t|) is
    (2/π)·(θ + sinθ·Σ_{k=0}^{(ν−3)/2} c_k cos^{2k+1}θ), c_0 = 1, c_k = c_{k−1}·2k/(2k+1) for odd ν, and
    sinθ·Σ_{k=0}^{(ν−2)/2} d_k cos^{2k}θ, d_0 = 1, d_k = d_{k−1}·(2k−1)/(2k) for even ν."""
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be an integer >= 1, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:
        term, total = c, 0.0
        for k in range((df - 1) // 2):
            if k:
                term *= c * c * (2 * k) / (2 * k + 1)
            total += term
        a = 2.0 / math.pi * (theta + s * total)
    else:
        term, total = 1.0, 0.0
        for k in range(df // 2):
            if k:
                term *= c * c * (2 * k - 1) / (2 * k)
            total += term
        a = s * total
    return 0.5 + math.copysign(0.5 * a, t)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (0 < p < 1) of Student's t with integer ``df``, by bisection on ``t_cdf`` (to 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


def interval(values: Tensor, level: float = LEVEL) -> tuple[float, float | None, float | None]:
    """(mean, lo, hi) of ``values`` (P prompts, S seeds): the t-interval over the per-prompt means (module
    docstring); lo = hi = None where there is a single sample."""
    if values.dim() != 2 or values.numel() == 0:
        raise ValueError(f"values must be (prompts, seeds) with at least one sample, got shape {tuple(values.shape)}")
    units = values.double().mean(1) if values.shape[0] > 1 else values.double()[0]
    mean = units.mean().item()
    n = units.numel()
    if n < 2:
        return mean, None, None
    half = t_quantile(0.5 + level / 2, n - 1) * units.std().item() / math.sqrt(n)
    return mean, mean - half, mean + half


def batch_size(cfg) -> int:
    """``eval_batch``, or by model where it is null: 128 samples per forward on the world, 16 on sd3 / flux."""
    return cfg.eval_batch or (128 if cfg.model.kind == "world" else 16)


def eval_noise(count: int, seed_index: int, shape, set_index: int) -> Tensor:
    """The initial noise (count, *shape) of seed ``seed_index`` for the ``count`` prompts of set ``set_index``."""
    generator = torch.Generator().manual_seed(EVAL_SEED + 1000 * set_index + seed_index)
    return torch.randn((count, *shape), generator=generator)


@dataclass
class SetResult:
    prompts: list[str]
    scores: dict[str, Tensor]
    """Score name → (P, S) values, prompts × seeds."""
    images: Tensor
    """Seed 0's images (min(P, GRID_PER_SET), C, H, W), on the CPU."""
    groups: dict[str, Tensor] = field(default_factory=dict)
    """Group name → bool mask over the prompts (the world: one per shape), from ``task.groups``."""

    @property
    def correct(self) -> Tensor | None:
        """Seed 0's correctness (bool) of the ``images``, where the task has it."""
        values = self.scores.get("correct")
        return None if values is None else values[:len(self.images), 0] > 0.5


@dataclass
class Evaluation:
    sets: dict[str, SetResult] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def metrics(self) -> dict[str, float]:
        """``eval_<set>_<score>`` (mean), ``..._lo`` / ``..._hi`` (95% interval), and ``t_eval`` (seconds)."""
        out: dict[str, float] = {}
        for name, result in self.sets.items():
            for score, values in result.scores.items():
                mean, lo, hi = interval(values)
                out[f"eval_{name}_{score}"] = mean
                if lo is not None:
                    out[f"eval_{name}_{score}_lo"], out[f"eval_{name}_{score}_hi"] = lo, hi
        out["t_eval"] = self.seconds
        return out

    def by_group(self, scores: tuple[str, ...] = ("correct", "reward")) -> dict[str, dict[str, dict]]:
        """Set → group → score → (mean, lo, hi), the same interval over the group's prompts."""
        out: dict[str, dict[str, dict]] = {}
        for name, result in self.sets.items():
            for group, mask in result.groups.items():
                out.setdefault(name, {})[group] = {score: interval(result.scores[score][mask])
                                                   for score in scores if score in result.scores and mask.any()}
        return out

    def grid(self) -> tuple[Tensor, list[str], Tensor | None]:
        """Seed 0's samples of every set for a grid: images, labels (held-out prompts marked), correctness."""
        images, labels, marks = [], [], []
        for name, result in self.sets.items():
            n = len(result.images)
            images.append(result.images)
            labels += [text if name == "train" else f"{_SET_LABELS.get(name, name)}: {text}"
                       for text in result.prompts[:n]]
            marks.append(result.correct)
        correct = None if any(m is None for m in marks) else torch.cat(marks)
        return torch.cat(images), labels, correct


@torch.no_grad()
def evaluate(backbone, denoise, task, sigmas: Tensor, sampling, *, seeds: int, batch: int,
             device: torch.device, empty: TextEmbeddings | None = None,
             autocast=contextlib.nullcontext) -> Evaluation:
    """ODE samples (Euler along ``sigmas``, ``sampling.guidance``) of every evaluation prompt × ``seeds`` fixed
    noise seeds, ``batch`` samples per forward, scored by ``task.scores``. ``denoise``: ``backbone.denoiser(model)``
    of a model in eval mode; ``empty``: the empty prompt's embedding (classifier-free guidance) or None."""
    if seeds < 1 or batch < 1:
        raise ValueError(f"seeds and batch must be >= 1, got seeds={seeds}, batch={batch}")
    started = time.perf_counter()
    result = Evaluation()
    for set_index, (name, prompts) in enumerate(task.evaluation.items()):
        count = len(prompts)
        noise = torch.cat([eval_noise(count, k, backbone.latent_shape, set_index) for k in range(seeds)])
        order = torch.arange(seeds * count) % count  # sample j: prompt j mod P, seed j div P
        parts: dict[str, list[Tensor]] = {}
        grid = []
        for start in range(0, len(order), batch):
            index = order[start:start + batch]
            part = prompts.take(index)
            n = len(part)
            uncond = None if empty is None else TextEmbeddings(empty.hidden.expand(n, -1, -1),
                                                               empty.pooled.expand(n, -1))
            with autocast():
                traj = sample(denoise, noise[start:start + n].to(device), sigmas, backbone.encode_prompts(part.texts),
                              uncond, guidance=sampling.guidance, eta=sampling.eta, family=sampling.family)
            images = backbone.decode(traj.latents)
            for key, value in video.per_video(task.scores, images, part).items():
                parts.setdefault(key, []).append(value.detach().float().cpu())
            if start < min(count, GRID_PER_SET):  # seed 0 comes first; a video as its frames side by side
                grid.append(video.preview(images[:max(0, min(count, GRID_PER_SET) - start)]).float().cpu())
        scores = {key: torch.cat(chunks).view(seeds, count).t() for key, chunks in parts.items()}
        groups = {g: m.cpu() for g, m in task.groups(prompts).items()}
        result.sets[name] = SetResult(prompts.texts, scores, torch.cat(grid), groups)
    result.seconds = time.perf_counter() - started
    return result


def paired_difference(before: dict[str, Tensor], after: dict[str, Tensor]) -> dict[str, tuple]:
    """Per score, (mean, lo, hi) of after − before over the same prompts and noise: the t-interval of the
    per-prompt differences (pairing removes the prompt-to-prompt spread both evaluations share)."""
    return {key: interval((after[key].mean(1) - before[key].mean(1)).unsqueeze(1))
            if after[key].shape[0] > 1 else interval(after[key] - before[key])
            for key in after if key in before and before[key].shape == after[key].shape}


# ---- what `fastgrpo eval` evaluates -------------------------------------------------------------------------------

def base_fingerprint(model_cfg) -> str | None:
    """The world a run trained on: sha256 of its weights file (the frozen text encoder and, under LoRA, the base
    transformer live there, not in the checkpoint). None for sd3 / flux (checked by weight names and shapes)."""
    if model_cfg.kind != "world":
        return None
    from ..world import WEIGHTS

    path = Path(model_cfg.path) if model_cfg.path else WEIGHTS
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


class TargetError(ValueError):
    """``fastgrpo eval`` / ``sample`` was given something that is not a run, a checkpoint or ``pretrained``, or a
    checkpoint of another world or model; the message names it."""


def _checkpoint_dir(target: str, command: str) -> Path:
    path = Path(target)
    if not path.exists():
        raise TargetError(f"fastgrpo {command} {target}: no such file or directory")
    if (path / "latest").is_file():
        ckpt = path / (path / "latest").read_text().strip()
        if not ckpt.is_dir():
            raise TargetError(f"fastgrpo {command} {target}: its 'latest' names {ckpt.name}, which is missing")
    else:
        ckpt = path
    from .checkpoint import SHARDS

    weights = SHARDS if (ckpt / SHARDS).is_dir() else "model.safetensors"  # a sharded (FSDP2) checkpoint, or one file
    missing = [name for name in (weights, "state.pt") if not (ckpt / name).exists()]
    if missing:
        raise TargetError(f"fastgrpo {command} {target}: not a run directory (a 'latest' file naming a checkpoint) nor a "
                         f"checkpoint (ckpt-*/ with model.safetensors and state.pt; {', '.join(missing)} missing "
                         f"in {ckpt}); evaluate the shipped weights with `fastgrpo eval pretrained`")
    return ckpt


def load_target(target: str | None, device: str | None = None, command: str = "eval"):
    """(Trainer holding the weights, iteration, label) for ``target``: None / "pretrained" (the default config and
    the shipped world), a run directory (its latest checkpoint) or a checkpoint directory. A ``TargetError`` naming
    ``target`` when it is none of these, when its world weights differ from the ones it trained on (the sha256
    recorded in the checkpoint), or when its weights do not fit the model its config names."""
    from safetensors.torch import load_file

    from . import checkpoint, distributed
    from .config import from_dict, load_config
    from .loop import Trainer

    if target in (None, "pretrained"):
        config = load_config(None, (f"device={device}",) if device else ())
        return Trainer(config), 0, "pretrained"
    ckpt = _checkpoint_dir(target, command)
    try:
        state = torch.load(ckpt / "state.pt", weights_only=True)
        saved = state["config"]
        if device:
            saved = {**saved, "device": device}
        config = from_dict(saved)
    except Exception as error:  # noqa: BLE001 — any unreadable state is the same user error
        raise TargetError(f"fastgrpo {command} {target}: {ckpt / 'state.pt'} is not a fastgrpo training state "
                         f"({type(error).__name__}: {error})") from None
    recorded, current = state.get("base"), base_fingerprint(config.model)
    if recorded is not None and current is not None and recorded != current:
        raise TargetError(f"fastgrpo {command} {target}: a checkpoint of another world — trained on world weights "
                         f"sha256 {recorded[:12]}…, but model.path={config.model.path!r} now holds {current[:12]}…; "
                         "evaluate it where that world is installed")
    trainer = Trainer(config)
    if (ckpt / checkpoint.SHARDS).is_dir():  # a sharded checkpoint, read on this one process
        names, expected = checkpoint.shard_names(ckpt), set(trainer.model.state_dict())
        if names != expected:
            raise TargetError(f"fastgrpo {command} {target}: its weights do not fit the {config.model.kind} model its "
                              f"config names (missing {sorted(expected - names)[:3]}, unexpected "
                              f"{sorted(names - expected)[:3]})")
        checkpoint.load_shards(ckpt, trainer.model)
        trainer.iteration = int(state.get("iteration", 0))
        return trainer, trainer.iteration, str(ckpt)
    weights = load_file(str(ckpt / "model.safetensors"))
    expected = trainer._weights()
    missing = sorted(set(expected) - set(weights))[:3]
    extra = sorted(set(weights) - set(expected))[:3]
    shapes = sorted(k for k in set(weights) & set(expected) if weights[k].shape != expected[k].shape)[:3]
    if missing or extra or shapes:
        raise TargetError(f"fastgrpo {command} {target}: its weights do not fit the {config.model.kind} model its config "
                         f"names (missing {missing}, unexpected {extra}, other shapes {shapes}): a checkpoint of "
                         "another world or model")
    distributed.load_weights(trainer.trained, trainer.model, weights, trainer.lora)
    trainer.iteration = int(state.get("iteration", 0))
    return trainer, trainer.iteration, str(ckpt)


def run(target: str | None, seeds: int | None = None, out: str | None = None, device: str | None = None) -> dict:
    """``fastgrpo eval``: evaluate ``target`` (see ``load_target``), print each score's mean and 95% interval, and
    write them to ``out`` (JSON) when given."""
    import json

    if seeds is not None and seeds < 1:
        raise TargetError(f"--seeds must be >= 1, got {seeds}")
    trainer, iteration, label = load_target(target, device)
    if seeds is not None:
        trainer.cfg.eval_seeds = seeds
    metrics = trainer.evaluate()
    evaluation = trainer.last_eval
    print(f"{label} (iteration {iteration}): {trainer.cfg.eval_seeds} seeds × "
          + ", ".join(f"{len(r.prompts)} {n} prompts" for n, r in evaluation.sets.items())
          + f", {evaluation.seconds:.1f} s")
    print(f"{'metric':<28}{'mean':>9}  95% CI (t over prompts)")
    for key, value in metrics.items():
        if key.startswith("eval_") and not key.endswith(("_lo", "_hi")):
            lo, hi = metrics.get(key + "_lo"), metrics.get(key + "_hi")
            ci = f"[{lo:.3f}, {hi:.3f}]" if lo is not None else "-"
            print(f"{key:<28}{value:>9.3f}  {ci}")
    groups = evaluation.by_group()
    for name, per_group in groups.items():
        for group, values in per_group.items():
            print(f"{name:<8} {group:<19}" + "  ".join(
                f"{score} {mean:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")
                for score, (mean, lo, hi) in values.items()))
    record = {"target": label, "iteration": iteration, "seeds": trainer.cfg.eval_seeds, "level": LEVEL,
              "interval": "t-interval over per-prompt means (df = prompts - 1)",
              "prompts": {n: len(r.prompts) for n, r in evaluation.sets.items()}, "seconds": evaluation.seconds,
              "metrics": metrics, "groups": groups}
    if out is not None:
        from . import atomic

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(Path(out), json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")
    return record
