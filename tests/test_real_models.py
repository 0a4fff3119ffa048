"""The real-model path on tiny pipelines built from configs in code (no download): a StableDiffusion3Pipeline and a
FluxPipeline written with save_pretrained, loaded by ``model.path``, trained two iterations through the CLI —
LoRA through peft and full fine-tuning — plus the errors a wrong directory or config gives."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from fastgrpo.cli import main  # noqa: E402
from fastgrpo.models.tiny import save_tiny_pipeline  # noqa: E402
from fastgrpo.train import Trainer, load_config  # noqa: E402
from fastgrpo.train.checkpoint import load as load_checkpoint  # noqa: E402

PROMPTS = ["a photo of a red cat", "a blue dog on the square", "a green circle in an image", "a painting of a dog",
           "a red square with a blue circle", "an image of a cat and a dog"]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return {kind: save_tiny_pipeline(kind, root / kind) for kind in ("sd3", "flux")} | {"prompts": root / "prompts.txt"}


def _overrides(pipelines, kind, out, *extra):
    return [f"model.kind={kind}", f"model.path={pipelines[kind]}", "model.resolution=32", "model.dtype=fp32",
            "model.max_sequence_length=16", f"data.train_prompts={pipelines['prompts']}", "data.eval_count=3",
            "reward.names=jpeg_incompressibility", "sampling.steps=4", "window.size=2", "adagrpo.candidates=4",
            "adagrpo.keep=2", "group_size=3", "iterations=2", "eval_every=2", "eval_seeds=1", "checkpoint_every=2",
            f"out_dir={out}", *extra]


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_lora_training_through_the_cli(pipelines, tmp_path, kind):
    out = tmp_path / "run"
    assert main(["train", *_overrides(pipelines, kind, out, "model.lora_rank=4", "optim.lr=1e-3")]) == 0
    records = _metrics(out)
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 2 and all(r["first_ratio_max_dev"] == 0.0 for r in steps)
    assert all(torch.isfinite(torch.tensor(r["reward"])) for r in steps)
    assert "eval_train_reward" in records[-1] and "eval_heldout_reward" not in records[-1]
    weights, state = load_checkpoint(out)
    assert weights and all("lora" in k for k in weights)  # the adapter only
    assert state["iteration"] == 2
    # the base weights did not move; the adapter did
    cfg = load_config(str(out / "config.yaml"))
    fresh = Trainer(cfg)
    resumed = Trainer(cfg, resume=str(out))
    base = {k: v for k, v in fresh.model.state_dict().items() if "lora" not in k}
    for k, v in resumed.model.state_dict().items():
        if "lora" not in k:
            assert torch.equal(v, base[k]), k
    moved = [k for k in weights if not torch.equal(weights[k], fresh.model.state_dict()[k].cpu())]
    assert moved, "no adapter weight changed"


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_full_fine_tuning_and_resume_reproduce_the_run(pipelines, tmp_path, kind):
    a, b = tmp_path / "a", tmp_path / "b"
    extra = ("optim.lr=1e-3", "eval_every=100", "eval_seeds=1")
    assert main(["train", *_overrides(pipelines, kind, a, *extra)]) == 0
    assert main(["train", *_overrides(pipelines, kind, b, *extra, "iterations=1", "checkpoint_every=1")]) == 0
    assert main(["train", "--resume", str(b), *_overrides(pipelines, kind, b, *extra)]) == 0
    wa, _ = load_checkpoint(a)
    wb, _ = load_checkpoint(b)
    assert set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)
    losses = lambda out: [r["loss"] for r in _metrics(out) if "loss" in r]  # noqa: E731
    assert losses(a) == losses(b)


def test_kl_reference_under_lora_is_the_adapter_free_model(pipelines, tmp_path):
    cfg = load_config(None, tuple(_overrides(pipelines, "sd3", tmp_path, "model.lora_rank=4", "optim.kl_beta=0.1")))
    trainer = Trainer(cfg)
    assert trainer.reference_copy is None  # no copy: the adapter is switched off instead
    first = trainer.step()
    # peft's "gaussian" init starts B at zero: the adapted model equals the base, so the first KL is exactly 0
    assert first["kl"] == 0.0 and first["first_ratio_max_dev"] == 0.0
    trainer.iteration += 1
    second = trainer.step()
    assert second["kl"] > 0


def test_several_rewards_as_weighted_per_reward_z_scores(pipelines, tmp_path):
    cfg = load_config(None, tuple(_overrides(pipelines, "sd3", tmp_path, "model.lora_rank=2",
                                             "reward.names=jpeg_incompressibility,jpeg_compressibility",
                                             "reward.weights=1.0,0.5", "reward.aggregate=zscore_sum")))
    trainer = Trainer(cfg)
    assert trainer.multi_columns
    out = trainer.step()
    assert out["first_ratio_max_dev"] == 0.0 and torch.isfinite(torch.tensor(out["reward"]))
    metrics = trainer.evaluate()
    assert {"eval_train_reward", "eval_train_reward_jpeg_compressibility"} <= set(metrics)


@pytest.mark.parametrize("lora", [4, 0], ids=["lora", "full"])
def test_diffusion_nft_trains_and_resumes_on_a_tiny_sd3(pipelines, tmp_path, lora):
    """Two DiffusionNFT iterations through the CLI on a real SD3 pipeline (LoRA and full fine-tuning), the KL
    reference being the adapter-free model or the frozen copy; a resumed run matches the uninterrupted one."""
    a, b = tmp_path / "a", tmp_path / "b"
    extra = ("method=nft", f"model.lora_rank={lora}", "optim.lr=1e-3", "optim.kl_beta=1e-4", "eval_every=100")
    assert main(["train", *_overrides(pipelines, "sd3", a, *extra)]) == 0
    steps = [r for r in _metrics(a) if "loss" in r]
    assert len(steps) == 2 and all(0.0 <= r["optimality"] <= 1.0 and r["v_norm_ratio"] > 0 for r in steps)
    weights, state = load_checkpoint(a)
    old = state["method_state"]["old"]
    assert state["method"] == "nft" and old and set(old) <= set(weights)  # the trained parameters only
    assert main(["train", *_overrides(pipelines, "sd3", b, *extra, "iterations=1", "checkpoint_every=1")]) == 0
    assert main(["train", "--resume", str(b), *_overrides(pipelines, "sd3", b, *extra)]) == 0
    wb, state_b = load_checkpoint(b)
    assert all(torch.equal(weights[k], wb[k]) for k in weights)
    assert all(torch.equal(old[k], state_b["method_state"]["old"][k]) for k in old)
    assert [r["loss"] for r in steps] == [r["loss"] for r in _metrics(b) if "loss" in r]


NEW_METHODS = {
    "awm": ("method=awm",),
    "dgpo": ("method=dgpo", "dgpo.trunc_steps=3"),
    "grpo_guard": ("guard.rationorm=true", "optim.clip_range=2e-6"),
    "tempflow_grpo": ("branch.enabled=true", "branch.points=0,1,2", "branch.strides=1", "branch.noise_weight=true",
                      "window.flash=false", "adagrpo.fusion=false"),
    "pave_grpo": ("branch.enabled=true", "branch.points=0,1", "branch.strides=1", "branch.pave_splits=2,3",
                  "sampling.logprob=quadratic", "window.flash=false"),
}


@pytest.mark.parametrize("name", sorted(NEW_METHODS))
def test_every_new_method_trains_two_iterations_on_a_tiny_sd3_with_lora(pipelines, tmp_path, name):
    out = tmp_path / name
    extra = ("model.lora_rank=4", "optim.lr=1e-3", "eval_every=100", *NEW_METHODS[name])
    assert main(["train", *_overrides(pipelines, "sd3", out, *extra)]) == 0
    steps = [r for r in _metrics(out) if "loss" in r]
    assert len(steps) == 2 and all(torch.isfinite(torch.tensor([r["loss"], r["grad_norm"]])).all() for r in steps)
    if "first_ratio_max_dev" in steps[0]:  # the SDE-replay options: the replay is the rollout
        assert all(r["first_ratio_max_dev"] == 0.0 for r in steps)
    weights, state = load_checkpoint(out)
    assert weights and all("lora" in k for k in weights) and state["iteration"] == 2


def test_lora_on_the_world(tmp_path):
    cfg = load_config(None, ("model.lora_rank=4", "adagrpo.candidates=4", "adagrpo.keep=2", "group_size=3",
                             "sampling.steps=4", "window.size=2", f"out_dir={tmp_path}"))
    trainer = Trainer(cfg)
    trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trained and all("lora" in n for n in trained)
    assert trainer.step()["first_ratio_max_dev"] == 0.0


def test_bad_model_directories_and_keys(pipelines, tmp_path):
    with pytest.raises(ValueError, match="model.path is required"):
        Trainer(load_config(None, tuple(_overrides(pipelines, "sd3", tmp_path, "model.path=null"))))
    with pytest.raises(FileNotFoundError, match="model.path=.*not a directory"):
        Trainer(load_config(None, tuple(_overrides(pipelines, "sd3", tmp_path, f"model.path={tmp_path}/nowhere"))))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks .*model_index.json"):
        Trainer(load_config(None, tuple(_overrides(pipelines, "flux", tmp_path, f"model.path={tmp_path}/empty"))))
    with pytest.raises(ValueError, match="cannot load it as a FluxPipeline"):  # an SD3 directory given as FLUX
        Trainer(load_config(None, tuple(_overrides(pipelines, "flux", tmp_path, f"model.path={pipelines['sd3']}"))))
    with pytest.raises(ValueError, match="model.lora_targets"):
        Trainer(load_config(None, tuple(_overrides(pipelines, "sd3", tmp_path, "model.lora_rank=2",
                                                   "model.lora_targets=no_such_layer"))))
    with pytest.raises(ValueError, match="data.train_prompts is required"):
        load_config(None, ("model.kind=sd3", "reward.names=jpeg_compressibility"))
    with pytest.raises(ValueError, match="reward.names"):
        load_config(None, ("reward.names=pickscore",))  # the world is scored by its own reward
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        Trainer(load_config(None, tuple(_overrides(pipelines, "sd3", tmp_path, "reward.names=nope"))))
    with pytest.raises(ValueError, match="reward.weights"):
        load_config(None, tuple(_overrides(pipelines, "sd3", tmp_path, "reward.weights=1,2")))
    with pytest.raises(ValueError, match="adagrpo.candidates=8 exceeds the 6"):
        Trainer(load_config(None, tuple(_overrides(pipelines, "sd3", tmp_path, "adagrpo.candidates=8"))))
    with pytest.raises(ValueError, match="model.resolution=34"):
        Trainer(load_config(None, tuple(_overrides(pipelines, "sd3", tmp_path, "model.resolution=34"))))


def test_resume_refuses_weights_of_another_model(pipelines, tmp_path):
    out = tmp_path / "lora"
    assert main(["train", *_overrides(pipelines, "sd3", out, "model.lora_rank=4", "iterations=1",
                                      "checkpoint_every=1")]) == 0
    with pytest.raises(ValueError, match="differs in 'model'"):
        Trainer(load_config(None, tuple(_overrides(pipelines, "sd3", out))), resume=str(out))


def test_anchor_steps_use_a_cheaper_dpm_anchor(tmp_path):
    cfg = load_config(None, ("adagrpo.anchor_steps=3", "adagrpo.candidates=4", "adagrpo.keep=2", "group_size=3",
                             "sampling.steps=6", "window.size=2", f"out_dir={tmp_path}"))
    trainer = Trainer(cfg)
    calls = []
    velocity = trainer.backbone.velocity
    trainer.backbone.velocity = lambda *a: calls.append(a[1].shape[0]) or velocity(*a)
    trainer._select(seed=1)
    assert calls == [4, 4, 4]  # three batched model calls for the four candidates' anchors
    with pytest.raises(ValueError, match="adagrpo.anchor_steps"):
        load_config(None, ("adagrpo.anchor_steps=-1",))


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_real_model_configs_load_and_their_adapters_fit(pipelines, tmp_path, kind):
    from pathlib import Path

    from fastgrpo.models import load_backbone
    from fastgrpo.models.lora import has_lora

    name = {"sd3": "sd35m_adagrpo_mixgrpo", "flux": "flux_adagrpo_mixgrpo"}[kind]
    path = Path(__file__).parents[1] / "configs" / f"{name}.yaml"
    with pytest.raises(ValueError, match="data.train_prompts is required"):
        load_config(str(path))
    cfg = load_config(str(path), (f"model.path={pipelines[kind]}", f"data.train_prompts={pipelines['prompts']}"))
    assert cfg.model.kind == kind and cfg.model.lora_rank > 0 and cfg.window.size == 4
    cfg.model.dtype, cfg.model.resolution, cfg.device = "fp32", 32, "cpu"
    backbone = load_backbone(cfg.model, torch.device("cpu"))
    assert has_lora(backbone.transformer)
    wrapped = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in backbone.transformer.named_parameters()
               if ".lora_A" in n}
    assert {"to_q", "add_q_proj"} <= wrapped  # image and text streams both adapted
