"""``fastgrpo bench trainer_sd35m`` runs on CUDA only; its machinery (every variant through ``Trainer`` on a shared
backbone, the Flow-GRPO formulation beside them, the speed-up columns, the float8-base row with its log-prob
drift — weight-only here, dynamic on an sm89+ GPU) runs here on CPU at a tiny size, so that a GPU session does not
discover a broken benchmark."""
import pytest
import torch
from safetensors.torch import save_file

import benchmarks.bench_trainer_sd35m as bench
from fastgrpo.models import tiny
from fastgrpo.rewards import AestheticHead, MultiReward
from test_rewards import EMBED, save_clip


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                         norm_num_groups=4, latent_channels=16, sample_size=32, scaling_factor=1.5305,
                         shift_factor=0.0609)


def test_the_sd35m_benchmark_runs_every_kind_of_row_on_a_tiny_model(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "sd35_medium_transformer", lambda: tiny.sd35_medium_transformer(
        num_layers=1, attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16, sample_size=8,
        pos_embed_max_size=16, dual_attention_layers=(0,)))
    monkeypatch.setattr(bench, "sd3_vae", _tiny_vae)
    device = torch.device("cpu")
    torch.manual_seed(0)
    backbone = bench.RandomTextSd3(device, resolution=64, lora_rank=4)
    save_clip(tmp_path)
    save_file(AestheticHead(EMBED).state_dict(), str(tmp_path / "head.safetensors"))
    scorer = MultiReward({"aesthetic": 1.0}, aesthetic={"path": str(tmp_path),
                                                        "head_path": str(tmp_path / "head.safetensors")})
    variants = {k: bench.VARIANTS[k] for k in ("full_sde", "mixgrpo_reward_overlap")}
    rows, skipped = bench.run(device, backbone, scorer, 1, True, variants, {}, fp8="weight")
    assert [r["variant"] for r in rows] == [*variants, "flowgrpo_formulation", bench.FP8]
    quantized = rows.pop()  # last: the shared transformer's base is float8 from here on
    assert 0 < quantized["fp8_logprob_dev_mean"] <= quantized["fp8_logprob_dev_max"] < 1e-1
    assert quantized["iteration"] > 0 and all("fp8" not in k for r in rows for k in r)
    assert sum(type(m.weight).__name__ == "Float8Tensor" for m in backbone.transformer.modules()
               if isinstance(m, torch.nn.Linear)) > 0
    assert len(skipped) == len(bench.ATTENTION)  # the CUDA kernels are not measured on CPU, and say why
    assert all("not measured" in note and "model.attention_backend" in note for note in skipped)
    formulation = rows[-1]
    assert formulation["first_ratio_max_dev"] < 1e-5 and formulation["reward"] > 0
    notes = []
    bench.compare(rows, notes)
    bench.add_flowgrpo_speedup(rows)
    for row in rows:
        assert row["iteration"] > 0 and row["speedup_vs_flowgrpo"] > 0
        if row["variant"] != "flowgrpo_formulation":
            assert row["select"] > 0  # AdaGRPO's anchors ran, and are left out of the comparison
    full = next(r for r in rows if r["variant"] == "full_sde")
    assert full["speedup_vs_flowgrpo"] == pytest.approx(formulation["iteration"] / (full["iteration"] - full["select"]))
