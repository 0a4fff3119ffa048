"""model.compile: torch.compile of the whole transformer or of each block (inductor on this CPU; the world, and a tiny
FLUX pipeline) against the eager run of the same seeds — equal within float32 tolerances, the first PPO ratio
exactly 1 (an evaluation compiled first, then anchors, rollouts and replays: more block variants than dynamo's
default limit of 8, past which blocks ran eager and the replay departed from the rollout by one ulp), resume
bit-exact with compile on — and the eager fallback with one warning naming the reason."""
import shutil

import pytest
import torch

from fastgrpo.models import compile as regional
from fastgrpo.models.base import repeated_blocks
from fastgrpo.train import load_config
from fastgrpo.train.loop import Trainer

TINY = ("sampling.steps=4", "window.size=2", "adagrpo.candidates=4", "adagrpo.keep=2", "group_size=3",
        "eval_every=1000", "eval_seeds=1", "checkpoint_every=1000")
KEYS = ("reward", "loss", "grad_norm", "anchor_reward")

pytestmark = pytest.mark.skipif(regional.why_not(torch.device("cpu")) is not None,
                                reason=str(regional.why_not(torch.device("cpu"))))


def _trainer(out, *extra, resume=None):
    return Trainer(load_config(None, TINY + (f"out_dir={out}",) + extra), resume=resume)


def _trained(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("scope", ["transformer", "blocks"])
def test_compiled_iterations_match_eager_and_the_first_ratio_is_exactly_one(tmp_path, scope):
    eager = _trainer(tmp_path / "eager", "iterations=2")
    eager.run(progress=False)
    compiled = _trainer(tmp_path / "compiled", "iterations=2", "model.compile=true", f"model.compile_scope={scope}")
    blocks = compiled.model.transformer_blocks
    if scope == "blocks":
        assert compiled.compiled == len(blocks) > 0
        assert all(getattr(b, "_compiled_call_impl", None) is not None for b in blocks)
    else:
        assert compiled.compiled == 1 and getattr(compiled.model, "_compiled_call_impl", None) is not None
    compiled.run(progress=False)
    assert torch._dynamo.config.recompile_limit >= regional.RECOMPILE_LIMIT
    steps_eager = [h for h in eager.history if "loss" in h]
    steps_compiled = [h for h in compiled.history if "loss" in h]
    assert len(steps_compiled) == 2
    for a, b in zip(steps_eager, steps_compiled):
        assert b["first_ratio_max_dev"] == 0.0  # the replay reproduces the rollout's log-probs exactly
        for key in KEYS:  # inductor fuses and reorders float32 arithmetic: close, not equal
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-5), key
    for (name, a), b in zip(_trained(eager).items(), _trained(compiled).values()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5, msg=name)
    # the parameter names are the eager ones: checkpoints and LoRA filters are unchanged by compilation
    assert list(_trained(eager)) == list(_trained(compiled))


def test_resume_with_compile_is_bit_exact(tmp_path):
    full = _trainer(tmp_path / "full", "iterations=2", "model.compile=true")  # the default scope: transformer
    full.run(progress=False)
    half = _trainer(tmp_path / "half", "iterations=1", "model.compile=true")
    half.run(progress=False)
    resumed = _trainer(tmp_path / "half", "iterations=2", "model.compile=true", resume=str(tmp_path / "half"))
    resumed.run(progress=False)
    assert [{k: h[k] for k in KEYS} for h in full.history if "loss" in h] == \
           [{k: h[k] for k in KEYS} for h in resumed.history if "loss" in h]
    for (name, a), b in zip(_trained(full).items(), _trained(resumed).values()):
        assert torch.equal(a, b), name


def test_no_compiler_falls_back_to_eager_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.warns(RuntimeWarning, match="model.compile=true: running eager — inductor on CPU needs a C\\+\\+ "
                                            "compiler") as caught:
        trainer = _trainer(tmp_path / "run", "model.compile=true")
    assert len([w for w in caught if "model.compile" in str(w.message)]) == 1
    assert trainer.compiled == 0
    assert getattr(trainer.model, "_compiled_call_impl", None) is None
    assert all(getattr(b, "_compiled_call_impl", None) is None for b in trainer.model.transformer_blocks)
    assert trainer.step()["first_ratio_max_dev"] == 0.0


@pytest.mark.parametrize("scope", ["transformer", "blocks"])
def test_full_fine_tuning_compiles_its_kl_reference_alike(tmp_path, scope):
    """Full fine-tuning keeps a frozen copy for the KL; it is compiled with the trained model (built here, not run:
    compilation happens at the first call)."""
    trainer = _trainer(tmp_path / "run", "model.lora_rank=0", "optim.kl_beta=0.01", "model.compile=true",
                       f"model.compile_scope={scope}")
    reference = trainer.reference_copy
    assert reference is not None and reference is not trainer.model
    modules = [reference] if scope == "transformer" else list(repeated_blocks(reference))
    assert len(modules) == trainer.compiled
    assert all(getattr(m, "_compiled_call_impl", None) is not None for m in modules)
    eager = _trainer(tmp_path / "eager", "model.lora_rank=0", "optim.kl_beta=0.01")
    assert getattr(eager.reference_copy, "_compiled_call_impl", None) is None


def test_whole_transformer_compile_under_fsdp_is_refused_naming_the_keys(tmp_path, monkeypatch):
    from fastgrpo.train import loop

    monkeypatch.setattr(loop, "rank_and_world", lambda: (0, 2))  # as under torchrun with 2 processes
    with pytest.raises(ValueError, match="model.compile_scope=transformer with distributed=fsdp.*"
                                         "model.compile_scope=blocks"):
        _trainer(tmp_path / "run", "model.compile=true", "distributed=fsdp")


@pytest.mark.parametrize("kind", ["flux"])
def test_compiled_blocks_on_a_tiny_pipeline_match_eager(tmp_path, kind):
    """Regional compilation on the real-model path — FLUX's double and single blocks, LoRA on their projections
    (SD3's joint blocks are the world's, compiled above): one iteration equal to eager within float32 tolerances,
    the first ratio exactly 1."""
    from fastgrpo.models.tiny import save_tiny_pipeline

    save_tiny_pipeline(kind, tmp_path / kind)
    (tmp_path / "prompts.txt").write_text("a red cat\na blue dog\na green square\n")
    real = (f"model.kind={kind}", f"model.path={tmp_path / kind}", "model.resolution=32", "model.dtype=fp32",
            "model.max_sequence_length=16", f"data.train_prompts={tmp_path / 'prompts.txt'}",
            "reward.names=jpeg_incompressibility", "sampling.steps=3", "window.size=1", "adagrpo.candidates=2",
            "adagrpo.keep=1", "group_size=2")
    eager = Trainer(load_config(None, real + (f"out_dir={tmp_path / 'eager'}",))).step()
    trainer = Trainer(load_config(None, real + (f"out_dir={tmp_path / 'compiled'}", "model.compile=true",
                                                "model.compile_scope=blocks")))
    assert trainer.compiled == len(repeated_blocks(trainer.model)) > 0
    compiled = trainer.step()
    assert compiled["first_ratio_max_dev"] == 0.0
    for key in ("reward", "loss", "grad_norm"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-3, abs=1e-5), key


def _rank(rank, init, out, result):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    try:
        for compiled in (False, True):  # the eager run of these ranks, then the compiled one
            extra = ("model.compile=true", "model.compile_scope=blocks") if compiled else ()
            trainer = _trainer(f"{out}-{compiled}", "iterations=2", "distributed=fsdp", "adagrpo.candidates=2",
                               "adagrpo.keep=1", "group_size=2", *extra)
            trainer.run(progress=False)
            if rank == 0:
                result[compiled] = ([h for h in trainer.history if "loss" in h], trainer.compiled)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_compiled_blocks_under_fsdp2_match_eager(tmp_path):
    """Regional compilation on 2 gloo ranks under FSDP2 (each compiled block sharded, as torchtitan composes them):
    the first ratio exactly 1 and the same losses as the eager run of those ranks. Slow (2.3 min from an empty
    inductor cache on 2 cores): ``make test-slow``. Under DDP the same held when checked once (2026-12-07)."""
    import torch.multiprocessing as mp

    result = mp.Manager().dict()
    mp.spawn(_rank, args=(str(tmp_path / "init"), str(tmp_path / "run"), result), nprocs=2)
    (eager, none), (compiled, blocks) = result[False], result[True]
    assert blocks > 0 and none == 0 and len(compiled) == 2
    for a, b in zip(eager, compiled):
        assert b["first_ratio_max_dev"] == 0.0
        for key in KEYS:
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-5), key
