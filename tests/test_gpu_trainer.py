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


@pytest.mark.parametrize("scope", ["transformer", "blocks"])
def test_compiled_world_on_cuda_with_autocast_keeps_the_first_ratio_exactly_one(tmp_path, scope):
    """The CPU suite checks this in float32 without autocast; here inductor's CUDA kernels under bf16 autocast: the
    rollout runs the no-grad graph and the replay the training graph, which must round alike."""
    from fastgrpo.models.compile import why_not

    if why_not(torch.device("cuda")) is not None:
        pytest.skip(why_not(torch.device("cuda")))
    trainer = Trainer(load_config(None, SMALL + (f"out_dir={tmp_path}", "model.compile=true",
                                                 f"model.compile_scope={scope}")))
    assert trainer.compiled > 0
    for _ in range(2):
        metrics = trainer.step()
        trainer.iteration += 1
        assert metrics["first_ratio_max_dev"] == 0.0 and metrics["grad_norm"] > 0


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


def _fp8_dynamic_reason():
    from fastgrpo.models.fp8 import why_not

    return why_not("dynamic", torch.device("cuda")) if torch.cuda.is_available() else "no CUDA device"


@pytest.mark.skipif(_fp8_dynamic_reason() is not None, reason=str(_fp8_dynamic_reason()))
def test_dynamic_fp8_linear_computes_the_row_scaled_e4m3_product():
    """``model.base_fp8=dynamic``: y = (a sᵀ) ⊙ (e4m3(x / a) · e4m3(W / s)ᵀ) + b with a, s the rows' amax / 448 —
    written out here in float32 (the fp8 products are exact in float32; only the accumulation order differs)."""
    from torch import nn

    from fastgrpo.models.fp8 import E4M3_MAX, quantize_base

    torch.manual_seed(0)
    layer = nn.Linear(256, 128, device="cuda", dtype=torch.bfloat16).requires_grad_(False)
    w = layer.weight.float()
    holder = nn.Module()
    holder.transformer_blocks = nn.ModuleList([layer])
    assert quantize_base(holder, "dynamic", torch.device("cuda")) == 1
    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)

    def e4m3(t):
        scale = t.abs().amax(dim=1, keepdim=True) / E4M3_MAX
        return (t / scale).to(torch.float8_e4m3fn).float(), scale

    x8, a = e4m3(x.float())
    w8, s = e4m3(w)
    want = (x8 @ w8.T) * a * s.T + layer.bias.float()
    torch.testing.assert_close(layer(x).float(), want, rtol=2e-2, atol=2e-2)  # bf16 output


@pytest.mark.skipif(_fp8_dynamic_reason() is not None, reason=str(_fp8_dynamic_reason()))
def test_world_on_a_dynamic_fp8_base_keeps_the_first_ratio_exactly_one(tmp_path):
    trainer = Trainer(load_config(None, SMALL + (f"out_dir={tmp_path}", "model.base_fp8=dynamic")))
    assert trainer.quantized > 0
    for _ in range(2):
        metrics = trainer.step()
        trainer.iteration += 1
        assert metrics["first_ratio_max_dev"] == 0.0 and metrics["grad_norm"] > 0
