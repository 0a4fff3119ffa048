"""The newer models — Z-Image (``model.kind=zimage``), FLUX.2 [klein] and [dev] (``flux2``), Qwen-Image
(``qwenimage``) and Wan text-to-video (``wan``: Wan2.1, Wan2.2 A14B's two experts, Wan2.2 TI2V's per-token
timesteps) — on tiny pipelines built from configs in code, saved and reloaded: the backbone's ODE equals the
pipeline's own sampling loop from the same noise (time and sign conventions, Z-Image's and Qwen-Image's per-prompt
caption lengths, FLUX.2's packing and VAE batch norm, Wan's 5-D latents, Wan2.2's expert switch and second CFG
scale), and each trains through the CLI with LoRA and fully, first ratio exactly 1, resume bit for bit; another
family's directory is an error naming the pipeline class; videos are scored frame by frame; video settings on an
image model are rejected."""
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
         "qwenimage": "QwenImagePipeline", "wan": "WanPipeline", "wan22": "WanPipeline", "wan22_ti2v": "WanPipeline"}
"""The tiny pipeline (``save_tiny_pipeline``'s kind) → its class; ``model.kind`` is the name before any ``_``
(wan22*: wan)."""
VIDEO = ("model.resolution=16", "model.frames=5")
SIZE = {"wan": VIDEO, "wan22": VIDEO + ("model.guidance_2=2.0",), "wan22_ti2v": VIDEO}
"""Per tiny pipeline: its size (Wan: 5 frames → 3 latent frames at the tiny VAE's temporal factor 2) and settings
(Wan2.2 A14B: the low-noise expert's own CFG scale)."""


class Folder(type(Path())):
    """A directory with a tiny pipeline in ``model/``, which also says that pipeline (``save_tiny_pipeline``'s
    kind) and its ``model.kind`` (wan22*: wan; flux2_dev: flux2)."""
    tiny: str
    kind: str

    @classmethod
    def of(cls, root, tiny: str) -> "Folder":
        folder = cls(root)
        folder.tiny, folder.kind = tiny, "wan" if tiny.startswith("wan") else tiny.split("_")[0]
        return folder


@pytest.fixture(scope="module", params=list(KINDS))
def folder(tmp_path_factory, request):
    root = Folder.of(tmp_path_factory.mktemp(request.param), request.param)
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    save_tiny_pipeline(request.param, root / "model")
    save_tiny_pipeline("sd3", root / "sd3")
    return root


def _overrides(folder, out, *extra):
    return [f"model.kind={folder.kind}", f"model.path={folder / 'model'}", "model.resolution=32",
            *SIZE.get(folder.tiny, ()), "model.dtype=fp32",
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
    # Wan2.2 A14B: CFG 3 on the high-noise expert's steps, 2 on the low-noise one's (the pipeline's negative
    # prompt: "")
    guidance, empty = (3.0, backbone.encode_prompts(["", ""])) if folder.tiny == "wan22" else (1.0, None)
    with torch.no_grad():
        ours = sample(backbone.denoiser(backbone.transformer), noise, grid, backbone.encode_prompts(prompts), empty,
                      guidance=guidance, eta=0.7, family="flow_sde").latents
        side = cfg.model.resolution
        if folder.kind == "flux2":  # both take the patchified latents unpacked; [klein] returns the VAE's latents,
            start = noise.transpose(1, 2).reshape(2, -1, backbone.side, backbone.side)  # [dev] the packed tokens
            dev = folder.tiny == "flux2_dev"
            guidance = cfg.model.flux_guidance if dev else 1.0  # [dev]: embedded guidance, no CFG
            options = dict(guidance_scale=guidance, sigmas=grid[:-1].tolist())
            ours = ours if dev else backbone.unpack(ours)
        elif folder.kind == "wan":
            start, options = noise, dict(guidance_scale=guidance, num_frames=cfg.model.frames)
            if folder.tiny == "wan22":
                options.update(guidance_scale_2=cfg.model.guidance_2)
        else:
            start, options = noise, dict(guidance_scale=0.0, sigmas=grid[:-1].tolist())
        theirs = pipe(prompt=prompts, height=side, width=side, num_inference_steps=4, latents=start.clone(),
                      output_type="latent", max_sequence_length=16, return_dict=False, **options)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_training_through_the_cli_and_a_bit_exact_resume(folder, tmp_path, monkeypatch, lora):
    """Two iterations through the command line's ``main(argv)`` (in this process: a new one would only add the
    start-up), with LoRA or fine-tuning the whole transformer, then one iteration and a resume to two: the saved
    weights (the adapter, or every weight) and the AdamW state equal the uninterrupted run's bit for bit."""
    monkeypatch.setenv("FASTGRPO_BACKEND", "torch")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    size = () if lora else ("model.lora_rank=0",)
    assert cli.main(["train", *_overrides(folder, tmp_path / "cli", "iterations=2", *size)]) == 0
    logged = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    steps = [h for h in logged if "loss" in h]
    assert [h["first_ratio_max_dev"] for h in steps] == [0.0, 0.0] and all(h["grad_norm"] > 0 for h in steps)
    Trainer(load_config(None, _overrides(folder, tmp_path / "half", "iterations=1", *size))).run(progress=False)
    resumed = Trainer(load_config(None, _overrides(folder, tmp_path / "half", "iterations=2", *size)),
                      resume=str(tmp_path / "half"))
    resumed.run(progress=False)
    (a, sa), (b, sb) = ckpt.load(tmp_path / "cli"), ckpt.load(tmp_path / "half")
    assert sa["iteration"] == sb["iteration"] == 2 and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(".lora_" in k for k in a) == lora and (lora or len(a) == len(resumed.model.state_dict()))
    optim_a, optim_b = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert optim_a.keys() == optim_b.keys() and all(
        torch.equal(optim_a[i][k], optim_b[i][k]) for i in optim_a for k in optim_a[i])
    if not lora:  # the whole transformer moved from the pipeline's weights
        start = load_backbone(load_config(None, _overrides(folder, tmp_path / "x", *size)).model, torch.device("cpu"))
        initial = start.transformer.state_dict()
        assert initial.keys() == a.keys() and any(not torch.equal(initial[k], a[k]) for k in initial)


def test_an_fp8_base_trains_with_the_first_ratio_exactly_one(folder, tmp_path):
    """``model.base_fp8=weight`` on each family's blocks (both Wan2.2 experts'): quantised, trained, first ratio 1."""
    pytest.importorskip("torchao")
    trainer = Trainer(load_config(None, _overrides(folder, tmp_path, "model.base_fp8=weight")))
    float8 = [m for m in trainer.model.modules() if type(getattr(m, "weight", None)).__name__ == "Float8Tensor"
              and isinstance(m, torch.nn.Linear)]
    assert trainer.quantized == len(float8) > 0
    metrics = trainer.step()
    assert metrics["first_ratio_max_dev"] == 0.0 and metrics["grad_norm"] > 0


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
    with pytest.raises(ValueError, match="model.guidance_2=2.0 is the low-noise expert's scale"):
        load_config(None, ["model.kind=sd3", "model.path=x", "data.train_prompts=p.txt", "reward.names=pickscore",
                           "model.guidance_2=2"])


def test_wan22_sends_each_sample_to_its_expert_and_trains_both(tmp_path):
    """Wan2.2 A14B as one module: a batch with samples on both sides of the boundary equals each expert called on
    its own rows (the pipeline's transformer ≥ boundary_ratio·1000, transformer_2 below); LoRA adapters on both get
    gradients and are checkpointed; guidance_2 on a one-transformer pipeline is an error."""
    from diffusers import WanPipeline

    from fastgrpo.models.wan import WanExperts

    root = Folder.of(tmp_path, "wan22")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    save_tiny_pipeline("wan22", root / "model")
    cfg = load_config(None, _overrides(root, tmp_path / "run", "iterations=1"))
    backbone = load_backbone(cfg.model, torch.device("cpu"))
    experts = backbone.transformer
    assert isinstance(experts, WanExperts) and experts.boundary == 500.0
    pipe = WanPipeline.from_pretrained(str(root / "model"), local_files_only=True)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, *backbone.latent_shape, generator=g)
    sigma = torch.tensor([0.9, 0.3, 0.5])  # high, low, high (500 ≥ 500)
    text = backbone.encode_prompts(PROMPTS[:3])
    got = backbone.velocity(experts, x, sigma, text)
    with torch.no_grad():
        for i, expert in enumerate((pipe.transformer, pipe.transformer_2, pipe.transformer)):
            want = expert(hidden_states=x[i:i + 1], timestep=sigma[i:i + 1] * 1000, return_dict=False,
                          encoder_hidden_states=text.hidden[i:i + 1])[0]
            torch.testing.assert_close(got[i:i + 1], want, rtol=1e-5, atol=1e-5)
    got.square().mean().backward()
    lora = {n: p for n, p in experts.named_parameters() if p.requires_grad}
    assert any(n.startswith("high.") for n in lora) and any(n.startswith("low.") for n in lora)
    assert all(p.grad is not None for p in lora.values())  # lora_B starts at zero, so lora_A's gradient may be 0
    assert any(p.grad.abs().sum() > 0 for n, p in lora.items() if n.startswith("low."))

    trainer = Trainer(cfg)
    trainer.run(progress=False)
    weights, _ = ckpt.load(tmp_path / "run")
    assert any(k.startswith("high.") for k in weights) and any(k.startswith("low.") for k in weights)

    save_tiny_pipeline("wan", tmp_path / "one")
    one = load_config(None, [o.replace(str(root / "model"), str(tmp_path / "one"))
                             for o in _overrides(root, tmp_path / "x")])
    with pytest.raises(ValueError, match="model.guidance_2=2.0 needs a two-expert Wan2.2 pipeline"):
        load_backbone(one.model, torch.device("cpu"))


def _wan22_rank(rank, root, kind, result):
    torch.distributed.init_process_group("gloo", init_method=f"file://{root}/init-{kind}", rank=rank, world_size=2)
    try:
        folder = Folder.of(root, "wan22")
        trainer = Trainer(load_config(None, _overrides(folder, f"{root}/{kind}", "iterations=2", "model.lora_rank=0",
                                                       "sampling.steps=5", "sampling.shift=1.0", "window.size=4",
                                                       f"distributed={kind}")))
        trainer.run(progress=False)
        from fastgrpo.train import distributed
        weights = distributed.full_weights(trainer.trained, trainer.model, False, all_ranks=True)
        if rank == 0:
            result["weights"] = weights
            result["steps"] = [h for h in trainer.history if "loss" in h]
    finally:
        torch.distributed.destroy_process_group()


def test_wan22_two_experts_train_fully_under_ddp_and_fsdp2(tmp_path):
    """Wan2.2 A14B's experts fine-tuned whole on 2 gloo ranks: the window (σ 1, .8, .6, .4 against the boundary .5)
    uses both experts, so both move; DDP (one expert idle per step: unused parameters allowed) and FSDP2 (both
    experts' blocks sharded) end on the same weights (the same averaged gradients, reduced in another order)."""
    import torch.multiprocessing as mp

    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    save_tiny_pipeline("wan22", tmp_path / "model")
    runs = {}
    for kind in ("ddp", "fsdp"):
        result = mp.Manager().dict()
        mp.spawn(_wan22_rank, args=(str(tmp_path), kind, result), nprocs=2)
        runs[kind] = dict(result)
    folder = Folder.of(tmp_path, "wan22")
    initial = load_backbone(load_config(None, _overrides(folder, "x", "model.lora_rank=0")).model,
                            torch.device("cpu")).transformer.state_dict()
    ddp, fsdp = runs["ddp"]["weights"], runs["fsdp"]["weights"]
    assert ddp.keys() == fsdp.keys() == initial.keys()
    for side in ("high.", "low."):
        assert any(not torch.equal(initial[k], ddp[k]) for k in initial if k.startswith(side)), side
    for k in initial:
        torch.testing.assert_close(fsdp[k], ddp[k], rtol=1e-4, atol=1e-6)
    for kind in runs:
        assert [s["first_ratio_max_dev"] for s in runs[kind]["steps"]] == [0.0, 0.0]
