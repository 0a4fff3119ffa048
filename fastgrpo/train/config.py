"""Typed training configuration: nested dataclasses, YAML files, ``key=value`` overrides, unknown keys rejected
with the nearest valid name."""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..reference.flow_step import FAMILIES, LOGPROBS

SCHEDULES = ("progressive", "frozen", "random", "linear_decay", "exp_decay")


@dataclass(kw_only=True)
class ModelConfig:
    kind: str = "world"
    """world (the embedded shapes world) | sd3 (a local StableDiffusion3Pipeline directory, SD3 / SD3.5) | flux
    (a local FluxPipeline directory)."""
    path: Optional[str] = None
    """world: its weights (safetensors; null = the weights shipped in the package); sd3 / flux: the pipeline
    directory written by ``save_pretrained`` (never downloaded)."""
    resolution: int = 512
    """sd3 / flux: image side in pixels (latents are resolution/8)."""
    dtype: str = "bf16"
    """sd3 / flux: weights of the frozen parts (text encoders, VAE, the base under LoRA): bf16 | fp16 | fp32.
    Trained weights are fp32 (LoRA adapters; the whole transformer when lora_rank = 0)."""
    lora_rank: int = 0
    """LoRA rank through peft (0 = full fine-tuning)."""
    lora_alpha: float = 0.0
    """LoRA α (0 = the rank)."""
    lora_targets: str = "to_q,to_k,to_v,to_out.0"
    """Comma-separated module names the adapter wraps (Flow-GRPO / MixGRPO: the attention projections)."""
    max_sequence_length: int = 256
    """sd3 / flux: T5 tokens per prompt."""
    flux_guidance: float = 3.5
    """flux: FLUX.1-dev's embedded guidance (models without a guidance embedding ignore it)."""
    text_cache: int = 512
    """Prompts whose text embeddings are kept (each distinct prompt is encoded once while it stays)."""
    gradient_checkpointing: bool = False
    """Recompute the transformer's activations in the backward (memory for time)."""
    autocast: bool = False
    """bf16 autocast of every transformer forward — rollouts and training alike, so the first ratio stays 1."""

    def target_modules(self) -> list[str]:
        return [t.strip() for t in str(self.lora_targets or "").split(",") if t.strip()]

    def __post_init__(self):
        if self.kind not in ("world", "sd3", "flux"):
            raise ValueError(f"model.kind must be world, sd3 or flux, got {self.kind!r}")
        if self.dtype not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"model.dtype must be bf16, fp16 or fp32, got {self.dtype!r}")
        if self.lora_rank < 0 or self.lora_alpha < 0:
            raise ValueError("model.lora_rank and model.lora_alpha must be >= 0")
        if self.lora_rank > 0 and not self.target_modules():
            raise ValueError("model.lora_targets is empty: name the modules the adapter wraps")
        if self.resolution < 16 or self.max_sequence_length < 1 or self.text_cache < 1:
            raise ValueError("model.resolution must be >= 16, model.max_sequence_length and model.text_cache >= 1")


@dataclass(kw_only=True)
class DataConfig:
    train_prompts: Optional[str] = None
    """sd3 / flux: a text file, one training prompt per line (the world uses its own prompts)."""
    eval_prompts: Optional[str] = None
    """Prompts evaluated on fixed seeds (a text file; null = the first eval_count training prompts)."""
    eval_count: int = 16

    def __post_init__(self):
        if self.eval_count < 1:
            raise ValueError(f"data.eval_count must be >= 1, got {self.eval_count}")


@dataclass(kw_only=True)
class RewardConfig:
    names: str = "world"
    """Comma-separated registered rewards (fastgrpo.rewards), e.g. "pickscore,hpsv2"; "world" = the shapes
    world's programmatic reward (only with model.kind world)."""
    weights: str = ""
    """Comma-separated weights, one per name (empty = all 1)."""
    paths: str = ""
    """name=directory pairs, comma-separated, e.g. "pickscore=/models/PickScore_v1,hpsv2=/models/hps"."""
    aggregate: str = "sum_zscore"
    """Several rewards: z-score the weighted sum (Flow-GRPO, sum_zscore) or sum the weighted per-reward
    z-scores (DanceGRPO / MixGRPO, zscore_sum)."""
    batch_size: int = 32

    def name_list(self) -> list[str]:
        return [n.strip() for n in str(self.names or "").split(",") if n.strip()]

    def weight_list(self) -> list[float]:
        names = self.name_list()
        if not str(self.weights or "").strip():
            return [1.0] * len(names)
        try:
            weights = [float(w) for w in str(self.weights).split(",")]
        except ValueError:
            raise ValueError(f"reward.weights={self.weights!r} must be comma-separated numbers") from None
        if len(weights) != len(names):
            raise ValueError(f"reward.weights has {len(weights)} entries for {len(names)} reward.names")
        return weights

    def path_map(self) -> dict[str, str]:
        out = {}
        for item in str(self.paths or "").split(","):
            if not item.strip():
                continue
            if "=" not in item:
                raise ValueError(f"reward.paths entry {item!r} must look like name=directory")
            name, path = item.split("=", 1)
            if name.strip() not in self.name_list():
                raise ValueError(f"reward.paths names {name.strip()!r}, which is not in reward.names={self.names!r}")
            out[name.strip()] = path.strip()
        return out

    def __post_init__(self):
        if not self.name_list():
            raise ValueError("reward.names is empty: name at least one reward")
        if self.aggregate not in ("sum_zscore", "zscore_sum"):
            raise ValueError(f"reward.aggregate must be sum_zscore or zscore_sum, got {self.aggregate!r}")
        if self.batch_size < 1:
            raise ValueError(f"reward.batch_size must be >= 1, got {self.batch_size}")
        self.weight_list()
        self.path_map()


@dataclass(kw_only=True)
class SamplingConfig:
    steps: int = 10
    """T, denoising steps per rollout."""
    shift: float = 3.0
    """SD3 time shift of the σ schedule."""
    eta: float = 0.7
    """Noise level η of the SDE steps."""
    family: str = "flow_sde"
    """Step family inside the window (fastgrpo.ops.flow_step)."""
    guidance: float = 1.0
    """Classifier-free guidance scale in sampling and training (1 = off)."""
    logprob: str = "full"
    """Log-prob convention: full | quadratic (AdaGRPO, DanceGRPO) | cps (Flow-CPS, with family cps only)."""
    shared_noise: bool = False
    """All samples of a group start from the same initial noise (DanceGRPO, MixGRPO)."""

    def __post_init__(self):
        if self.logprob not in LOGPROBS:
            raise ValueError(f"sampling.logprob must be one of {LOGPROBS}, got {self.logprob!r}")
        if (self.logprob == "cps") != (self.family == "cps"):
            raise ValueError(f"sampling.logprob={self.logprob!r} contradicts sampling.family={self.family!r}: the "
                             "unscaled cps log-prob (and its clip ranges) belongs to the cps step, and only there")
        if self.steps < 2:
            raise ValueError(f"sampling.steps must be >= 2, got {self.steps}")
        if self.family not in FAMILIES or self.family == "ode":
            raise ValueError(f"sampling.family must be an SDE family of {FAMILIES[:-1]}, got {self.family!r}")
        if self.eta <= 0:
            raise ValueError(f"sampling.eta must be > 0 (the SDE steps need noise), got {self.eta}")


@dataclass(kw_only=True)
class WindowConfig:
    size: int = 4
    """SDE (and trained) steps per rollout, MixGRPO's w."""
    stride: int = 1
    """Steps the window moves at each shift."""
    shift_interval: int = 10
    """Iterations between window moves, MixGRPO's τ (25 over its 300 iterations; 10 for 40-iteration runs)."""
    schedule: str = "progressive"
    """progressive | frozen | random | linear_decay | exp_decay."""
    flash: bool = True
    """MixGRPO-Flash: after the window, DPM-Solver++ 2M on a coarser grid (the default job; each recipe config
    says whether it uses it)."""
    flash_ratio: float = 0.4
    """Flash: post-window points n = max(1, int((T − last)·r))."""
    train_fraction: float = 1.0
    """Fraction of the window's SDE steps trained per iteration, drawn at random (DanceGRPO: 0.6 of all steps)."""

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"window.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.size < 1 or self.stride < 1 or self.shift_interval < 1:
            raise ValueError("window.size, window.stride and window.shift_interval must be >= 1")
        if not 0 < self.flash_ratio <= 1:
            raise ValueError(f"window.flash_ratio must be in (0, 1], got {self.flash_ratio}")
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"window.train_fraction must be in (0, 1], got {self.train_fraction}")


@dataclass(kw_only=True)
class BranchConfig:
    enabled: bool = False
    """G²RPO's singular stochastic sampling instead of a window: ODE trunk, one SDE step branching G samples."""
    points: str = "0,1,2,3"
    """Branch points k (comma-separated steps; G²RPO uses the first half of the schedule)."""
    strides: str = "1,2"
    """Λ: ODE strides that finish each branch; per-λ group z-scores are summed (G²RPO's code: 1,2; paper 1,2,3)."""

    def lists(self) -> tuple[list[int], list[int]]:
        try:
            points = [int(p) for p in str(self.points or "").split(",") if p.strip()]
            strides = [int(p) for p in str(self.strides or "").split(",") if p.strip()]
        except ValueError:
            raise ValueError("branch.points and branch.strides are comma-separated integers") from None
        return points, strides

    def __post_init__(self):
        points, strides = self.lists()
        if not points:
            raise ValueError("branch.points is empty: give at least one branch step")
        if not strides or min(strides) < 1:
            raise ValueError("branch.strides (Λ) must be a non-empty list of integers >= 1")


@dataclass(kw_only=True)
class StepwiseConfig:
    enabled: bool = False
    """Stepwise-Flow-GRPO: per-step gains g = R(x̂0 after the step) − R(x̂0 before it), normalised jointly over
    each group's G×T gains; x̂0(t) from a short deterministic ODE run from x_t."""
    substeps: int = 5
    """T': ODE steps that refine x̂0(t) (the paper finds 2, 5 and 8 alike)."""

    def __post_init__(self):
        if self.substeps < 1:
            raise ValueError(f"stepwise.substeps must be >= 1, got {self.substeps}")


@dataclass(kw_only=True)
class AdaGRPOConfig:
    curriculum: bool = True
    """Online curriculum filtering: train the candidates whose ODE anchor reward is nearest the capability EMA."""
    candidates: int = 8
    """B: candidate prompts per iteration (one deterministic anchor rollout each)."""
    anchor_steps: int = 4
    """Steps of the anchor rollouts: 0 = sampling.steps (Euler, as the paper); n > 0 = n DPM-Solver++ 2M steps,
    a cheaper anchor."""
    keep: int = 4
    """k: prompts trained per iteration (without the curriculum, k random prompts)."""
    decay: float = 0.8
    """α of the capability EMA."""
    selection: str = "curriculum"
    """With curriculum on: curriculum (nearest μ_ema) | random | easiest | hardest | median — AdaGRPO's ablation."""
    fusion: bool = True
    """Cross-level fusion: add the calibrated global EMA advantage to the group advantage."""
    fusion_weight: float = 1.0

    def __post_init__(self):
        if self.selection not in ("curriculum", "random", "easiest", "hardest", "median"):
            raise ValueError(f"adagrpo.selection must be curriculum, random, easiest, hardest or median, "
                             f"got {self.selection!r}")
        if self.anchor_steps < 0:
            raise ValueError(f"adagrpo.anchor_steps must be >= 0 (0 = sampling.steps), got {self.anchor_steps}")
        if not 1 <= self.keep <= self.candidates:
            raise ValueError(f"adagrpo.keep must be in [1, adagrpo.candidates={self.candidates}], got {self.keep}")


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 3e-5
    """AdamW step size (3e-4 degraded the pretrained world within 10 iterations here; 3e-5 held and nudged it up)."""
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    clip_range: float = 1e-4
    """PPO ε."""
    adv_clip: float = 5.0
    adv_std: str = "unbiased"
    """Group std of the advantages: unbiased (DanceGRPO, MixGRPO, AdaGRPO) or population (Flow-GRPO)."""
    adv_eps: float = 1e-8
    """ε in (r − mean)/(std + ε): 1e-8 (DanceGRPO, MixGRPO, AdaGRPO) or 1e-4 (Flow-GRPO)."""
    max_nonfinite: int = 3
    """Iterations in a row with a non-finite reward or loss (each skipped, its update dropped) before the run
    stops with an error."""
    kl_beta: float = 0.0
    """β of Flow-GRPO's KL, mean((μ − μ_ref)²)/(2g²), to the initial model (0: no reference model kept)."""

    def __post_init__(self):
        if not (self.lr > 0 and self.kl_beta >= 0 and self.grad_clip > 0):  # NaN fails too
            raise ValueError("optim.lr and optim.grad_clip must be > 0 and optim.kl_beta >= 0")
        if self.max_nonfinite < 1:
            raise ValueError(f"optim.max_nonfinite must be >= 1, got {self.max_nonfinite}")
        if self.adv_std not in ("unbiased", "population"):
            raise ValueError(f"optim.adv_std must be 'unbiased' or 'population', got {self.adv_std!r}")


@dataclass(kw_only=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    branch: BranchConfig = field(default_factory=BranchConfig)
    stepwise: StepwiseConfig = field(default_factory=StepwiseConfig)
    adagrpo: AdaGRPOConfig = field(default_factory=AdaGRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    iterations: int = 40
    group_size: int = 16
    """G: samples per prompt."""
    seed: int = 0
    eval_every: int = 10
    checkpoint_every: int = 10
    out_dir: str = "runs/default"
    device: str = "cpu"
    distributed: str = "ddp"
    """Under torchrun: ddp (replicated weights) or fsdp (FSDP2 fully_shard per transformer block)."""

    def __post_init__(self):
        if self.distributed not in ("ddp", "fsdp"):
            raise ValueError(f"distributed must be ddp or fsdp, got {self.distributed!r}")
        if (self.model.kind == "world") != (self.reward.name_list() == ["world"]):
            raise ValueError(f"reward.names={self.reward.names!r} with model.kind={self.model.kind!r}: the shapes "
                             "world is scored by its own reward ('world'), and only it")
        if self.model.kind != "world" and self.data.train_prompts is None:
            raise ValueError(f"data.train_prompts is required for model.kind={self.model.kind!r}: a text file with "
                             "one prompt per line")
        if self.window.size > self.sampling.steps - 1:
            raise ValueError(f"window.size={self.window.size} must be < sampling.steps={self.sampling.steps}")
        points, _ = self.branch.lists()
        if self.branch.enabled and not 0 <= min(points) <= max(points) <= self.sampling.steps - 2:
            raise ValueError(f"branch.points={self.branch.points!r} must lie in 0..sampling.steps-2 "
                             f"({self.sampling.steps - 2})")
        if self.stepwise.enabled and (self.branch.enabled or self.window.flash or self.adagrpo.fusion):
            raise ValueError("stepwise.enabled trains per-step gains of the window's SDE steps: it excludes "
                             "branch.enabled, window.flash and adagrpo.fusion (a per-sample global advantage)")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a group needs spread), got {self.group_size}")
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def _nearest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build(cls, values: dict, prefix: str = ""):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"unknown config key {prefix + key!r}{_nearest(key, fields)}")
        f = fields[key]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            if not isinstance(value, dict):
                raise ValueError(f"config key {prefix + key!r} is a section; give its fields")
            kwargs[key] = _build(sub, value, prefix + key + ".")
        else:
            kwargs[key] = _coerce(prefix + key, f.type, value)
    return cls(**kwargs)


def _coerce(name: str, annotation, value):
    kind = str(annotation)
    try:
        if value is None and "Optional" in kind:
            return None
        if "bool" in kind:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if "int" in kind and "float" not in kind:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if "float" in kind:
            return float(value)
        return str(value) if value is not None else None
    except (TypeError, ValueError):
        raise ValueError(f"config key {name!r} expects {kind}, got {value!r}") from None


RECIPES = Path(__file__).resolve().parents[1] / "configs"
"""The recipe configs shipped in the package (the repository's ``configs/`` links here)."""


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def resolve_config(path: str) -> Path:
    """A YAML file, or the name of a shipped recipe (``mixgrpo`` → ``fastgrpo/configs/mixgrpo.yaml``)."""
    if Path(path).is_file():
        return Path(path)
    if (RECIPES / f"{path}.yaml").is_file() and "/" not in path:
        return RECIPES / f"{path}.yaml"
    raise FileNotFoundError(f"--config {path!r}: no such file, nor a shipped recipe "
                            f"({', '.join(recipe_names())}){_nearest(path, recipe_names())}")


def load_config(path: Optional[str] = None, overrides: tuple[str, ...] = ()) -> TrainConfig:
    """Defaults ← YAML file (or shipped recipe name) ← ``key=value`` overrides (dotted keys: ``window.size=2``).
    No file: the dataclass defaults, which are the shipped ``default`` recipe."""
    import yaml

    values: dict[str, Any] = {}
    if path is not None:
        with open(resolve_config(path)) as fh:
            values = yaml.safe_load(fh) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: the config file must hold a mapping of keys")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. window.size=2)")
        key, raw = item.split("=", 1)
        node = values
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"config key {key!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return _build(TrainConfig, values)


def dump_config(config: TrainConfig, path) -> None:
    import yaml

    with open(path, "w") as fh:
        yaml.safe_dump(to_dict(config), fh, sort_keys=False)
