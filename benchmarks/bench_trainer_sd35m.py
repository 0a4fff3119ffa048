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
``FASTGRPO_BENCH_ANCHORS=0``: without AdaGRPO's anchors (plain MixGRPO vs DanceGRPO-style, as MixGRPO's Table 1
compares them); results then go to ``trainer_sd35m_no_anchors``.
"""
from __future__ import annotations

import os
import tempfile
import zlib

import torch

from fastgrpo.models import add_lora
from fastgrpo.models.base import Backbone, EmbeddingCache, decode_vae
from fastgrpo.models.tiny import sd3_vae, sd35_medium_transformer
from fastgrpo.train import Trainer, load_config
from fastgrpo.train.task import PromptTask

try:
    from benchmarks import common
    from benchmarks.bench_trainer import VARIANTS as WORLD_VARIANTS, compare, measure
except ImportError:  # run as a script
    import common
    from bench_trainer import VARIANTS as WORLD_VARIANTS, compare, measure

PROMPTS = [f"a photo of object {i} on a table, studio light" for i in range(16)]
# the world benchmark's variants, plus MixGRPO with fastgrpo's ops forced off
VARIANTS = {name: overrides for variant, overrides in WORLD_VARIANTS.items()
            for name in ((variant, "mixgrpo_torch_ops") if variant == "mixgrpo" else (variant,))}


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


def main(quick: bool = False, out_dir: str | None = None):
    device = common.pick_device()
    if device.type != "cuda":
        print("trainer_sd35m: skipped (needs a CUDA GPU; see `fastgrpo bench trainer` for the CPU world)")
        return 0
    iterations = 1 if quick else 2
    anchors = os.environ.get("FASTGRPO_BENCH_ANCHORS", "1") != "0"
    selection = () if anchors else ("adagrpo.curriculum=false", "adagrpo.fusion=false")
    torch.manual_seed(0)
    backbone = RandomTextSd3(device)
    with tempfile.TemporaryDirectory() as tmp:
        scorer = _aesthetic_scorer(os.path.join(tmp, "clip"), device)
        task = PromptTask(PROMPTS, PROMPTS[:4], scorer, [1.0], ["aesthetic"])
        rows = []
        for name, overrides in VARIANTS.items():
            cfg = load_config(None, overrides + selection + (
                "sampling.steps=25", "adagrpo.candidates=4", "adagrpo.keep=1", "adagrpo.anchor_steps=0", "group_size=8", "model.kind=sd3",
                "model.path=unused", "model.lora_rank=32", "model.autocast=true", "data.train_prompts=unused",
                "reward.names=aesthetic", "device=cuda", f"out_dir={tmp}/{name}"))
            previous = os.environ.get("FASTGRPO_BACKEND")
            if name.endswith("torch_ops"):
                os.environ["FASTGRPO_BACKEND"] = "torch"
            try:
                trainer = Trainer(cfg, backbone=backbone, task=task)
                trainer.sync_stages = True
                torch.cuda.reset_peak_memory_stats()
                row = {"variant": name, **measure(trainer, iterations)}
            finally:
                if previous is None:
                    os.environ.pop("FASTGRPO_BACKEND", None)
                else:
                    os.environ["FASTGRPO_BACKEND"] = previous
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            rows.append(row)
            print(f"{name}: {row['iteration']:.2f} s/iteration, peak {row['peak_gib']:.1f} GiB", flush=True)
            del trainer
            torch.cuda.empty_cache()
    select = ("4 candidates (25-step Euler ODE anchors) → 1 prompt" if anchors else "1 prompt (no anchors)")
    notes = [f"SD3.5-Medium architecture (random weights, bf16, LoRA r = 32), 512² (64² latents), T = 25, shift 3, "
             f"{select} × 8 samples; median of {iterations} iterations after a "
             "warm-up; seconds per stage with a device sync at each boundary. Reward: LAION aesthetic on a random "
             "CLIP ViT-L/14 after the SD3 VAE decode. Text embeddings: fixed random per prompt, cached on the "
             "device (as the real encoders are in training)."]
    compare(rows, notes)
    if not anchors:
        notes.append("Without AdaGRPO's anchors (curriculum and fusion off): the select stage is empty.")
    common.write_results("trainer_sd35m" if anchors else "trainer_sd35m_no_anchors", rows, notes, out_dir,
                         device=device)
    return 0


if __name__ == "__main__":
    main()
