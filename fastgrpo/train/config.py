"""The training configuration: typed sections (pydantic models), loaded from YAML and ``key=value`` overrides.

pydantic (2.x) validates and converts every value — closed choices are ``Literal``s, lists are lists, bounds are
field constraints, and each section's cross-checks are its ``_check`` — and rejects unknown keys; this module only
reads the files and the command line and turns a ``ValidationError`` into one message per wrong key, naming the
dotted key (and the nearest valid name for an unknown one). Chosen over OmegaConf structured configs (no
``Literal``, no nearest-name hint) and tyro (a CLI generator: our overrides are ``key=value`` in the style of the
peers' configs, and YAML recipes come first); pydantic is already in the lock.

Command-line values are read as YAML scalars or flow collections (``window.size=2``, ``reward.names=[a, b]``,
``model.path=null``). Two shorthands stay for lists and mappings: comma-separated text (``branch.points=0,1``,
``reward.paths=pickscore=/a,hpsv2=/b``; an empty value is an empty list) — the form a shell user types, and the
form the config.yaml of runs from before the lists holds."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Optional, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..models.attention import BACKENDS as ATTENTION_BACKENDS
from ..models.compile import SCOPES as COMPILE_SCOPES
from ..models.fp8 import MODES as FP8_MODES
from ..reference.flow_step import FAMILIES, LOGPROBS
from .overlap import SCHEDULES as REWARD_SCHEDULES

SCHEDULES = ("progressive", "frozen", "random", "linear_decay", "exp_decay")
SDE_FAMILIES = tuple(f for f in FAMILIES if f != "ode")
METHOD_NAMES = ("grpo", "nft", "awm", "dgpo")


class Section(BaseModel):
    """A config section: unknown keys are errors, field docstrings are the field descriptions, numbers given to a
    string key (``out_dir=2026``) become text, a bool given to a number is refused (YAML reads ``yes`` as true)."""
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, coerce_numbers_to_str=True)

    @field_validator("*", mode="before")
    @classmethod
    def _command_line_forms(cls, value, info):
        annotation = cls.model_fields[info.field_name].annotation
        origin, args = get_origin(annotation), get_args(annotation)
        if isinstance(value, str) and origin is list:  # "a,b" → [a, b]; "" → []
            value = [item.strip() for item in value.split(",") if item.strip()]
        elif origin is list and isinstance(value, (int, float)):  # branch.points=2 → [2]
            value = [value]
        elif isinstance(value, str) and origin is dict:  # "a=1,b=2" → {a: 1, b: 2}
            items = [item.strip() for item in value.split(",") if item.strip()]
            if any("=" not in item for item in items):
                raise PydanticCustomError("config_mapping", "expects a mapping, e.g. a=1,b=2 or {a: 1, b: 2}")
            value = dict(tuple(part.strip() for part in item.split("=", 1)) for item in items)
        if {annotation, *args} & {int, float}:  # int, float, Optional[int], list[int], list[float]
            for item in value if origin is list and isinstance(value, list) else [value]:
                if isinstance(item, bool):
                    raise PydanticCustomError("config_bool", "expects a number, not true/false")
        return value


class ModelConfig(Section):
    kind: Literal["world", "sd3", "flux", "flux2", "qwenimage", "zimage", "wan"] = "world"
    """world (the embedded shapes world) | sd3 (a local StableDiffusion3Pipeline directory, SD3 / SD3.5) | flux
    (a local FluxPipeline directory) | flux2 (a local Flux2KleinPipeline or Flux2Pipeline directory, FLUX.2 [klein]
    or [dev]) | qwenimage (a local QwenImagePipeline directory) | zimage (a local ZImagePipeline directory) | wan (a
    local WanPipeline directory: Wan2.1, Wan2.2 A14B with its two experts, Wan2.2 TI2V; text-to-video)."""
    path: Optional[str] = None
    """world: its weights (safetensors; null = the weights shipped in the package); sd3 / flux: the pipeline
    directory written by ``save_pretrained`` (never downloaded)."""
    resolution: int = Field(512, ge=16)
    """The pipeline models: image (frame) side in pixels (latents are resolution/8)."""
    frames: int = Field(1, ge=1)
    """wan: frames per video (frames − 1 a multiple of the VAE's temporal factor, 4: e.g. 81 = 5 s at 16 fps); the
    image models make one (a value other than 1 with them is an error)."""
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    """sd3 / flux: weights of the frozen parts (text encoders, VAE, the base under LoRA): bf16 | fp16 | fp32.
    Trained weights are fp32 (LoRA adapters; the whole transformer when lora_rank = 0)."""
    lora_rank: int = Field(8, ge=0)
    """LoRA rank through peft (0 = full fine-tuning). 8 on the world: full fine-tuning with AdamW drifts (Adam moves
    each weight ≈ lr per step whatever the signal; a random-reward control lost 0.11 correctness in 40 iterations)."""
    lora_alpha: float = Field(0.0, ge=0)
    """LoRA α (0 = the rank)."""
    lora_targets: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj",
                                                             "add_k_proj", "add_v_proj", "ff.net.0.proj",
                                                             "ff.net.2", "proj_out"])
    """Module names the adapter wraps, peft's suffix match. Default: the image and text attention projections, the
    image feed-forward and the output projection — on the world (2026-12-06, seed 0, 100 iterations, an earlier
    pretraining of the shipped recipe) the attention projections alone lifted training-prompt correctness
    0.565 → 0.858 and these 0.565 → 0.923, for ≈ 12% more time per iteration. The SD3 / FLUX recipes name their
    own (Flow-GRPO / MixGRPO: attention only)."""
    max_sequence_length: int = Field(256, ge=1)
    """sd3 / flux: T5 tokens per prompt."""
    flux_guidance: float = 3.5
    """flux / flux2: the embedded guidance of a guidance-distilled model (FLUX.1 [dev]; FLUX.2 [dev], whose
    pipeline's default is 4.0); models without a guidance embedding ignore it."""
    guidance_2: Optional[float] = Field(None, ge=0)
    """wan, a two-expert Wan2.2 A14B pipeline: the CFG scale of the low-noise expert's steps (its pipeline's
    ``guidance_scale_2``); null: ``sampling.guidance`` on every step. CFG runs only when ``sampling.guidance`` > 1,
    as in the pipeline."""
    text_cache: int = Field(512, ge=1)
    """Prompts whose text embeddings are kept (each distinct prompt is encoded once while it stays)."""
    free_text_encoders: bool = True
    """Pipeline models (every kind but world): encode every training and evaluation prompt (and the empty one for
    guidance) at start, then drop the text encoders (T5-XXL alone is ≈ 9 GiB in bf16). Kept when the prompts
    outnumber ``text_cache``. The embeddings are those the lazy cache would compute (each prompt encoded alone)."""
    gradient_checkpointing: bool = False
    """Recompute the transformer's activations in the backward (memory for time)."""
    compile: bool = False
    """torch.compile of the transformer (fastgrpo/models/compile.py; what: ``compile_scope``), rollout and
    training alike. Off by default: on the world's default job (2-core CPU, 2026-12-07, ``fastgrpo bench
    default_job``) the whole transformer compiled ran 1.43–1.60 s per iteration against 2.60 s eager, but its
    first iteration took 114 s from an empty inductor cache (11.3 s warm) — a fresh machine's first 80-iteration
    run ends ≈ 20 s later, a second run or a longer one gains (on a 2-core AMD EPYC the same day: 3.85 s against
    4.86 s, 1.26×). Where compilation is impossible (no C++ compiler, no triton on CUDA, an old torch) one warning
    names the reason and the run goes on eager."""
    compile_scope: Literal[COMPILE_SCOPES] = "transformer"
    """What ``compile`` compiles: the whole transformer forward (on the world 1.62–1.82× eager) or each repeated
    block (regional: 1.17–1.28× on the world — the Python around the blocks stays — but one block traced and its
    code reused, far less compile time on a 24- or 57-block SD3.5 / FLUX, and the form FSDP2's per-block sharding
    expects, as in torchtitan)."""
    attention_backend: Literal[tuple(ATTENTION_BACKENDS)] = "native"
    """The attention kernel (fastgrpo/models/attention.py, through diffusers' dispatcher): native (torch SDPA,
    which picks FlashAttention-2 / memory-efficient / cuDNN / math itself) | native_math (CPU and CUDA) | flex |
    native_flash | native_efficient | native_cudnn | flash (flash-attn) | flash3 | sage (SageAttention 2) |
    xformers (CUDA only; the packages are never required). One not installed, or a CUDA-only one on CPU,
    is an error naming it. Default native: on this CPU (2026-12-07, ``fastgrpo bench attention``) it ran one SD3.5-M
    joint attention 2.1× faster than native_math forward and 1.6× with the backward; GPU comparison pending. The
    choice is logged at start."""
    autocast: bool = False
    """bf16 autocast of every transformer forward — rollouts and training alike, so the first ratio stays 1."""
    base_fp8: Literal[FP8_MODES] = "none"
    """Under LoRA: the frozen base's linear layers in the transformer blocks stored as float8 e4m3 through torchao
    (fastgrpo/models/fp8.py), per output channel, for every forward — rollouts, replays, the KL reference and
    evaluation, so the first ratio stays exactly 1 and the adapter learns against the base it samples with.
    none | weight (weight-only: half a bf16 base's memory, any device) | dynamic (activations per row too: fp8
    tensor-core matmuls, CUDA compute capability ≥ 8.9). On the world (CPU, float32 base, 2026-12-07) ``weight``
    moved the velocity by 0.9–1.3% and a sample's per-step log-prob by up to 9.2e-4 against the unquantised base;
    speed on a GPU pending. Needs ``pip install 'fastgrpo[fp8]'``."""

    @model_validator(mode="after")
    def _check(self):
        if self.kind != "wan" and self.frames != 1:
            raise ValueError(f"model.frames={self.frames} is a video setting; model.kind={self.kind} makes images "
                             "(model.kind=wan for video)")
        if self.kind != "wan" and self.guidance_2 is not None:
            raise ValueError(f"model.guidance_2={self.guidance_2} is the low-noise expert's scale of a two-expert "
                             f"Wan2.2 pipeline; model.kind={self.kind} has one transformer")
        if self.base_fp8 != "none" and self.lora_rank == 0:
            raise ValueError(f"model.base_fp8={self.base_fp8} quantises the frozen base under LoRA; model.lora_rank=0 "
                             "trains every weight (set model.lora_rank > 0, or model.base_fp8=none)")
        if self.lora_rank > 0 and not self.lora_targets:
            raise ValueError("model.lora_targets is empty: name the modules the adapter wraps")
        return self


class DataConfig(Section):
    train_prompts: Optional[str] = None
    """sd3 / flux: a text file, one training prompt per line (the world uses its own prompts)."""
    eval_prompts: Optional[str] = None
    """Prompts evaluated on fixed seeds (a text file; null = the first eval_count training prompts)."""
    eval_count: int = Field(16, ge=1)


class RewardConfig(Section):
    names: list[str] = Field(default_factory=lambda: ["world"])
    """Registered rewards (fastgrpo.rewards), e.g. [pickscore, hpsv2]; world = the shapes world's programmatic
    reward (only with model.kind world); world_random = the random-reward control on the world (uniform noise that
    ignores the image; evaluation still reports the real reward and correctness)."""
    weights: list[float] = Field(default_factory=list)
    """One weight per name (empty = all 1)."""
    paths: dict[str, str] = Field(default_factory=dict)
    """name → weights directory, e.g. {pickscore: /models/PickScore_v1, hpsv2: /models/hps}."""
    aggregate: Literal["sum_zscore", "zscore_sum"] = "sum_zscore"
    """Several rewards: z-score the weighted sum (Flow-GRPO, sum_zscore) or sum the weighted per-reward
    z-scores (DanceGRPO / MixGRPO, zscore_sum)."""
    batch_size: int = Field(32, ge=1)
    """Images per scorer call (the reward models' micro-batch)."""
    schedule: Literal[("auto", *REWARD_SCHEDULES)] = "auto"
    """When a rollout's rewards are computed: each group's as soon as it is sampled (inline), every group's in one
    decode + reward call after the rollout (batched), or each group's in a worker thread — its own CUDA stream —
    while the next group rolls out (overlap). Same rewards either way (fastgrpo/train/overlap.py). auto: overlap
    when a reward waits on a server (remote:NAME, vlm_judge), else inline — on the world's default job on 2 CPU
    cores (2026-12-07, ``fastgrpo bench reward_schedule``) batched ran 1.01× (noise) and overlap 0.72× (the
    worker's OpenMP threads spin and take the cores from the rollout); GPU comparison pending. Rollouts with
    branches (branch.enabled) or per-step rewards (stepwise.enabled), AdaGRPO's anchors and evaluations score
    inline whatever this says. The schedule in use is logged at start."""

    @model_validator(mode="after")
    def _check(self):
        if not self.names:
            raise ValueError("reward.names is empty: name at least one reward")
        if self.weights and len(self.weights) != len(self.names):
            raise ValueError(f"reward.weights has {len(self.weights)} entries for {len(self.names)} reward.names")
        unknown = sorted(set(self.paths) - set(self.names))
        if unknown:
            raise ValueError(f"reward.paths names {unknown}, not in reward.names={self.names}")
        return self


class SamplingConfig(Section):
    steps: int = Field(10, ge=2)
    """T, denoising steps per rollout."""
    shift: float | Literal["auto"] = 3.0
    """Time shift s of the σ schedule, σ = s·t/(1 + (s − 1)·t) (SD3's). auto (pipeline models): the shift the
    pipeline itself samples with at this resolution and T — its scheduler's exp(μ) when it shifts by resolution
    (FLUX, Qwen-Image, Z-Image, FLUX.2), else its fixed shift (Wan's flow_shift); resolved when the model loads and
    saved as the number in the run's config.yaml."""
    eta: float = Field(0.7, gt=0)
    """Noise level η of the SDE steps."""
    family: Literal[SDE_FAMILIES] = "flow_sde"
    """Step family inside the window (fastgrpo.ops.flow_step); the SDE families (the SDE steps need noise)."""
    guidance: float = 1.0
    """Classifier-free guidance scale in sampling and training (1 = off)."""
    logprob: Literal[LOGPROBS] = "full"
    """Log-prob convention: full | quadratic (AdaGRPO, DanceGRPO) | cps (Flow-CPS, with family cps only)."""
    shared_noise: bool = False
    """All samples of a group start from the same initial noise (DanceGRPO, MixGRPO)."""

    @model_validator(mode="after")
    def _check(self):
        if (self.logprob == "cps") != (self.family == "cps"):
            raise ValueError(f"sampling.logprob={self.logprob!r} contradicts sampling.family={self.family!r}: the "
                             "unscaled cps log-prob (and its clip ranges) belongs to the cps step, and only there")
        return self


class WindowConfig(Section):
    size: int = Field(4, ge=1)
    """SDE (and trained) steps per rollout, MixGRPO's w."""
    stride: int = Field(1, ge=1)
    """Steps the window moves at each shift."""
    shift_interval: int = Field(25, ge=1)
    """Iterations between window moves, MixGRPO's τ (25 over its 300 iterations); progressive schedule only."""
    schedule: Literal[SCHEDULES] = "frozen"
    """progressive | frozen | random | linear_decay | exp_decay. The default job keeps the window on the first
    (highest-σ) steps, where the world's shape is chosen: on the shipped weights (seed 1, 80 iterations) frozen
    reached 0.895 training-prompt correctness, progressive (τ 20, windows at steps 0–3) 0.842, and progressive
    at lr 1.5e-3 collapsed to 0.002 once the window reached step 3. MixGRPO's recipes slide it (progressive)."""
    flash: bool = True
    """MixGRPO-Flash: after the window, DPM-Solver++ 2M on a coarser grid (the default job; each recipe config
    says whether it uses it)."""
    flash_ratio: float = Field(0.4, gt=0, le=1)
    """Flash: post-window points n = max(1, int((T − last)·r)) (MixGRPO's grid)."""
    flash_min_steps: int = Field(4, ge=1)
    """Flash: at least this many DPM-Solver++ steps after the window (at most the T − end the schedule has left).
    Fewer scored blurry images: at T = 10 one step kept a within-group reward correlation of 0.53–0.86 with a
    fine finish, four ≥ 0.93 (fastgrpo/train/schedule.py)."""
    train_fraction: float = Field(1.0, gt=0, le=1)
    """Fraction of the window's SDE steps trained per iteration, drawn at random (DanceGRPO: 0.6 of all steps)."""
    random_range: Optional[list[int]] = None
    """``random`` schedule: [a, b) — the window lies inside steps a .. b − 1, its start drawn uniformly from
    a .. b − size (Flow-GRPO's ``sde_window_range``, e.g. [0, T/2]; Flow-Factory's ``sde_steps`` [1, 2, 3] with one
    step: size 1, [1, 4]); null: anywhere in 0 .. T − 2."""

    @model_validator(mode="after")
    def _check(self):
        if self.random_range is None:
            return self
        if self.schedule != "random":
            raise ValueError(f"window.random_range is an option of window.schedule=random, not {self.schedule!r}")
        if len(self.random_range) != 2 or not 0 <= self.random_range[0] < self.random_range[1]:
            raise ValueError(f"window.random_range={self.random_range} must be [a, b] with 0 <= a < b")
        if self.random_range[1] - self.random_range[0] < self.size:
            raise ValueError(f"window.random_range={self.random_range} is narrower than window.size={self.size}")
        return self


class BranchConfig(Section):
    enabled: bool = False
    """G²RPO's singular stochastic sampling instead of a window: ODE trunk, one SDE step branching G samples."""
    points: list[int] = Field(default_factory=lambda: [0, 1, 2, 3])
    """Branch points k, steps of the schedule (G²RPO uses its first half)."""
    strides: list[int] = Field(default_factory=lambda: [1, 2])
    """Λ: ODE strides that finish each branch; per-λ group z-scores are summed (G²RPO's code: 1, 2; its paper
    1, 2, 3)."""
    pave_splits: list[int] = Field(default_factory=list)
    """Pave-GRPO (arXiv 2606.01636): S, the n-way decompositions of each branch step whose log-probs join the loss
    (released {2, 3}; empty = off). Each n ≥ 2 costs n − 1 extra forwards with grad per step."""
    noise_weight: bool = False
    """TempFlow-GRPO's noise-aware weighting (arXiv 2508.04324): the surrogate of the branch at step k × c·s_k,
    s_k its noise std (sqrt|Δσ| included), c = 1/mean(s_k) over the iteration's branch points (the released code
    hard-codes 2.25 for SD3.5-M at η 0.7, T = 10; computed here, so it follows η and T)."""

    @model_validator(mode="after")
    def _check(self):
        if not self.points:
            raise ValueError("branch.points is empty: give at least one branch step")
        if any(n < 2 for n in self.pave_splits):
            raise ValueError(f"branch.pave_splits={self.pave_splits}: every split must be >= 2 (n = 1 is the coarse "
                             "step itself, already trained)")
        if not self.strides or min(self.strides) < 1:
            raise ValueError("branch.strides (Λ) must be a non-empty list of integers >= 1")
        return self


class StepwiseConfig(Section):
    enabled: bool = False
    """Stepwise-Flow-GRPO: per-step gains g = R(x̂0 after the step) − R(x̂0 before it), normalised jointly over
    each group's G×T gains; x̂0(t) from a short deterministic ODE run from x_t."""
    substeps: int = Field(5, ge=1)
    """T': ODE steps that refine x̂0(t) (the paper finds 2, 5 and 8 alike)."""


class AdaGRPOConfig(Section):
    curriculum: bool = True
    """Online curriculum filtering: train the candidates whose ODE anchor reward is nearest the capability EMA."""
    candidates: int = Field(8, ge=1)
    """B: candidate prompts per iteration (one deterministic anchor rollout each)."""
    anchor_steps: int = Field(4, ge=0)
    """Steps of the anchor rollouts: 0 = sampling.steps (Euler, as the paper); n > 0 = n DPM-Solver++ 2M steps,
    a cheaper anchor."""
    keep: int = 4
    """k: prompts trained per iteration (without the curriculum, k random prompts)."""
    decay: float = Field(0.8, ge=0, le=1)
    """α of the capability EMA."""
    selection: Literal["curriculum", "random", "easiest", "hardest", "median"] = "curriculum"
    """With curriculum on: curriculum (nearest μ_ema) | random | easiest | hardest | median — AdaGRPO's ablation."""
    fusion: bool = True
    """Cross-level fusion: add the calibrated global EMA advantage to the group advantage."""
    fusion_weight: float = 1.0

    @model_validator(mode="after")
    def _check(self):
        if not 1 <= self.keep <= self.candidates:
            raise ValueError(f"adagrpo.keep must be in [1, adagrpo.candidates={self.candidates}], got {self.keep}")
        return self


class OptimConfig(Section):
    lr: float = Field(1e-3, gt=0)
    """AdamW step size. On the shipped world (LoRA r8, seed 1, 80 iterations) 1e-3 lifts training-prompt
    correctness 0.562 → 0.895 with the frozen window; 1.5e-3 with MixGRPO's sliding window collapsed (0.002). On the
    previous weights 2e-3 lowered correctness and full fine-tuning degraded at 3e-4."""
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    clip_range: float = Field(1e-4, gt=0)
    """PPO ε."""
    adv_clip: float = Field(5.0, gt=0)
    adv_std: Literal["unbiased", "population"] = "unbiased"
    """Group std of the advantages: unbiased (DanceGRPO, MixGRPO, AdaGRPO) or population (Flow-GRPO)."""
    adv_eps: float = Field(1e-8, ge=0)
    """ε in (r − mean)/(std + ε): 1e-8 (DanceGRPO, MixGRPO, AdaGRPO) or 1e-4 (Flow-GRPO)."""
    max_nonfinite: int = Field(3, ge=1)
    """Iterations in a row with a non-finite reward, loss or gradient norm (each skipped, its update dropped)
    before the run stops with an error."""
    minibatches: int = Field(1, ge=1)
    """AdamW steps per rollout batch: the iteration's groups are split into this many contiguous minibatches, one
    step each (Flow-GRPO's train batches per epoch). From the second on, the replayed samples are from an older
    policy: the PPO ratio departs from 1 and ``clip_range`` acts. At most the number of groups of an iteration."""
    kl_beta: float = Field(0.0, ge=0)
    """β of Flow-GRPO's KL, mean((μ − μ_ref)²)/(2g²), to the initial model (0: no reference model kept)."""


class LoggingConfig(Section):
    backends: list[Literal["jsonl", "tensorboard", "wandb"]] = Field(default_factory=lambda: ["jsonl", "tensorboard"])
    """Where the metrics go: jsonl (``metrics.jsonl``, always: the run's record, which resume and the reports
    read), tensorboard (when installed), wandb (the ``wandb`` extra; the same scalars, the sample grids, the
    resolved config; a resumed run continues the same wandb run)."""
    project: str = "fastgrpo"
    """wandb: the project."""
    name: Optional[str] = None
    """wandb: the run's display name (null: the run directory's name)."""
    wandb_mode: Optional[Literal["online", "offline", "disabled"]] = None
    """wandb: online | offline (no account or network; ``wandb sync`` later) | disabled; null: WANDB_MODE or
    wandb's default."""

    @model_validator(mode="after")
    def _check(self):
        if "jsonl" not in self.backends:
            raise ValueError("logging.backends must include jsonl: metrics.jsonl is the run's record (resume and "
                             "the reports read it)")
        return self


class GuardConfig(Section):
    rationorm: bool = False
    """GRPO-Guard (arXiv 2510.22319; yifan123/flow_grpo commit 2e2f712), an option of ``method: grpo``: the
    rollout stores each SDE step's mean μ_old; the ratio becomes exp(mean(ε ⊙ (μ_θ − μ_old))) and each step's loss
    is divided by its |Δσ|, so every step weighs alike. Its clip is far tighter (released 2e-6; ``optim.clip_range``)."""


class NFTConfig(Section):
    """DiffusionNFT (``method: nft``). Defaults: the released SD3.5-M GenEval/PickScore/HPS recipe
    (NVlabs/DiffusionNFT ``config/nft.py``): β 1, advantage clip 5, 99% of the schedule's timesteps, old policy
    decay min(0.001·s, 0.5)."""
    beta: float = Field(1.0, gt=0)
    """β of the implicit policies v± (the released 1.0; 0.1 for OCR and multi-reward)."""
    adv_clip: float = Field(5.0, gt=0)
    """c in r = ½ + clamp(A, ±c)/(2c), and the loss gain c/β."""
    timestep_fraction: float = Field(0.99, gt=0, le=1)
    """Each sample trains int(fraction·T) of its T rollout σ's, in a random order of its own."""
    old_decay_rate: float = Field(0.001, ge=0)
    old_decay_max: float = Field(0.5, ge=0, le=1)
    """The old policy's decay d = min(old_decay_rate·s, old_decay_max) after s optimiser steps."""


class AWMConfig(Section):
    """AWM (``method: awm``). Defaults: the released SD3.5-M GenEval recipe (scxue/advantage_weighted_matching
    ``config/dgx_awm.py``): 6 stratified timesteps of the first 90% of the schedule without σ = 1, ghuber p 0.25,
    Â = clamp(A, ±5)/5, the EMA anchor at weight 1 with decay min(0.001·s, 0.3)."""
    timesteps: int = Field(6, ge=1)
    """Trained timesteps per group, one per stratum (shared by the group's samples)."""
    time_fraction: float = Field(0.9, gt=0, le=1)
    include_init: bool = False
    """Whether the strata start at σ = 1 (the released ``discrete``; GenEval/OCR use ``discrete_wo_init``)."""
    ghuber_power: float = Field(0.25, gt=0, le=1)
    adv_clip: float = Field(5.0, gt=0)
    ratio_clip: float = Field(1.0, ge=0)
    ema_beta: float = Field(1.0, ge=0)
    """Weight of mean((v_θ − v_ema)²) (0: no EMA anchor)."""
    ema_decay_rate: float = Field(0.001, ge=0)
    ema_decay_max: float = Field(0.3, ge=0, le=1)


class DGPOConfig(Section):
    """DGPO (``method: dgpo``). Defaults: the released SD3.5-M GenEval recipe (Luo-Yihong/DGPO ``config/dgpo.py``):
    β_dpo 100, clip 1e-2, 4 timesteps from the first 5 schedule indices, rollouts from the EMA copy after 500
    optimiser steps (decay min(0.001·s, 0.3)), per-group std."""
    beta_dpo: float = Field(100.0, gt=0)
    clip: float = Field(0.01, ge=0)
    """ε of the clip against the EMA copy (0: off, and no EMA forward)."""
    timesteps: int = 4
    """M indices drawn without replacement from {0 … trunc_steps}, shared by every group of an iteration."""
    trunc_steps: int = Field(4, ge=0)
    switch_ema_ref: int = Field(500, ge=0)
    """Optimiser steps after which rollouts come from the EMA copy."""
    ema_decay_rate: float = Field(0.001, ge=0)
    ema_decay_max: float = Field(0.3, ge=0, le=1)
    global_std: bool = False
    """Normalise advantages by the whole batch's std (the released PickScore recipe) instead of each group's."""

    @model_validator(mode="after")
    def _check(self):
        if not 1 <= self.timesteps <= self.trunc_steps + 1:
            raise ValueError(f"dgpo.timesteps={self.timesteps} must be in [1, dgpo.trunc_steps + 1 = "
                             f"{self.trunc_steps + 1}] (drawn without replacement)")
        return self


class TrainConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    window: WindowConfig = Field(default_factory=WindowConfig)
    branch: BranchConfig = Field(default_factory=BranchConfig)
    stepwise: StepwiseConfig = Field(default_factory=StepwiseConfig)
    adagrpo: AdaGRPOConfig = Field(default_factory=AdaGRPOConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    method: Literal[METHOD_NAMES] = "grpo"
    """grpo: the SDE-replay family (Flow-GRPO ... AdaGRPO, set by sampling/window/branch/stepwise) | nft:
    DiffusionNFT (its settings under ``nft``) | awm: Advantage Weighted Matching (under ``awm``) | dgpo: Direct Group
    Preference Optimization (under ``dgpo``)."""
    nft: NFTConfig = Field(default_factory=NFTConfig)
    awm: AWMConfig = Field(default_factory=AWMConfig)
    dgpo: DGPOConfig = Field(default_factory=DGPOConfig)
    iterations: int = Field(80, ge=0)
    """The default job: 80 iterations, 4.1 min in all with its two evaluations on a 2-core CPU (2.4 s per
    iteration at 4 groups × 16, 18 s per evaluation; measured 2026-12-06, `fastgrpo train`)."""
    group_size: int = Field(16, ge=2)
    """G: samples per prompt (a group needs spread)."""
    seed: int = 0
    eval_every: int = Field(80, ge=0)
    """Iterations between evaluations (0 = never evaluate); the default job evaluates at the start and the end only
    (100 prompts × 8 seeds: 13.6–18 s on a 2-core CPU, 2026-12-06)."""
    eval_seeds: int = Field(8, ge=1)
    """Noise seeds per evaluation prompt (fixed: every checkpoint sees the same noise, so evaluations pair). One
    seed gave ±0.06 on the world's training-prompt correctness."""
    eval_batch: Optional[int] = Field(None, ge=1)
    """Samples per forward in the evaluation (prompts × seeds flattened); null: 128 on the world (56 s vs 83 s per
    evaluation at 32 on the loaded 2-core CPU), 16 on sd3 / flux (with guidance a forward carries twice as many)."""
    checkpoint_every: int = Field(10, ge=0)
    """Iterations between checkpoints (0 = none during the run; the end of a run, or a stop on SIGTERM, always
    saves once)."""
    checkpoint_async: bool = True
    """Sharded checkpoints (FSDP2 full fine-tuning on several ranks): copy the shards to host memory and write them
    in the background while training goes on (``torch.distributed.checkpoint.async_save``); a save is published
    (renamed, ``latest`` switched) once written — at the next save or the end of the run. false: every save blocks
    until written. Single-file checkpoints (LoRA, one process) are always written at once."""
    out_dir: str = "runs/default"
    device: str = "cpu"
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun: ddp (replicated weights) or fsdp (FSDP2 fully_shard per transformer block)."""

    @model_validator(mode="after")
    def _check(self):
        if self.method != "grpo":
            clash = [k for k, on in (("sampling.guidance > 1", self.sampling.guidance > 1),
                                     ("branch.enabled", self.branch.enabled),
                                     ("stepwise.enabled", self.stepwise.enabled)) if on]
            if clash:
                raise ValueError(f"method={self.method} contradicts {', '.join(clash)}: it samples by an ODE without "
                                 "classifier-free guidance and trains on clean samples, not on SDE steps")
        if self.method == "awm" and int(self.sampling.steps * self.awm.time_fraction) - (not self.awm.include_init) < 1:
            raise ValueError(f"awm.time_fraction={self.awm.time_fraction} leaves no timestep of sampling.steps="
                             f"{self.sampling.steps}")
        if self.guard.rationorm and (self.method != "grpo" or self.branch.enabled):
            where = f"method={self.method}" + (", branch.enabled" if self.branch.enabled else "")
            raise ValueError("guard.rationorm is an option of method=grpo's window rollouts (it needs the stored "
                             f"step means): not with {where}")
        if self.method == "dgpo" and self.dgpo.trunc_steps > self.sampling.steps - 1:
            raise ValueError(f"dgpo.trunc_steps={self.dgpo.trunc_steps} must be < sampling.steps="
                             f"{self.sampling.steps}")
        if (self.model.kind == "world") != (self.reward.names in (["world"], ["world_random"])):
            raise ValueError(f"reward.names={self.reward.names!r} with model.kind={self.model.kind!r}: the shapes "
                             "world is scored by its own reward ('world', or the control 'world_random'), and only it")
        if self.model.kind != "world" and self.data.train_prompts is None:
            raise ValueError(f"data.train_prompts is required for model.kind={self.model.kind!r}: a text file with "
                             "one prompt per line")
        if self.method == "grpo" and not self.branch.enabled and self.window.size > self.sampling.steps - 1:
            raise ValueError(f"window.size={self.window.size} must be < sampling.steps={self.sampling.steps}")
        if self.window.random_range is not None and self.window.random_range[1] > self.sampling.steps - 1:
            raise ValueError(f"window.random_range={self.window.random_range} must end at most at sampling.steps − 1 "
                             f"= {self.sampling.steps - 1} (the last step is never an SDE step)")
        points = self.branch.points
        if self.branch.enabled and not 0 <= min(points) <= max(points) <= self.sampling.steps - 2:
            raise ValueError(f"branch.points={points} must lie in 0..sampling.steps-2 "
                             f"({self.sampling.steps - 2})")
        if self.stepwise.enabled and (self.branch.enabled or self.window.flash or self.adagrpo.fusion):
            raise ValueError("stepwise.enabled trains per-step gains of the window's SDE steps: it excludes "
                             "branch.enabled, window.flash and adagrpo.fusion (a per-sample global advantage)")
        if self.branch.pave_splits and not (self.branch.enabled and self.sampling.family == "flow_sde"
                                            and self.sampling.logprob == "quadratic"):
            raise ValueError("branch.pave_splits (Pave-GRPO) decomposes G²RPO branch steps of the flow_sde family "
                             "scored by the quadratic log-prob: it needs branch.enabled, sampling.family=flow_sde "
                             "and sampling.logprob=quadratic")
        if self.branch.noise_weight and not self.branch.enabled:
            raise ValueError("branch.noise_weight (TempFlow-GRPO) weighs branch steps: it needs branch.enabled")
        if self.model.base_fp8 != "none" and self.distributed == "fsdp":
            raise ValueError(f"model.base_fp8={self.model.base_fp8} with distributed=fsdp: fastgrpo does not "
                             "shard float8 weights under FSDP2; use distributed=ddp (the fp8 base is half a bf16 one)")
        if not self.branch.enabled and self.optim.minibatches > self.adagrpo.keep:
            raise ValueError(f"optim.minibatches={self.optim.minibatches} exceeds the groups of an iteration "
                             f"(adagrpo.keep={self.adagrpo.keep}): a minibatch holds whole groups")
        return self


def to_dict(config: TrainConfig) -> dict:
    """Plain lists, dicts and scalars (what a checkpoint and config.yaml hold)."""
    return config.model_dump()


def from_dict(values: dict) -> TrainConfig:
    """A config from nested plain values (a YAML file's, a checkpoint's); a ``ValueError`` naming every wrong key."""
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as error:
        raise ValueError(explain(error)) from None


def _nearest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _dotted(loc) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _section_at(loc) -> Optional[type]:
    """The section class that holds the key at ``loc``."""
    cls = TrainConfig
    for part in loc[:-1]:
        annotation = cls.model_fields[part].annotation if isinstance(part, str) and part in cls.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, Section)):
            return None
        cls = annotation
    return cls


def explain(error: ValidationError) -> str:
    """One line per wrong key: the dotted key, the value it got, what it expects. A section's cross-check speaks for
    itself (its message names the keys that contradict each other)."""
    lines = []
    for item in error.errors(include_url=False):
        loc, kind, key = item["loc"], item["type"], _dotted(item["loc"])
        if kind == "value_error":  # a section's _check
            lines.append(str(item["ctx"]["error"]))
        elif kind == "extra_forbidden":
            section = _section_at(loc)
            lines.append(f"unknown config key {key!r}{_nearest(str(loc[-1]), section.model_fields if section else ())}")
        elif kind in ("model_type", "model_attributes_type"):
            lines.append(f"config key {key!r} is a section; give its keys (got {item['input']!r})")
        else:
            lines.append(f"config key {key!r} = {item['input']!r}: {item['msg']}")
    return "\n".join(lines)


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
    No file: the field defaults, which are the shipped ``default`` recipe."""
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
        node[parts[-1]] = _command_line_value(key, raw)
    return from_dict(values)


def _command_line_value(key: str, raw: str):
    """The value as YAML reads it (2 → int, 1e-3 → text that the float field converts, null → None, [a, b] → a
    list); an empty value stays "" (an empty list for a list key)."""
    import yaml

    if not raw.strip():
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ValueError(f"config key {key!r}: {raw!r} is not a YAML value ({error.problem})") from None


def dump_config(config: TrainConfig, path=None) -> str:
    """The config as YAML (the keys in their sections' order); written to ``path`` when given."""
    import yaml

    text = yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)
    if path is not None:
        Path(path).write_text(text)
    return text


def describe(cls: type = TrainConfig, prefix: str = "") -> str:
    """Every key, dotted: its type, its default and its description (the field's docstring)."""
    out = []
    for name, info in cls.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            out.append(describe(annotation, f"{prefix}{name}."))
            continue
        kind = getattr(annotation, "__name__", None) if get_origin(annotation) is None else None
        default = info.get_default(call_default_factory=True)
        bounds = "".join(f", {symbol} {getattr(m, attr)}" for m in info.metadata
                         for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if hasattr(m, attr))
        out.append(f"{prefix}{name}: {kind or repr(annotation).replace('typing.', '')}{bounds} = {default!r}\n")
        if info.description:
            out.extend(f"    {line.strip()}\n" for line in info.description.splitlines())
    return "".join(out)
