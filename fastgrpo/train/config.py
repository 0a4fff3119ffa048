"""Typed training configuration: nested dataclasses, YAML files, ``key=value`` overrides, unknown keys rejected
with the nearest valid name."""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

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
    lora_rank: int = 8
    """LoRA rank through peft (0 = full fine-tuning). 8 on the world: full fine-tuning with AdamW drifts (Adam moves
    each weight ≈ lr per step whatever the signal; a random-reward control lost 0.11 correctness in 40 iterations)."""
    lora_alpha: float = 0.0
    """LoRA α (0 = the rank)."""
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj",
                                                             "add_k_proj", "add_v_proj", "ff.net.0.proj",
                                                             "ff.net.2", "proj_out"])
    """Module names the adapter wraps, peft's suffix match. Default: the image and text attention projections, the
    image feed-forward and the output projection — on the world (2026-12-06, seed 0, 100 iterations, an earlier
    pretraining of the shipped recipe) the attention projections alone lifted training-prompt correctness
    0.565 → 0.858 and these 0.565 → 0.923, for ≈ 12% more time per iteration. The SD3 / FLUX recipes name their
    own (Flow-GRPO / MixGRPO: attention only)."""
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

    def __post_init__(self):
        if self.kind not in ("world", "sd3", "flux"):
            raise ValueError(f"model.kind must be world, sd3 or flux, got {self.kind!r}")
        if self.dtype not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"model.dtype must be bf16, fp16 or fp32, got {self.dtype!r}")
        if self.lora_rank < 0 or self.lora_alpha < 0:
            raise ValueError("model.lora_rank and model.lora_alpha must be >= 0")
        if self.lora_rank > 0 and not self.lora_targets:
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
    names: list[str] = field(default_factory=lambda: ["world"])
    """Registered rewards (fastgrpo.rewards), e.g. [pickscore, hpsv2]; world = the shapes world's programmatic
    reward (only with model.kind world); world_random = the random-reward control on the world (uniform noise that
    ignores the image; evaluation still reports the real reward and correctness)."""
    weights: list[float] = field(default_factory=list)
    """One weight per name (empty = all 1)."""
    paths: dict[str, str] = field(default_factory=dict)
    """name → weights directory, e.g. {pickscore: /models/PickScore_v1, hpsv2: /models/hps}."""
    aggregate: str = "sum_zscore"
    """Several rewards: z-score the weighted sum (Flow-GRPO, sum_zscore) or sum the weighted per-reward
    z-scores (DanceGRPO / MixGRPO, zscore_sum)."""
    batch_size: int = 32

    def __post_init__(self):
        if not self.names:
            raise ValueError("reward.names is empty: name at least one reward")
        if self.weights and len(self.weights) != len(self.names):
            raise ValueError(f"reward.weights has {len(self.weights)} entries for {len(self.names)} reward.names")
        unknown = sorted(set(self.paths) - set(self.names))
        if unknown:
            raise ValueError(f"reward.paths names {unknown}, not in reward.names={self.names}")
        if self.aggregate not in ("sum_zscore", "zscore_sum"):
            raise ValueError(f"reward.aggregate must be sum_zscore or zscore_sum, got {self.aggregate!r}")
        if self.batch_size < 1:
            raise ValueError(f"reward.batch_size must be >= 1, got {self.batch_size}")


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
    shift_interval: int = 25
    """Iterations between window moves, MixGRPO's τ (25 over its 300 iterations); progressive schedule only."""
    schedule: str = "frozen"
    """progressive | frozen | random | linear_decay | exp_decay. The default job keeps the window on the first
    (highest-σ) steps, where the world's shape is chosen: on the shipped weights (seed 1, 80 iterations) frozen
    reached 0.895 training-prompt correctness, progressive (τ 20, windows at steps 0–3) 0.842, and progressive
    at lr 1.5e-3 collapsed to 0.002 once the window reached step 3. MixGRPO's recipes slide it (progressive)."""
    flash: bool = True
    """MixGRPO-Flash: after the window, DPM-Solver++ 2M on a coarser grid (the default job; each recipe config
    says whether it uses it)."""
    flash_ratio: float = 0.4
    """Flash: post-window points n = max(1, int((T − last)·r)) (MixGRPO's grid)."""
    flash_min_steps: int = 4
    """Flash: at least this many DPM-Solver++ steps after the window (at most the T − end the schedule has left).
    Fewer scored blurry images: at T = 10 one step kept a within-group reward correlation of 0.53–0.86 with a
    fine finish, four ≥ 0.93 (fastgrpo/train/schedule.py)."""
    train_fraction: float = 1.0
    """Fraction of the window's SDE steps trained per iteration, drawn at random (DanceGRPO: 0.6 of all steps)."""

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"window.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.size < 1 or self.stride < 1 or self.shift_interval < 1:
            raise ValueError("window.size, window.stride and window.shift_interval must be >= 1")
        if not 0 < self.flash_ratio <= 1:
            raise ValueError(f"window.flash_ratio must be in (0, 1], got {self.flash_ratio}")
        if self.flash_min_steps < 1:
            raise ValueError(f"window.flash_min_steps must be >= 1 (a step to σ = 0), got {self.flash_min_steps}")
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"window.train_fraction must be in (0, 1], got {self.train_fraction}")


@dataclass(kw_only=True)
class BranchConfig:
    enabled: bool = False
    """G²RPO's singular stochastic sampling instead of a window: ODE trunk, one SDE step branching G samples."""
    points: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    """Branch points k, steps of the schedule (G²RPO uses its first half)."""
    strides: list[int] = field(default_factory=lambda: [1, 2])
    """Λ: ODE strides that finish each branch; per-λ group z-scores are summed (G²RPO's code: 1, 2; its paper
    1, 2, 3)."""
    pave_splits: list[int] = field(default_factory=list)
    """Pave-GRPO (arXiv 2606.01636): S, the n-way decompositions of each branch step whose log-probs join the loss
    (released {2, 3}; empty = off). Each n ≥ 2 costs n − 1 extra forwards with grad per step."""
    noise_weight: bool = False
    """TempFlow-GRPO's noise-aware weighting (arXiv 2508.04324): the surrogate of the branch at step k × c·s_k,
    s_k its noise std (sqrt|Δσ| included), c = 1/mean(s_k) over the iteration's branch points (the released code
    hard-codes 2.25 for SD3.5-M at η 0.7, T = 10; computed here, so it follows η and T)."""

    def __post_init__(self):
        if not self.points:
            raise ValueError("branch.points is empty: give at least one branch step")
        if any(n < 2 for n in self.pave_splits):
            raise ValueError(f"branch.pave_splits={self.pave_splits}: every split must be >= 2 (n = 1 is the coarse "
                             "step itself, already trained)")
        if not self.strides or min(self.strides) < 1:
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
    lr: float = 1e-3
    """AdamW step size. On the shipped world (LoRA r8, seed 1, 80 iterations) 1e-3 lifts training-prompt
    correctness 0.562 → 0.895 with the frozen window; 1.5e-3 with MixGRPO's sliding window collapsed (0.002). On the
    previous weights 2e-3 lowered correctness and full fine-tuning degraded at 3e-4."""
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
    """Iterations in a row with a non-finite reward, loss or gradient norm (each skipped, its update dropped)
    before the run stops with an error."""
    minibatches: int = 1
    """AdamW steps per rollout batch: the iteration's groups are split into this many contiguous minibatches, one
    step each (Flow-GRPO's train batches per epoch). From the second on, the replayed samples are from an older
    policy: the PPO ratio departs from 1 and ``clip_range`` acts. At most the number of groups of an iteration."""
    kl_beta: float = 0.0
    """β of Flow-GRPO's KL, mean((μ − μ_ref)²)/(2g²), to the initial model (0: no reference model kept)."""

    def __post_init__(self):
        if not (self.lr > 0 and self.kl_beta >= 0 and self.grad_clip > 0):  # NaN fails too
            raise ValueError("optim.lr and optim.grad_clip must be > 0 and optim.kl_beta >= 0")
        if self.minibatches < 1:
            raise ValueError(f"optim.minibatches must be >= 1, got {self.minibatches}")
        if self.max_nonfinite < 1:
            raise ValueError(f"optim.max_nonfinite must be >= 1, got {self.max_nonfinite}")
        if self.adv_std not in ("unbiased", "population"):
            raise ValueError(f"optim.adv_std must be 'unbiased' or 'population', got {self.adv_std!r}")


@dataclass(kw_only=True)
class GuardConfig:
    rationorm: bool = False
    """GRPO-Guard (arXiv 2510.22319; yifan123/flow_grpo commit 2e2f712), an option of ``method: grpo``: the
    rollout stores each SDE step's mean μ_old; the ratio becomes exp(mean(ε ⊙ (μ_θ − μ_old))) and each step's loss
    is divided by its |Δσ|, so every step weighs alike. Its clip is far tighter (released 2e-6; ``optim.clip_range``)."""


@dataclass(kw_only=True)
class NFTConfig:
    """DiffusionNFT (``method: nft``). Defaults: the released SD3.5-M GenEval/PickScore/HPS recipe
    (NVlabs/DiffusionNFT ``config/nft.py``): β 1, advantage clip 5, 99% of the schedule's timesteps, old policy
    decay min(0.001·s, 0.5)."""
    beta: float = 1.0
    """β of the implicit policies v± (the released 1.0; 0.1 for OCR and multi-reward)."""
    adv_clip: float = 5.0
    """c in r = ½ + clamp(A, ±c)/(2c), and the loss gain c/β."""
    timestep_fraction: float = 0.99
    """Each sample trains int(fraction·T) of its T rollout σ's, in a random order of its own."""
    old_decay_rate: float = 0.001
    old_decay_max: float = 0.5
    """The old policy's decay d = min(old_decay_rate·s, old_decay_max) after s optimiser steps."""

    def __post_init__(self):
        if not self.beta > 0 or not self.adv_clip > 0:
            raise ValueError(f"nft.beta and nft.adv_clip must be > 0, got {self.beta}, {self.adv_clip}")
        if not 0 < self.timestep_fraction <= 1:
            raise ValueError(f"nft.timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        if self.old_decay_rate < 0 or not 0 <= self.old_decay_max <= 1:
            raise ValueError("nft.old_decay_rate must be >= 0 and nft.old_decay_max in [0, 1]")


@dataclass(kw_only=True)
class AWMConfig:
    """AWM (``method: awm``). Defaults: the released SD3.5-M GenEval recipe (scxue/advantage_weighted_matching
    ``config/dgx_awm.py``): 6 stratified timesteps of the first 90% of the schedule without σ = 1, ghuber p 0.25,
    Â = clamp(A, ±5)/5, the EMA anchor at weight 1 with decay min(0.001·s, 0.3)."""
    timesteps: int = 6
    """Trained timesteps per group, one per stratum (shared by the group's samples)."""
    time_fraction: float = 0.9
    include_init: bool = False
    """Whether the strata start at σ = 1 (the released ``discrete``; GenEval/OCR use ``discrete_wo_init``)."""
    ghuber_power: float = 0.25
    adv_clip: float = 5.0
    ratio_clip: float = 1.0
    ema_beta: float = 1.0
    """Weight of mean((v_θ − v_ema)²) (0: no EMA anchor)."""
    ema_decay_rate: float = 0.001
    ema_decay_max: float = 0.3

    def __post_init__(self):
        if self.timesteps < 1 or not 0 < self.time_fraction <= 1:
            raise ValueError("awm.timesteps must be >= 1 and awm.time_fraction in (0, 1]")
        if not 0 < self.ghuber_power <= 1 or not self.adv_clip > 0 or self.ratio_clip < 0 or self.ema_beta < 0:
            raise ValueError("awm.ghuber_power must be in (0, 1], awm.adv_clip > 0, awm.ratio_clip and "
                             "awm.ema_beta >= 0")
        if self.ema_decay_rate < 0 or not 0 <= self.ema_decay_max <= 1:
            raise ValueError("awm.ema_decay_rate must be >= 0 and awm.ema_decay_max in [0, 1]")


@dataclass(kw_only=True)
class DGPOConfig:
    """DGPO (``method: dgpo``). Defaults: the released SD3.5-M GenEval recipe (Luo-Yihong/DGPO ``config/dgpo.py``):
    β_dpo 100, clip 1e-2, 4 timesteps from the first 5 schedule indices, rollouts from the EMA copy after 500
    optimiser steps (decay min(0.001·s, 0.3)), per-group std."""
    beta_dpo: float = 100.0
    clip: float = 0.01
    """ε of the clip against the EMA copy (0: off, and no EMA forward)."""
    timesteps: int = 4
    """M indices drawn without replacement from {0 … trunc_steps}, shared by every group of an iteration."""
    trunc_steps: int = 4
    switch_ema_ref: int = 500
    """Optimiser steps after which rollouts come from the EMA copy."""
    ema_decay_rate: float = 0.001
    ema_decay_max: float = 0.3
    global_std: bool = False
    """Normalise advantages by the whole batch's std (the released PickScore recipe) instead of each group's."""

    def __post_init__(self):
        if not self.beta_dpo > 0 or self.clip < 0:
            raise ValueError("dgpo.beta_dpo must be > 0 and dgpo.clip >= 0")
        if not 1 <= self.timesteps <= self.trunc_steps + 1:
            raise ValueError(f"dgpo.timesteps={self.timesteps} must be in [1, dgpo.trunc_steps + 1 = "
                             f"{self.trunc_steps + 1}] (drawn without replacement)")
        if self.switch_ema_ref < 0 or self.ema_decay_rate < 0 or not 0 <= self.ema_decay_max <= 1:
            raise ValueError("dgpo.switch_ema_ref and dgpo.ema_decay_rate must be >= 0, dgpo.ema_decay_max in [0, 1]")


METHOD_NAMES = ("grpo", "nft", "awm", "dgpo")


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
    guard: GuardConfig = field(default_factory=GuardConfig)
    method: str = "grpo"
    """grpo: the SDE-replay family (Flow-GRPO ... AdaGRPO, set by sampling/window/branch/stepwise) | nft:
    DiffusionNFT (its settings under ``nft``) | awm: Advantage Weighted Matching (under ``awm``) | dgpo: Direct Group
    Preference Optimization (under ``dgpo``)."""
    nft: NFTConfig = field(default_factory=NFTConfig)
    awm: AWMConfig = field(default_factory=AWMConfig)
    dgpo: DGPOConfig = field(default_factory=DGPOConfig)
    iterations: int = 80
    """The default job: 80 iterations, 4.1 min in all with its two evaluations on a 2-core CPU (2.4 s per
    iteration at 4 groups × 16, 18 s per evaluation; measured 2026-12-06, `fastgrpo train`)."""
    group_size: int = 16
    """G: samples per prompt."""
    seed: int = 0
    eval_every: int = 80
    """Iterations between evaluations (0 = never evaluate); the default job evaluates at the start and the end only
    (100 prompts × 8 seeds: 13.6–18 s on a 2-core CPU, 2026-12-06)."""
    eval_seeds: int = 8
    """Noise seeds per evaluation prompt (fixed: every checkpoint sees the same noise, so evaluations pair). One
    seed gave ±0.06 on the world's training-prompt correctness."""
    eval_batch: Optional[int] = None
    """Samples per forward in the evaluation (prompts × seeds flattened); null: 128 on the world (56 s vs 83 s per
    evaluation at 32 on the loaded 2-core CPU), 16 on sd3 / flux (with guidance a forward carries twice as many)."""
    checkpoint_every: int = 10
    """Iterations between checkpoints (0 = none during the run; the end of a run, or a stop on SIGTERM, always
    saves once)."""
    out_dir: str = "runs/default"
    device: str = "cpu"
    distributed: str = "ddp"
    """Under torchrun: ddp (replicated weights) or fsdp (FSDP2 fully_shard per transformer block)."""

    def __post_init__(self):
        if self.distributed not in ("ddp", "fsdp"):
            raise ValueError(f"distributed must be ddp or fsdp, got {self.distributed!r}")
        if self.method not in METHOD_NAMES:
            raise ValueError(f"method must be one of {', '.join(METHOD_NAMES)}, got {self.method!r}")
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
        if not self.branch.enabled and self.optim.minibatches > self.adagrpo.keep:
            raise ValueError(f"optim.minibatches={self.optim.minibatches} exceeds the groups of an iteration "
                             f"(adagrpo.keep={self.adagrpo.keep}): a minibatch holds whole groups")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a group needs spread), got {self.group_size}")
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        for key in ("eval_every", "checkpoint_every"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0 (0 = never), got {getattr(self, key)}")
        if self.eval_seeds < 1:
            raise ValueError(f"eval_seeds must be >= 1, got {self.eval_seeds}")
        if self.eval_batch is not None and self.eval_batch < 1:
            raise ValueError(f"eval_batch must be >= 1 (or null: by model), got {self.eval_batch}")


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def _nearest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build(cls, values: dict, prefix: str = ""):
    hints = get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"unknown config key {prefix + str(key)!r}{_nearest(str(key), fields)}")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise ValueError(f"config key {prefix + key!r} is a section; give its fields")
            kwargs[key] = _build(hints[key], value, prefix + key + ".")
        else:
            kwargs[key] = _coerce(prefix + key, hints[key], value)
    return cls(**kwargs)


# Strings are accepted wherever a number or a bool is expected: command-line values arrive as text, and YAML
# reads 3e-5 (no dot) as a string.
_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _to_bool(value) -> bool:
    if isinstance(value, str):
        value = _WORDS.get(value.strip().lower(), value)
    if not isinstance(value, bool):  # not 2, which bool() would make True
        raise ValueError
    return value


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return float(value)
    return value


def _to_int(value) -> int:
    value = _number(value)
    if isinstance(value, float) and not value.is_integer():
        raise ValueError
    return int(value)


def _to_float(value) -> float:
    return float(_number(value))


def _to_str(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError  # a list, a mapping or a bool given to a string key is a mistake, not a name
    return str(value)


_SCALARS = {bool: (_to_bool, "true or false"), int: (_to_int, "an integer"), float: (_to_float, "a number"),
            str: (_to_str, "a string")}


def _scalar(name: str, kind, value):
    convert, expected = _SCALARS[kind]
    try:
        return convert(value)
    except (TypeError, ValueError):
        raise ValueError(f"config key {name!r} expects {expected}, got {value!r}") from None


def _items(name: str, value) -> list:
    """A YAML list, or text "a,b" (a single "a"; "" = none)."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, (dict, type(None))):
        raise ValueError(f"config key {name!r} expects a list, got {value!r}")
    return [value]


def _pairs(name: str, value) -> dict:
    """A YAML mapping, or text "key=value,key=value" ("" = none)."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str) or any("=" not in item for item in _items(name, value)):
        raise ValueError(f"config key {name!r} expects a mapping, e.g. a=1,b=2, got {value!r}")
    return dict(map(str.strip, item.split("=", 1)) for item in _items(name, value))


def _coerce(name: str, annotation, value):
    """value (from YAML or the command line) as the field's annotation: str, int, float, bool, Optional[...],
    list[...] or dict[str, ...]; a ValueError naming the key otherwise."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Union:  # Optional[X]
        if value is None or value == "null":
            return None
        return _coerce(name, next(a for a in args if a is not type(None)), value)
    if origin is list:
        return [_scalar(f"{name}[{i}]", args[0], v) for i, v in enumerate(_items(name, value))]
    if origin is dict:
        return {_scalar(name, args[0], k): _scalar(f"{name}.{k}", args[1], v)
                for k, v in _pairs(name, value).items()}
    return _scalar(name, annotation, value)


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
        node[parts[-1]] = _command_line_value(key, raw)
    return _build(TrainConfig, values)


def _command_line_value(key: str, raw: str):
    """Text, typed later by the field; [a, b] and {a: 1} read as YAML flow collections."""
    if not raw.lstrip().startswith(("[", "{")):
        return raw
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ValueError(f"config key {key!r}: {raw!r} is not a YAML list or mapping ({error.problem})") from None


def dump_config(config: TrainConfig, path) -> None:
    import yaml

    with open(path, "w") as fh:
        yaml.safe_dump(to_dict(config), fh, sort_keys=False)
