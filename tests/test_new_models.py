"""The newer models — Z-Image (``model.kind=zimage``), FLUX.2 [klein] and [dev] (``flux2``), Qwen-Image (``qwenimage``) and Wan
text-to-video (``wan``) — on tiny pipelines built from configs in code, saved and reloaded: the backbone's ODE equals
the pipeline's own sampling loop from the same noise (time and sign conventions, Z-Image's and Qwen-Image's
per-prompt caption lengths, FLUX.2's packing and VAE batch norm, Wan's 5-D latents), and each trains through the CLI with LoRA and fully, first ratio
exactly 1, resume bit for bit; another family's directory is an error naming the pipeline class; videos are scored
frame by frame; video settings on an image model are rejected."""
import json
from pathlib import Path

import pytest
import torch

from fastgrpo import cli
from fastgrpo.models import load_backbone
from fastgrpo.models.tiny import save_tiny_pipeline
from fastgrpo.train import Trainer, load_config
from fastgrpo.train import checkpoint as ckpt
from fastgrpo.train.rollout import sample
from fastgrpo.train.schedule import sigmas as sigma_grid

PROMPTS = ["a red cat", "a blue dog on the square", "a green circle", "a photo of a dog"]


KINDS = {"zimage": "ZImagePipeline", "flux2": "Flux2KleinPipeline", "flux2_dev": "Flux2Pipeline",
         "qwenimage": "QwenImagePipeline", "wan": "WanPipeline"}
"""The tiny pipeline (``save_tiny_pipeline``'s kind) → its class; ``model.kind`` is the name before any ``_``."""
SIZE = {"wan": ("model.resolution=16", "model.frames=5")}
"""Per kind: the tiny size (Wan: 5 frames → 3 latent frames at the tiny VAE's temporal factor 2)."""


class Folder(type(Path())):
    """The fixture's directory, which also says its tiny pipeline and model kind."""
    tiny: str
    kind: str


@pytest.fixture(scope="module", params=list(KINDS))
def folder(tmp_path_factory, request):
    root = Folder(tmp_path_factory.mktemp(request.param))
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    save_tiny_pipeline(request.param, root / "model")
    save_tiny_pipeline("sd3", root / "sd3")
    root.tiny, root.kind = request.param, request.param.split("_")[0]
    return root


def _overrides(folder, out, *extra):
    return [f"model.kind={folder.kind}", f"model.path={folder / 'model'}", "model.resolution=32",
            *SIZE.get(folder.kind, ()), "model.dtype=fp32",
            "model.max_sequence_length=16", f"data.train_prompts={folder / 'prompts.txt'}", "data.eval_count=2",
            "reward.names=jpeg_incompressibility", "sampling.steps=3", "window.size=1", "adagrpo.candidates=2",
            "adagrpo.keep=2", "group_size=2", "eval_every=1000", "eval_seeds=1", f"out_dir={out}", *extra]


def test_the_backbone_samples_as_the_pipeline_does(folder):
    import diffusers

    cfg = load_config(None, _overrides(folder, folder / "unused"))
    backbone = load_backbone(cfg.model, torch.device("cpu"))
    pipe = getattr(diffusers, KINDS[folder.tiny]).from_pretrained(str(folder / "model"), local_files_only=True)
    grid = sigma_grid(4, 1.0)  # the tiny pipelines' scheduler: shift 1, no dynamic shifting
    if folder.kind == "wan":  # WanPipeline takes no σ list: its scheduler's own grid
        pipe.scheduler.set_timesteps(4)
        grid = pipe.scheduler.sigmas.clone()
    noise = torch.randn(2, *backbone.latent_shape, generator=torch.Generator().manual_seed(0))
    prompts = ["a red cat", "a blue dog on the square"]  # different lengths
    with torch.no_grad():
        ours = sample(backbone.denoiser(backbone.transformer), noise, grid, backbone.encode_prompts(prompts), None,
                      guidance=1.0, eta=0.7, family="flow_sde").latents
        side = cfg.model.resolution
        if folder.kind == "flux2":  # both take the patchified latents unpacked; [klein] returns the VAE's latents,
            start = noise.transpose(1, 2).reshape(2, -1, backbone.side, backbone.side)  # [dev] the packed tokens
            dev = folder.tiny == "flux2_dev"
            guidance = cfg.model.flux_guidance if dev else 1.0  # [dev]: embedded guidance, no CFG
            options = dict(guidance_scale=guidance, sigmas=grid[:-1].tolist())
            ours = ours if dev else backbone.unpack(ours)
        elif folder.kind == "wan":
            start, options = noise, dict(guidance_scale=1.0, num_frames=cfg.model.frames)
        else:
            start, options = noise, dict(guidance_scale=0.0, sigmas=grid[:-1].tolist())
        theirs = pipe(prompt=prompts, height=side, width=side, num_inference_steps=4, latents=start.clone(),
                      output_type="latent", max_sequence_length=16, return_dict=False, **options)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_lora_training_through_the_cli_and_a_bit_exact_resume(folder, tmp_path, monkeypatch):
    """Two iterations through the command line's ``main(argv)`` (in this process: a new one would only add the
    start-up), then one iteration and a resume to two: the saved LoRA weights and optimiser state equal the
    uninterrupted run's bit for bit."""
    monkeypatch.setenv("FASTGRPO_BACKEND", "torch")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["train", *_overrides(folder, tmp_path / "cli", "iterations=2")]) == 0
    logged = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    assert [h["first_ratio_max_dev"] for h in logged if "loss" in h] == [0.0, 0.0]
    Trainer(load_config(None, _overrides(folder, tmp_path / "half", "iterations=1"))).run(progress=False)
    resumed = Trainer(load_config(None, _overrides(folder, tmp_path / "half", "iterations=2")),
                      resume=str(tmp_path / "half"))
    resumed.run(progress=False)
    (a, sa), (b, sb) = ckpt.load(tmp_path / "cli"), ckpt.load(tmp_path / "half")
    assert sa["iteration"] == sb["iteration"] == 2 and a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a)
    optim_a, optim_b = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert optim_a.keys() == optim_b.keys() and all(
        torch.equal(optim_a[i][k], optim_b[i][k]) for i in optim_a for k in optim_a[i])


def test_full_fine_tuning(folder, tmp_path):
    trainer = Trainer(load_config(None, _overrides(folder, tmp_path, "iterations=1", "model.lora_rank=0")))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run(progress=False)
    steps = [h for h in trainer.history if "loss" in h]
    assert steps[0]["first_ratio_max_dev"] == 0.0 and steps[0]["grad_norm"] > 0
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_another_familys_directory_is_an_error_naming_the_pipeline(folder):
    cfg = load_config(None, [o.replace(str(folder / "model"), str(folder / "sd3")) for o in _overrides(folder, "x")])
    with pytest.raises(ValueError, match=f"cannot load it as a (.* or )?{KINDS[folder.tiny]}"):
        load_backbone(cfg.model, torch.device("cpu"))


def test_a_video_is_scored_frame_by_frame_and_previewed_as_a_strip():
    from fastgrpo.train import video
    from fastgrpo.train.task import Prompts

    clips = torch.rand(2, 3, 4, 6, 5, generator=torch.Generator().manual_seed(1))  # (B, 3, F, H, W)
    seen = []

    def score(images, prompts):
        seen.append(list(prompts.texts))
        return images.mean((1, 2, 3)) + torch.tensor([len(t) for t in prompts.texts], dtype=torch.float32)

    got = video.per_video(score, clips, Prompts(["a cat", "a red dog"]))
    expected = torch.stack([torch.stack([score(clips[b, :, f][None], Prompts([p]))[0] for f in range(4)]).mean()
                            for b, p in enumerate(["a cat", "a red dog"])])
    torch.testing.assert_close(got, expected)
    assert seen[0] == ["a cat"] * 4 + ["a red dog"] * 4  # each frame with its video's prompt
    strip = video.preview(clips)
    assert strip.shape == (2, 3, 6, 20) and torch.equal(strip[..., 5:10], clips[:, :, 1])


def test_video_settings_on_an_image_model_are_rejected():
    with pytest.raises(ValueError, match="model.frames=5 is a video setting; model.kind=sd3 makes images"):
        load_config(None, ["model.kind=sd3", "model.path=x", "data.train_prompts=p.txt", "reward.names=pickscore",
                           "model.frames=5"])
