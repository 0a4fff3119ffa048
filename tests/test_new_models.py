"""The newer models — Z-Image (``model.kind=zimage``) and FLUX.2 [klein] (``flux2``) — on tiny pipelines built from
configs in code, saved and reloaded: the backbone's ODE equals the pipeline's own sampling loop from the same noise
(time and sign conventions, Z-Image's per-prompt caption lengths, FLUX.2's packing and VAE batch norm), and each
trains through the CLI with LoRA and fully, first ratio exactly 1, resume bit for bit; another family's directory is
an error naming the pipeline class."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastgrpo.models import load_backbone
from fastgrpo.models.tiny import save_tiny_pipeline
from fastgrpo.train import Trainer, load_config
from fastgrpo.train.rollout import sample
from fastgrpo.train.schedule import sigmas as sigma_grid

PROMPTS = ["a red cat", "a blue dog on the square", "a green circle", "a photo of a dog"]


KINDS = {"zimage": "ZImagePipeline", "flux2": "Flux2KleinPipeline"}


class Folder(type(Path())):
    """The fixture's directory, which also says its model kind."""
    kind: str


@pytest.fixture(scope="module", params=list(KINDS))
def folder(tmp_path_factory, request):
    root = Folder(tmp_path_factory.mktemp(request.param))
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    save_tiny_pipeline(request.param, root / "model")
    save_tiny_pipeline("sd3", root / "sd3")
    root.kind = request.param
    return root


def _overrides(folder, out, *extra):
    return [f"model.kind={folder.kind}", f"model.path={folder / 'model'}", "model.resolution=32", "model.dtype=fp32",
            "model.max_sequence_length=16", f"data.train_prompts={folder / 'prompts.txt'}", "data.eval_count=2",
            "reward.names=jpeg_incompressibility", "sampling.steps=3", "window.size=1", "adagrpo.candidates=2",
            "adagrpo.keep=2", "group_size=2", "eval_every=1000", "eval_seeds=1", f"out_dir={out}", *extra]


def test_the_backbone_samples_as_the_pipeline_does(folder):
    import diffusers

    cfg = load_config(None, _overrides(folder, folder / "unused"))
    backbone = load_backbone(cfg.model, torch.device("cpu"))
    pipe = getattr(diffusers, KINDS[folder.kind]).from_pretrained(str(folder / "model"), local_files_only=True)
    grid = sigma_grid(4, 1.0)  # the tiny pipelines' scheduler: shift 1, no dynamic shifting
    noise = torch.randn(2, *backbone.latent_shape, generator=torch.Generator().manual_seed(0))
    prompts = ["a red cat", "a blue dog on the square"]  # different lengths
    with torch.no_grad():
        ours = sample(backbone.denoiser(backbone.transformer), noise, grid, backbone.encode_prompts(prompts), None,
                      guidance=1.0, eta=0.7, family="flow_sde").latents
        if folder.kind == "flux2":  # the pipeline takes the patchified latents unpacked and returns the VAE's
            start = noise.transpose(1, 2).reshape(2, -1, backbone.side, backbone.side)
            options, ours = dict(guidance_scale=1.0), backbone.unpack(ours)
        else:
            start, options = noise, dict(guidance_scale=0.0)
        theirs = pipe(prompt=prompts, height=32, width=32, num_inference_steps=4, sigmas=grid[:-1].tolist(),
                      latents=start.clone(), output_type="latent", max_sequence_length=16, return_dict=False,
                      **options)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_lora_training_through_the_cli_and_a_bit_exact_resume(folder, tmp_path):
    env = dict(os.environ, FASTGRPO_BACKEND="torch", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "fastgrpo.cli", "train",
                           *_overrides(folder, tmp_path / "cli", "iterations=2")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    logged = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    assert [h["first_ratio_max_dev"] for h in logged if "loss" in h] == [0.0, 0.0]
    # resume, in this process (the CLI ran the ops' PyTorch path; here they run as the tests do)
    straight = Trainer(load_config(None, _overrides(folder, tmp_path / "straight", "iterations=2")))
    straight.run(progress=False)
    Trainer(load_config(None, _overrides(folder, tmp_path / "half", "iterations=1"))).run(progress=False)
    resumed = Trainer(load_config(None, _overrides(folder, tmp_path / "half", "iterations=2")),
                      resume=str(tmp_path / "half"))
    resumed.run(progress=False)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_full_fine_tuning(folder, tmp_path):
    trainer = Trainer(load_config(None, _overrides(folder, tmp_path, "iterations=1", "model.lora_rank=0")))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run(progress=False)
    steps = [h for h in trainer.history if "loss" in h]
    assert steps[0]["first_ratio_max_dev"] == 0.0 and steps[0]["grad_norm"] > 0
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_another_familys_directory_is_an_error_naming_the_pipeline(folder):
    cfg = load_config(None, [o.replace(str(folder / "model"), str(folder / "sd3")) for o in _overrides(folder, "x")])
    with pytest.raises(ValueError, match=f"cannot load it as a {KINDS[folder.kind]}"):
        load_backbone(cfg.model, torch.device("cpu"))
