"""One training iteration by stage on the SD3.5-Medium architecture (random weights, LoRA, 512² → 64² latents):
full SDE on all steps vs MixGRPO (w = 4) vs Flash, and MixGRPO with fastgrpo's ops vs ``FASTGRPO_BACKEND=torch``.

The real loop (``Trainer.step``) with a stand-in for what cannot be downloaded: the SD3.5-M transformer (2.2B
parameters, bf16, LoRA rank 32 on the attention projections, fp32 adapters) and the SD3 VAE, both with random
weights; the text encoders are replaced by fixed random embeddings of the pipeline's shapes (333 × 4096 tokens,
2048 pooled) — text encoding is cached per prompt in training, so it is not a per-iteration cost; the reward is
the LAION aesthetic scorer on a random CLIP ViT-L/14, loaded through its real loader from a temp directory, fed by
the VAE decode and fastgrpo's CLIP preprocessing. T = 25 (MixGRPO), 4 candidate prompts with ODE anchors → 1
trained prompt × 8 samples. Stages are the trainer's timers with a device synchronisation at each boundary.
CUDA only (on a CPU the world benchmark, ``fastgrpo bench trainer``, stands in).
Also in the same run: MixGRPO with ``reward.schedule=batched`` and ``overlap``, with each installed attention
kernel (flash, flash3, sage, xformers; native is every other row's), compiled per block (last: compilation stays
on the shared transformer), and ``flowgrpo_formulation`` — the same iteration computed the way Flow-GRPO's train
script does it (``benchmarks/flowgrpo_formulation.py``), for the ratio users care about. Each stage's peak memory
(``peak_<stage>_gib``) comes from the trainer's stage boundaries. Last, MixGRPO compiled per block with the frozen
base in float8 (``model.base_fp8=dynamic``: fp8 tensor-core matmuls, sm89+), with what that base changes: one
MixGRPO window of 8 samples drawn by the bf16 base and replayed through the fp8 one — the largest and mean
|Δ log-prob| per sample and step (``fp8_logprob_dev_*``).
``FASTGRPO_BENCH_ANCHORS=0``: without AdaGRPO's anchors (plain MixGRPO vs DanceGRPO-style, as MixGRPO's Table 1
compares them); results then go to ``trainer_sd35m_no_anchors``.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import zlib

import torch

from fastgrpo.models import add_lora
from fastgrpo.models.base import Backbone, EmbeddingCache, decode_vae
from fastgrpo.models.tiny import sd3_vae, sd35_medium_transformer
from fastgrpo.train import Trainer, load_config
from fastgrpo.train.task import PromptTask

from fastgrpo.models.attention import check_backend
from fastgrpo.models.fp8 import why_not as why_not_fp8

try:
    from benchmarks import common
    from benchmarks.bench_trainer import VARIANTS as WORLD_VARIANTS, compare, measure
    from benchmarks.flowgrpo_formulation import FlowGrpoFormulation
except ImportError:  # run as a script
    import common
    from bench_trainer import VARIANTS as WORLD_VARIANTS, compare, measure
    from flowgrpo_formulation import FlowGrpoFormulation

PROMPTS = [f"a photo of object {i} on a table, studio light" for i in range(16)]
# the world benchmark's variants, plus MixGRPO with fastgrpo's ops forced off, with each reward schedule, and
# (last: compilation stays on the shared transformer) compiled per block
VARIANTS = {name: overrides for variant, overrides in WORLD_VARIANTS.items()
            for name in ((variant, "mixgrpo_torch_ops") if variant == "mixgrpo" else (variant,))}
MIX = WORLD_VARIANTS["mixgrpo"]
VARIANTS.update({"mixgrpo_reward_batched": MIX + ("reward.schedule=batched",),
                 "mixgrpo_reward_overlap": MIX + ("reward.schedule=overlap",)})
ATTENTION = ("flash", "flash3", "sage", "xformers")
"""Attention kernels measured (MixGRPO) where installed; native is every other row's."""
COMPILED = {"mixgrpo_compiled_blocks": MIX + ("model.compile=true", "model.compile_scope=blocks")}
FP8 = "mixgrpo_compiled_blocks_fp8"
"""The last row: MixGRPO compiled per block on a float8 base (quantisation stays on the shared transformer)."""


class RandomTextSd3(Backbone):
    """SD3.5-M transformer + SD3 VAE; per-prompt fixed random embeddings instead of CLIP-L/G + T5."""

    def __init__(self, device, resolution: int = 512, lora_rank: int = 32):
        with torch.device(device):  # random init on the device: seconds instead of a minute on the host
            self.transformer = sd35_medium_transformer().to(torch.bfloat16)
        add_lora(self.transformer, lora_rank, lora_rank, ["to_q", "to_k", "to_v", "to_out.0"])
        self.vae = sd3_vae().to(device, torch.bfloat16).eval().requires_grad_(False)
        self.latent_shape = (16, resolution // 8, resolution // 8)
        self.device = device
        self.encode_prompts = EmbeddingCache(self._random_text)  # made once per prompt, kept on the device

    def _random_text(self, texts):
        (text,) = texts
        g = torch.Generator().manual_seed(zlib.crc32(text.encode()))
        hidden, pooled = torch.randn(1, 333, 4096, generator=g), torch.randn(1, 2048, generator=g)
        return hidden.to(self.device, torch.bfloat16), pooled.to(self.device, torch.bfloat16)

    def velocity(self, transformer, latents, sigma, text):
        return transformer(hidden_states=latents, encoder_hidden_states=text.hidden, pooled_projections=text.pooled,
                           timestep=sigma * 1000.0, return_dict=False)[0]

    def decode(self, latents):
        return decode_vae(self.vae, latents)


def _aesthetic_scorer(folder: str, device):
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel

    from fastgrpo.rewards import AestheticHead, MultiReward

    config = CLIPConfig(text_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                                     "num_attention_heads": 12, "projection_dim": 768},
                        vision_config={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                                       "num_attention_heads": 16, "patch_size": 14, "image_size": 224,
                                       "projection_dim": 768}, projection_dim=768)
    CLIPModel(config).save_pretrained(folder)
    save_file(AestheticHead(768).state_dict(), os.path.join(folder, "head.safetensors"))
    head = os.path.join(folder, "head.safetensors")
    return MultiReward({"aesthetic": 1.0}, aesthetic={"path": folder, "head_path": head}).to(device).eval()


def flowgrpo_row(backbone, scorer, cfg, iterations: int) -> dict:
    """The Flow-GRPO formulation's iteration on the same model, scorer and settings: a warm-up, then the median
    of ``iterations``; seconds per stage and the largest peak memory."""
    from fastgrpo.train.schedule import window

    start, end = window(cfg.window, cfg.sampling.steps, 0, cfg.iterations, cfg.seed)
    formulation = FlowGrpoFormulation(backbone, scorer.rewards["aesthetic"], cfg, window=(start, end))
    formulation.step(PROMPTS[0], seed=0)
    cuda = formulation.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    runs = [formulation.step(PROMPTS[1 + i], seed=1 + i) for i in range(iterations)]
    row = {"variant": "flowgrpo_formulation", "select": 0.0}
    row.update({stage: statistics.median(r[stage] for r in runs) for stage in ("rollout", "reward", "advantage",
                                                                                 "update")})
    row["iteration"] = sum(row[s] for s in ("rollout", "reward", "advantage", "update"))
    row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    row["first_ratio_max_dev"] = max(r["first_ratio_max_dev"] for r in runs)
    print(f"flowgrpo_formulation: {row['iteration']:.2f} s/iteration (first ratio deviation "
          f"{row['first_ratio_max_dev']:.1e})", flush=True)
    del formulation
    if cuda:
        torch.cuda.empty_cache()
    return row


def window_trajectory(backbone, cfg):
    """One window of ``cfg``'s rollout, 8 samples of the first prompt, drawn by the backbone's transformer as it is
    now: (trajectory, text, empty)."""
    from fastgrpo.train.rollout import sample
    from fastgrpo.train.schedule import sigmas, window

    sc = cfg.sampling
    text = backbone.encode_prompts([PROMPTS[0]] * 8)
    empty = backbone.encode_prompts([""] * 8) if sc.guidance > 1 else None
    noise = torch.randn((8, *backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    with torch.autocast(backbone.device.type, dtype=torch.bfloat16, enabled=cfg.model.autocast):
        traj = sample(backbone.denoiser(backbone.transformer), noise.to(backbone.device),
                      sigmas(sc.steps, sc.shift), text, empty, guidance=sc.guidance, eta=sc.eta, family=sc.family,
                      logprob=sc.logprob, window=window(cfg.window, sc.steps, 0, cfg.iterations, cfg.seed), seed=0)
    return traj, text, empty


@torch.no_grad()
def logprob_drift(backbone, cfg, drawn) -> dict:
    """``drawn`` (``window_trajectory`` before the base changed) replayed through the transformer as it is now:
    the largest and mean |Δ log-prob| per sample and step."""
    from fastgrpo.ops import flow_step
    from fastgrpo.train.rollout import guided_velocity

    (traj, text, empty), sc = drawn, cfg.sampling
    denoise = backbone.denoiser(backbone.transformer)
    deltas = []
    with torch.autocast(backbone.device.type, dtype=torch.bfloat16, enabled=cfg.model.autocast):
        for x, x_next, old, s, sn in zip(traj.x, traj.x_next, traj.log_prob, traj.sigma, traj.sigma_next):
            v = guided_velocity(denoise, x, s, text, empty, sc.guidance)
            new = flow_step(v, x, s, sn, sc.eta, family=sc.family, logprob=sc.logprob, x_next=x_next).log_prob
            deltas.append((new - old).abs().float())
    deltas = torch.stack(deltas)
    return {"fp8_logprob_dev_max": deltas.max().item(), "fp8_logprob_dev_mean": deltas.mean().item()}


def add_flowgrpo_speedup(rows: list[dict]) -> None:
    """Flow-GRPO has no AdaGRPO selection: each row's iteration without its select stage against the formulation's."""
    formulation = next(r for r in rows if r["variant"] == "flowgrpo_formulation")
    for row in rows:
        row["speedup_vs_flowgrpo"] = formulation["iteration"] / (row["iteration"] - row.get("select", 0.0))


def run(device, backbone, scorer, iterations: int, anchors: bool, variants: dict, compiled: dict,
        fp8: str | None = None) -> tuple:
    """Every variant's iteration on ``backbone`` with ``scorer``, then the Flow-GRPO formulation, then the
    ``compiled`` variants (compilation stays on the shared transformer), then with ``fp8`` (a ``model.base_fp8``
    mode) the last compiled variant on a float8 base, with its log-prob drift: (rows, notes about what was
    skipped)."""
    selection = () if anchors else ("adagrpo.curriculum=false", "adagrpo.fusion=false")
    cuda = device.type == "cuda"
    skipped = []
    variants = dict(variants)
    for backend in ATTENTION:
        try:
            check_backend(backend, device)
            variants[f"mixgrpo_attention_{backend}"] = MIX + (f"model.attention_backend={backend}",)
        except RuntimeError as err:
            skipped.append(f"mixgrpo_attention_{backend}: not measured — {err}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        def config(overrides, name):
            return load_config(None, overrides + selection + (
                "sampling.steps=25", "adagrpo.candidates=4", "adagrpo.keep=1", "adagrpo.anchor_steps=0",
                "group_size=8", "model.kind=sd3", "model.path=unused", "model.lora_rank=32",
                "model.autocast=true", "data.train_prompts=unused", "reward.names=aesthetic",
                f"device={device.type}", f"out_dir={tmp}/{name}"))

        task = PromptTask(PROMPTS, PROMPTS[:4], scorer, [1.0], ["aesthetic"])
        quantized = {}
        if fp8 is not None:
            quantized[FP8] = (list(compiled.values())[-1] if compiled else MIX) + (f"model.base_fp8={fp8}",)
        for name, overrides in {**variants, "flowgrpo_formulation": None, **compiled, **quantized}.items():
            if overrides is None:  # eager, before the transformer is compiled
                rows.append(flowgrpo_row(backbone, scorer, config(VARIANTS["full_sde"], name), iterations))
                continue
            previous = os.environ.get("FASTGRPO_BACKEND")
            if name.endswith("torch_ops"):
                os.environ["FASTGRPO_BACKEND"] = "torch"
            try:
                cfg = config(overrides, name)
                drawn = window_trajectory(backbone, cfg) if name in quantized else None
                trainer = Trainer(cfg, backbone=backbone, task=task)  # quantises (fp8)
                drift = logprob_drift(backbone, cfg, drawn) if drawn else {}
                trainer.sync_stages = True
                row = {"variant": name, **drift, **measure(trainer, iterations)}
            finally:
                if previous is None:
                    os.environ.pop("FASTGRPO_BACKEND", None)
                else:
                    os.environ["FASTGRPO_BACKEND"] = previous
            row["peak_gib"] = max((v for k, v in row.items() if k.startswith("peak_")), default=None)
            rows.append(row)
            print(f"{name}: {row['iteration']:.2f} s/iteration, peak {row['peak_gib']} GiB", flush=True)
            del trainer
            if cuda:
                torch.cuda.empty_cache()
    return rows, skipped


def main(quick: bool = False, out_dir: str | None = None):
    device = common.pick_device()
    if device.type != "cuda":
        print("trainer_sd35m: skipped (needs a CUDA GPU; see `fastgrpo bench trainer` for the CPU world)")
        return 0
    iterations = 1 if quick else 2
    anchors = os.environ.get("FASTGRPO_BENCH_ANCHORS", "1") != "0"
    torch.manual_seed(0)
    backbone = RandomTextSd3(device)
    with tempfile.TemporaryDirectory() as tmp:
        scorer = _aesthetic_scorer(os.path.join(tmp, "clip"), device)
        reason = why_not_fp8("dynamic", device)
        rows, skipped = run(device, backbone, scorer, iterations, anchors, VARIANTS, COMPILED,
                            None if reason else "dynamic")
        if reason:
            skipped.append(f"{FP8}: not measured — model.base_fp8=dynamic: {reason}")
    select = ("4 candidates (25-step Euler ODE anchors) → 1 prompt" if anchors else "1 prompt (no anchors)")
    notes = [f"SD3.5-Medium architecture (random weights, bf16, LoRA r = 32), 512² (64² latents), T = 25, shift 3, "
             f"{select} × 8 samples; median of {iterations} iterations after a "
             "warm-up; seconds per stage with a device sync at each boundary. Reward: LAION aesthetic on a random "
             "CLIP ViT-L/14 after the SD3 VAE decode. Text embeddings: fixed random per prompt, cached on the "
             "device (as the real encoders are in training)."]
    compare(rows, notes)
    add_flowgrpo_speedup(rows)
    notes.append(FLOWGRPO_NOTE)
    notes.extend(skipped)
    if not anchors:
        notes.append("Without AdaGRPO's anchors (curriculum and fusion off): the select stage is empty.")
    common.write_results("trainer_sd35m" if anchors else "trainer_sd35m_no_anchors", rows, notes, out_dir,
                         device=device)
    return 0


FLOWGRPO_NOTE = ("flowgrpo_formulation: the same iteration computed as Flow-GRPO's train script does "
                 "(benchmarks/flowgrpo_formulation.py: scheduler-indexed steps with .item() lookups, per-sample "
                 "PIL reward preprocessing, host advantages, a backward per trained step, no compile), with "
                 "full_sde's SDE window and trained steps; its reward stage is separate (fastgrpo's rollout "
                 "includes its rewards). speedup_vs_flowgrpo = its iteration / the row's iteration without the "
                 "select stage (AdaGRPO's anchors, which Flow-GRPO does not run); like for like: full_sde. "
                 "Target: >= 2x. peak_<stage>_gib: the largest allocation during that stage.")


if __name__ == "__main__":
    main()
