"""The shipped recipes for the pipeline models (``configs/*.yaml`` whose ``model.kind`` is not the world): each
loads once given a model directory and prompts, every module name in its ``model.lora_targets`` exists in that
family's transformer (a tiny one of the same diffusers class, both experts for Wan2.2), and one iteration of it
trains at a tiny size with the first PPO ratio exactly 1 (``sampling.shift=auto`` resolved from the pipeline)."""
from pathlib import Path

import pytest
import torch
import yaml

from fastgrpo.models.tiny import save_tiny_pipeline
from fastgrpo.train import Trainer, load_config

CONFIGS = Path(__file__).parents[1] / "configs"
MODEL_RECIPES = sorted(p.stem for p in CONFIGS.glob("*.yaml")
                       if (yaml.safe_load(p.read_text()).get("model") or {}).get("kind", "world") != "world")


def _tiny(recipe: str, kind: str) -> str:
    """The tiny pipeline of the recipe's family (FLUX.2 [dev] and Wan2.2 A14B have their own layouts)."""
    if kind == "flux2":
        return "flux2_dev" if "dev" in recipe else "flux2"
    if kind == "wan":
        return "wan22" if "wan22" in recipe else "wan"
    return kind


def test_every_family_has_a_recipe():
    kinds = {yaml.safe_load((CONFIGS / f"{r}.yaml").read_text())["model"]["kind"] for r in MODEL_RECIPES}
    assert {"sd3", "flux", "flux2", "qwenimage", "zimage", "wan"} <= kinds


@pytest.mark.parametrize("recipe", MODEL_RECIPES)
def test_model_recipe_loads_its_adapter_fits_and_it_trains(recipe, tmp_path):
    path = CONFIGS / f"{recipe}.yaml"
    with pytest.raises(ValueError, match="data.train_prompts is required"):
        load_config(str(path))
    kind = load_config(str(path), ("model.path=x", "data.train_prompts=p.txt")).model.kind
    tiny = _tiny(recipe, kind)
    save_tiny_pipeline(tiny, tmp_path / "model")
    (tmp_path / "prompts.txt").write_text("".join(f"a red cat number {i}\n" for i in range(4)))
    size = ("model.resolution=16", "model.frames=5") if kind == "wan" else ("model.resolution=32",)
    cfg = load_config(str(path), (
        f"model.path={tmp_path / 'model'}", f"data.train_prompts={tmp_path / 'prompts.txt'}", *size,
        "model.dtype=fp32", "model.autocast=false", "model.max_sequence_length=16", "model.gradient_checkpointing=false",
        "device=cpu", "distributed=ddp", "reward.names=jpeg_incompressibility", "reward.weights=[]", "reward.paths={}",
        "group_size=2", "adagrpo.keep=1", "adagrpo.candidates=1", "optim.minibatches=1", "iterations=1",
        "eval_every=0", "data.eval_count=1", f"out_dir={tmp_path / 'run'}"))
    trainer = Trainer(cfg)
    assert isinstance(trainer.cfg.sampling.shift, float)
    model = trainer.model
    if cfg.model.lora_rank > 0:
        experts = getattr(model, "experts", None) or (model,)
        for expert in experts:
            names = [n for n, _ in expert.named_modules()]
            for target in cfg.model.lora_targets:  # each name wraps at least one module of this family
                assert any(n == target or n.endswith("." + target) for n in names), (recipe, target)
            assert any(p.requires_grad for p in expert.parameters())
    trainer.run(progress=False)
    step = next(h for h in trainer.history if "loss" in h)
    assert step["first_ratio_max_dev"] == 0.0 and torch.isfinite(torch.tensor(step["loss"]))
