"""``sampling.shift=auto``: the σ grid fastgrpo builds from the resolved shift equals the grid each pipeline's own
``__call__`` sets on its scheduler (read back from the scheduler after a call), for a scheduler with a fixed shift
(SD3) and with resolution-dependent shifting (FLUX.1, FLUX.2 [klein] and [dev], Qwen-Image, Z-Image: their μ
functions differ); a scheduler no single shift describes, and a model without a pipeline, are errors."""
import json

import pytest
import torch

from fastgrpo.models import load_backbone
from fastgrpo.models.tiny import save_tiny_pipeline
from fastgrpo.train import load_config
from fastgrpo.train.schedule import sigmas

PIPELINES = {"sd3": ("sd3", "StableDiffusion3Pipeline"), "flux": ("flux", "FluxPipeline"),
             "flux2": ("flux2", "Flux2KleinPipeline"), "flux2_dev": ("flux2", "Flux2Pipeline"),
             "qwenimage": ("qwenimage", "QwenImagePipeline"), "zimage": ("zimage", "ZImagePipeline")}
DYNAMIC = dict(use_dynamic_shifting=True, base_image_seq_len=16, max_image_seq_len=4096, base_shift=0.5,
               max_shift=1.15)
"""Resolution-dependent shifting with a base length below the tiny models' 64–256 tokens, so μ is far from 0."""


def _model(tmp_path, tiny: str, scheduler: dict):
    save_tiny_pipeline(tiny, tmp_path / "model")
    path = tmp_path / "model" / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **scheduler}))
    (tmp_path / "prompts.txt").write_text("".join(f"a red cat number {i}\n" for i in range(8)))
    return load_config(None, [f"model.kind={PIPELINES[tiny][0]}", f"model.path={tmp_path / 'model'}",
                              "model.resolution=32", "model.dtype=fp32", "model.max_sequence_length=16",
                              f"data.train_prompts={tmp_path / 'prompts.txt'}", "reward.names=jpeg_incompressibility",
                              "sampling.shift=auto", "sampling.steps=6"])


@pytest.mark.parametrize("tiny", list(PIPELINES))
def test_auto_shift_gives_the_pipelines_own_grid(tmp_path, tiny):
    import diffusers

    cfg = _model(tmp_path, tiny, dict(shift=2.5) if tiny == "sd3" else DYNAMIC)
    backbone = load_backbone(cfg.model, torch.device("cpu"))
    steps = 6
    shift = backbone.auto_shift(steps)
    ours = sigmas(steps, shift)
    pipe = getattr(diffusers, PIPELINES[tiny][1]).from_pretrained(str(tmp_path / "model"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    options = dict(guidance_scale=0.0) if tiny in ("zimage", "flux") else {}
    with torch.no_grad():
        pipe(prompt=["a red cat"], height=32, width=32, num_inference_steps=steps, output_type="latent",
             max_sequence_length=16, sigmas=torch.linspace(1.0, 1.0 / steps, steps).tolist(), **options)
    theirs = pipe.scheduler.sigmas.float()
    assert theirs.shape == ours.shape and float(theirs[-1]) == 0.0
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    if tiny != "sd3":
        assert abs(shift - 1.0) > 0.3  # the dynamic shift moved the grid (else the comparison proves little)


def test_auto_shift_is_resolved_when_the_model_loads_and_saved_as_a_number(tmp_path):
    from fastgrpo.train import Trainer
    from fastgrpo.train.config import dump_config

    cfg = _model(tmp_path, "flux", DYNAMIC)
    trainer = Trainer(cfg)
    assert isinstance(trainer.cfg.sampling.shift, float)
    torch.testing.assert_close(trainer.sigmas, sigmas(6, trainer.backbone.auto_shift(6)))
    dump_config(trainer.cfg, tmp_path / "config.yaml")
    assert load_config(str(tmp_path / "config.yaml")).sampling.shift == trainer.cfg.sampling.shift


def test_auto_shift_errors(tmp_path):
    cfg = _model(tmp_path, "qwenimage", dict(DYNAMIC, shift_terminal=0.02))
    with pytest.raises(ValueError, match="sets shift_terminal=0.02, a grid no single shift gives"):
        load_backbone(cfg.model, torch.device("cpu")).auto_shift(6)
    from fastgrpo.train import Trainer
    with pytest.raises(ValueError, match="sampling.shift=auto takes the shift from a pipeline's scheduler"):
        Trainer(load_config(None, ["sampling.shift=auto"]))
