"""model.free_text_encoders: every prompt of a run encoded at start, then the pipeline's text encoders dropped —
the embeddings equal the lazily cached ones, a prompt outside the set is a clear error, too many prompts keep the
encoders. And resuming: keys that change how a run computes (attention kernel, compile, this one) may change, keys
added since a checkpoint was written take their defaults."""
import pytest
import torch

from fastgrpo.models.tiny import save_tiny_pipeline
from fastgrpo.train import Trainer, load_config
from fastgrpo.train.checkpoint import load as load_checkpoint

PROMPTS = ["a photo of a red cat", "a blue dog on the square", "a green circle in an image", "a painting of a dog"]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (root / "eval.txt").write_text("a yellow star\n")
    return {kind: save_tiny_pipeline(kind, root / kind) for kind in ("sd3", "flux")} | {
        "prompts": root / "prompts.txt", "eval": root / "eval.txt"}


def _config(pipelines, kind, out, *extra):
    return load_config(None, [f"model.kind={kind}", f"model.path={pipelines[kind]}", "model.resolution=32",
                              "model.dtype=fp32", "model.max_sequence_length=16",
                              f"data.train_prompts={pipelines['prompts']}", f"data.eval_prompts={pipelines['eval']}",
                              "reward.names=jpeg_incompressibility", "sampling.steps=3", "window.size=1",
                              "adagrpo.candidates=2", "adagrpo.keep=1", "group_size=2", f"out_dir={out}", *extra])


@pytest.mark.parametrize("kind, names", [("sd3", ("text_encoder", "text_encoder_2", "text_encoder_3")),
                                         ("flux", ("text_encoder", "text_encoder_2"))])
def test_the_encoders_are_freed_after_every_prompt_is_cached(pipelines, tmp_path, kind, names):
    kept = Trainer(_config(pipelines, kind, tmp_path / "kept", "model.free_text_encoders=false"))
    assert kept.text_note is None and all(getattr(kept.backbone.text_encoders.pipe, n) is not None for n in names)
    freed = Trainer(_config(pipelines, kind, tmp_path / "freed", "sampling.guidance=2"))
    pipe = freed.backbone.text_encoders.pipe
    assert all(getattr(pipe, n) is None for n in names)
    assert freed.text_note.startswith(f"text encoders freed after caching {len(PROMPTS) + 1} prompts")
    assert len(freed.backbone.encode_prompts) == len(PROMPTS) + 2  # training, evaluation and the empty prompt
    for text in [*PROMPTS, "a yellow star"]:  # the same embeddings as the lazy cache's
        a, b = kept.backbone.encode_prompts([text]), freed.backbone.encode_prompts([text])
        assert torch.equal(a.hidden, b.hidden) and torch.equal(a.pooled, b.pooled)
    with pytest.raises(RuntimeError, match=r"'an unseen prompt' is not among the .*free_text_encoders=false keeps"):
        freed.backbone.encode_prompts(["an unseen prompt"])
    if kind == "sd3":
        metrics = freed.step()  # training runs without the encoders
        assert torch.isfinite(torch.tensor(metrics["loss"]))


def test_more_prompts_than_the_cache_keep_the_encoders(pipelines, tmp_path):
    trainer = Trainer(_config(pipelines, "sd3", tmp_path, "model.text_cache=3"))
    assert trainer.text_note.startswith("text encoders kept: 5 prompts exceed model.text_cache=3")
    assert trainer.backbone.text_encoders.pipe.text_encoder is not None


WORLD = ("sampling.steps=3", "window.size=1", "adagrpo.candidates=2", "adagrpo.keep=1", "group_size=2",
         "eval_every=0", "checkpoint_every=1")


def test_resume_may_change_how_a_run_computes_and_fills_keys_added_since(tmp_path):
    Trainer(load_config(None, WORLD + ("iterations=1", f"out_dir={tmp_path}"))).run(progress=False)
    resumed = Trainer(load_config(None, WORLD + ("iterations=2", f"out_dir={tmp_path}",
                                                 "model.attention_backend=native_math")), resume=str(tmp_path))
    assert resumed.iteration == 1
    # a checkpoint written before these keys existed
    _, state = load_checkpoint(tmp_path)
    for key in ("attention_backend", "free_text_encoders", "compile", "compile_scope"):
        del state["config"]["model"][key]
    ckpt = tmp_path / (tmp_path / "latest").read_text().strip()
    torch.save(state, ckpt / "state.pt")
    assert Trainer(load_config(None, WORLD + ("iterations=2", f"out_dir={tmp_path}")),
                   resume=str(tmp_path)).iteration == 1
    with pytest.raises(ValueError, match="differs in 'model'"):  # what it trains may not change
        Trainer(load_config(None, WORLD + ("iterations=2", f"out_dir={tmp_path}", "model.lora_rank=4")),
                resume=str(tmp_path))
