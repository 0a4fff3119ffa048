"""CUDA suite for the trainer (``pytest -m gpu``): the loop with Triton kernels and bf16 autocast on the device —
the first PPO ratio stays exactly 1 (rollout and replay batch the same calls), on the world and on a tiny SD3
pipeline with LoRA; DDP/FSDP2 over NCCL need several GPUs and are not covered here."""
import pytest
import torch

from fastgrpo.train import Trainer, load_config

pytestmark = pytest.mark.gpu
SMALL = ("sampling.steps=6", "window.size=2", "adagrpo.candidates=4", "adagrpo.keep=2", "group_size=4",
         "device=cuda", "model.autocast=true", "eval_every=1000", "eval_seeds=1", "checkpoint_every=1000")


def test_world_on_cuda_with_autocast_keeps_the_first_ratio_exactly_one(tmp_path):
    trainer = Trainer(load_config(None, SMALL + (f"out_dir={tmp_path}",)))
    for _ in range(2):
        metrics = trainer.step()
        trainer.iteration += 1
        assert metrics["first_ratio_max_dev"] == 0.0 and metrics["grad_norm"] > 0
    assert next(trainer.model.parameters()).is_cuda


def test_stage_peaks_on_cuda(tmp_path):
    """With sync_stages each stage's peak allocated memory is reported; the update (activations kept for the
    backward) needs more than the no-grad rollout."""
    trainer = Trainer(load_config(None, SMALL + (f"out_dir={tmp_path}",)))
    trainer.sync_stages = True
    metrics = trainer.step()
    peaks = {stage: metrics[f"peak_{stage}_gib"] for stage in ("select", "rollout", "advantage", "update")}
    base = torch.cuda.memory_allocated() / 2**30
    assert all(peak >= base * 0.5 for peak in peaks.values()), peaks
    assert peaks["update"] > peaks["rollout"], peaks


def test_tiny_sd3_lora_on_cuda(tmp_path):
    pytest.importorskip("peft")
    from fastgrpo.models.tiny import save_tiny_pipeline

    save_tiny_pipeline("sd3", tmp_path / "sd3")
    (tmp_path / "prompts.txt").write_text("a red cat\na blue dog\na green square\nan image of a circle\n")
    cfg = load_config(None, SMALL + (
        "model.kind=sd3", f"model.path={tmp_path / 'sd3'}", "model.resolution=64", "model.dtype=bf16",
        "model.lora_rank=4", "model.max_sequence_length=16", f"data.train_prompts={tmp_path / 'prompts.txt'}",
        "reward.names=jpeg_incompressibility", "optim.kl_beta=0.01", f"out_dir={tmp_path / 'run'}"))
    trainer = Trainer(cfg)
    for _ in range(2):
        metrics = trainer.step()
        trainer.iteration += 1
        assert metrics["first_ratio_max_dev"] == 0.0 and torch.isfinite(torch.tensor(metrics["loss"]))
    assert trainer.save() is not None
