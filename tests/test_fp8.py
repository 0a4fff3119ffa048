"""model.base_fp8: the frozen base's block linears in float8 e4m3 (torchao), checked against the quantisation's own
math written out here (s_j = max_i |W_ji| / 448 per output channel, W8 = e4m3(W / s)), then on the world:
the quantised transformer equals the transformer whose weights are that formula's s ⊙ W8, its log-probs stay
within the stated tolerance of the unquantised base, training keeps the first ratio exactly 1 and resumes bit for
bit, and bad settings name their keys."""
import sys

import pytest
import torch
from torch import nn

from fastgrpo.models import load_backbone
from fastgrpo.models.base import repeated_blocks
from fastgrpo.models.fp8 import E4M3_MAX, Float8FrozenLinear, _frozen_linears, quantize_base, why_not
from fastgrpo.ops import flow_step
from fastgrpo.train import load_config
from fastgrpo.train.loop import Trainer
from fastgrpo.train.rollout import sample
from fastgrpo.train.schedule import sigmas as make_sigmas
from fastgrpo.train.task import build_task

pytestmark = pytest.mark.skipif(why_not("weight", torch.device("cpu")) is not None,
                                reason=str(why_not("weight", torch.device("cpu"))))
CPU = torch.device("cpu")
TINY = ("sampling.steps=4", "window.size=2", "adagrpo.candidates=4", "adagrpo.keep=2", "group_size=3",
        "eval_every=1000", "eval_seeds=1", "checkpoint_every=1000")
VELOCITY_RTOL = 3e-2
"""‖v_fp8 − v‖ / ‖v‖ on the world (measured 0.9–1.3% per step, 2026-12-07)."""
LOGPROB_ATOL = 2e-3
"""|log π_fp8(x'|x) − log π(x'|x)| per sample on the world's trajectories (measured: mean 2e-5 to 3e-4 per step,
largest 9.2e-4 at the last SDE step, 2026-12-07) — the size of Flow-GRPO's clip range (1e-4): why the base is
quantised for replays too, not for rollouts alone."""


def _dequantised(weight: torch.Tensor) -> torch.Tensor:
    """The per-channel e4m3 quantisation written out: s ⊙ e4m3(W / s), s = max|W_j·| / 448 — s and W / s in the
    weight's own float32 (in float64 a quotient that is exactly a tie between two e4m3 values in float32 can fall on
    one side: seen once in 16384 weights), the product in float64."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1, keepdim=True) / E4M3_MAX
    return (w / scale).to(torch.float8_e4m3fn).double() * scale.double()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_quantised_linear_computes_the_per_channel_e4m3_formula(seed):
    torch.manual_seed(seed)
    layer = nn.Linear(96, 48)
    with torch.no_grad():
        layer.weight[3] *= 50  # an outlier row: its own scale, the others unaffected
    layer.requires_grad_(False)
    want_weight = _dequantised(layer.weight)
    holder = nn.Module()
    holder.transformer_blocks = nn.ModuleList([layer])  # one "block" for repeated_blocks
    assert quantize_base(holder, "weight", CPU) == 1
    x = torch.randn(7, 96, dtype=torch.float64)
    want = x @ want_weight.T + layer.bias.double()
    got = layer(x.float()).double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    xg = x.float().requires_grad_(True)  # the backward to the input: ∂L/∂y · (s ⊙ W8)
    upstream = torch.randn(7, 48, dtype=torch.float64)
    (layer(xg).double() * upstream).sum().backward()
    torch.testing.assert_close(xg.grad.double(), upstream @ want_weight, rtol=1e-5, atol=1e-5)
    assert (want_weight - layer.weight.dequantize().double()).abs().max() < 1e-6 * want_weight.abs().max()
    assert torch.finfo(torch.float8_e4m3fn).max == E4M3_MAX


def _world_pair():
    """Two copies of the world with the same LoRA adapter; the second's base quantised."""
    cfg = load_config(None, ())
    ref, fp8 = load_backbone(cfg.model, CPU), load_backbone(cfg.model, CPU)
    fp8.transformer.load_state_dict(ref.transformer.state_dict())
    return cfg, ref, fp8


def test_the_world_in_fp8_equals_its_dequantised_reference_and_keeps_the_adapter():
    cfg, ref, fp8 = _world_pair()
    chosen = {n for n, m in fp8.transformer.named_modules() if m in _frozen_linears(fp8.transformer, "weight")}
    adapter = {n: p.detach().clone() for n, p in fp8.transformer.named_parameters() if p.requires_grad}
    assert quantize_base(fp8.transformer, "weight", CPU) == len(chosen) > 0
    assert not any("lora_" in n for n in chosen) and any(n.endswith(".base_layer") for n in chosen)
    # the reference: the same transformer with each chosen weight replaced by the formula's s ⊙ e4m3(W / s)
    blocks = {id(m) for b in repeated_blocks(ref.transformer) for m in b.modules()}
    with torch.no_grad():
        for name, module in ref.transformer.named_modules():
            if name in chosen:
                assert id(module) in blocks
                module.weight.copy_(_dequantised(module.weight).float())
    kinds = {n: type(m.weight).__name__ for n, m in fp8.transformer.named_modules() if isinstance(m, nn.Linear)}
    assert all(kinds[n] == "Float8Tensor" for n in chosen)
    assert kinds["proj_out.base_layer"] == "Parameter" and kinds["context_embedder"] == "Parameter"  # outside the blocks
    trained = {n: p for n, p in fp8.transformer.named_parameters() if p.requires_grad}
    assert list(trained) == list(adapter)
    for name, value in adapter.items():  # the adapter: same values, fp32, still trained
        assert torch.equal(trained[name], value) and trained[name].dtype == torch.float32, name
    texts = build_task(cfg, CPU).train.texts[:6]
    x = torch.randn((6, *ref.latent_shape), generator=torch.Generator().manual_seed(4))
    s = torch.rand(6, generator=torch.Generator().manual_seed(5))
    want = ref.denoiser(ref.transformer)(x, s, ref.encode_prompts(texts))
    got = fp8.denoiser(fp8.transformer)(x, s, fp8.encode_prompts(texts))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    upstream = torch.randn(want.shape, generator=torch.Generator().manual_seed(6))
    (want * upstream).sum().backward()  # lora_B's gradients pass through every quantised layer after them
    (got * upstream).sum().backward()
    reference = dict(ref.transformer.named_parameters())
    for name, param in trained.items():
        want_grad = reference[name].grad
        torch.testing.assert_close(param.grad, want_grad, rtol=1e-4, atol=1e-5 * want_grad.abs().max().item(),
                                   msg=name)


def test_fp8_log_probs_stay_within_the_stated_tolerance_of_the_full_precision_base():
    cfg, ref, fp8 = _world_pair()
    quantize_base(fp8.transformer, "weight", CPU)
    texts = build_task(cfg, CPU).train.texts[:8]
    text = ref.encode_prompts(texts)
    steps, sc = cfg.sampling.steps, cfg.sampling
    noise = torch.randn((8, *ref.latent_shape), generator=torch.Generator().manual_seed(0))
    traj = sample(ref.denoiser(ref.transformer), noise, make_sigmas(steps, sc.shift), text, None, guidance=1.0,
                  eta=sc.eta, family=sc.family, logprob=sc.logprob, window=(0, steps - 1), seed=0)
    deviations = []
    with torch.no_grad():
        for x, x_next, s, sn in zip(traj.x, traj.x_next, traj.sigma, traj.sigma_next):
            sigma = torch.full((8,), s)
            v = ref.denoiser(ref.transformer)(x, sigma, text)
            v8 = fp8.denoiser(fp8.transformer)(x, sigma, text)
            assert 0 < ((v8 - v).norm() / v.norm()).item() < VELOCITY_RTOL
            kw = dict(family=sc.family, logprob=sc.logprob, x_next=x_next)
            logp = flow_step(v, x, s, sn, sc.eta, **kw).log_prob
            logp8 = flow_step(v8, x, s, sn, sc.eta, **kw).log_prob
            deviations.append((logp8 - logp).abs().max().item())
    assert 0 < max(deviations) < LOGPROB_ATOL


def _trainer(out, *extra, resume=None):
    return Trainer(load_config(None, TINY + (f"out_dir={out}", "model.base_fp8=weight") + extra), resume=resume)


def _adapter(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_training_on_an_fp8_base_keeps_the_first_ratio_one_and_resumes_bit_exact(tmp_path):
    full = _trainer(tmp_path / "full", "iterations=2")
    assert full.quantized > 0
    start = _adapter(full)
    full.run(progress=False)
    steps = [h for h in full.history if "loss" in h]
    assert len(steps) == 2 and all(h["first_ratio_max_dev"] == 0.0 for h in steps)
    assert any(not torch.equal(start[n], p) for n, p in _adapter(full).items())  # the adapter trained
    half = _trainer(tmp_path / "half", "iterations=1")
    half.run(progress=False)
    resumed = _trainer(tmp_path / "half", "iterations=2", resume=str(tmp_path / "half"))
    resumed.run(progress=False)
    keys = ("loss", "reward", "grad_norm")
    assert [{k: h[k] for k in keys} for h in steps] == [{k: h[k] for k in keys} for h in resumed.history
                                                       if "loss" in h]
    for (name, a), b in zip(_adapter(full).items(), _adapter(resumed).values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("overrides, words", [
    (("model.base_fp8=weight", "model.lora_rank=0"), ["model.base_fp8=weight", "model.lora_rank"]),
    (("model.base_fp8=weight", "distributed=fsdp"), ["model.base_fp8=weight", "distributed=fsdp"]),
    (("model.base_fp8=fp4",), ["model.base_fp8", "weight", "dynamic"]),
])
def test_bad_fp8_settings_name_their_keys(overrides, words):
    with pytest.raises(ValueError) as error:
        load_config(None, overrides)
    assert all(word in str(error.value) for word in words), str(error.value)


def test_dynamic_fp8_on_a_cpu_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"model.base_fp8=dynamic: .*CUDA"):
        Trainer(load_config(None, TINY + (f"out_dir={tmp_path}", "model.base_fp8=dynamic")))


def test_fp8_without_torchao_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao → ImportError
    with pytest.raises(ValueError, match=r"model.base_fp8=weight: .*fastgrpo\[fp8\]"):
        Trainer(load_config(None, TINY + (f"out_dir={tmp_path}", "model.base_fp8=weight")))


def test_an_old_torchao_names_the_release_needed(monkeypatch):
    import torchao

    monkeypatch.setattr(torchao, "__version__", "0.15.1")
    assert why_not("weight", CPU) == "torchao 0.15.1 is too old: pip install 'torchao>=0.16'"
    monkeypatch.setattr(torchao, "__version__", "0.16.0+cpu")
    assert why_not("weight", CPU) is None


def test_dynamic_fp8_with_no_aligned_layer_says_so(monkeypatch):
    from fastgrpo.models import fp8

    monkeypatch.setattr(fp8, "why_not", lambda mode, device: None)  # as on an sm89+ GPU
    holder = nn.Module()
    holder.transformer_blocks = nn.ModuleList([nn.Linear(24, 40).requires_grad_(False)])  # 24: not a multiple of 16
    with pytest.raises(ValueError, match=r"model.base_fp8=dynamic: .* no frozen linear layer whose sides are "
                                         r"multiples of 16 \(use model.base_fp8=weight\)"):
        quantize_base(holder, "dynamic", CPU)


def test_quantising_twice_leaves_the_base_as_it_was():
    _, _, fp8 = _world_pair()
    count = quantize_base(fp8.transformer, "weight", CPU)
    first = {n: m.weight.qdata.clone() for n, m in fp8.transformer.named_modules() if isinstance(m, nn.Linear)
             and type(m.weight).__name__ == "Float8Tensor"}
    assert quantize_base(fp8.transformer, "weight", CPU) == count == len(first)
    for name, module in fp8.transformer.named_modules():
        if name in first:
            assert torch.equal(module.weight.qdata, first[name]), name


def _ddp_worker(rank, init, out, result):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    try:
        trainer = _trainer(out, "iterations=2")
        trainer.run(progress=False)
        base = {n: m.weight.qdata.clone() for n, m in trainer.model.named_modules()
                if isinstance(m, nn.Linear) and type(m.weight).__name__ == "Float8Tensor"}
        result[rank] = (_adapter(trainer), base, [h["first_ratio_max_dev"] for h in trainer.history if "loss" in h])
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_train_one_adapter_on_the_same_fp8_base(tmp_path):
    """DDP leaves the float8 weights out of its broadcast (it cannot flatten them): each rank quantises the same
    weights, so the bases agree; the adapter is averaged as usual."""
    import torch.multiprocessing as mp

    result = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path / "out"), result), nprocs=2)
    (adapter0, base0, ratios0), (adapter1, base1, _) = result[0], result[1]
    assert base0 and base0.keys() == base1.keys() and all(torch.equal(base0[k], base1[k]) for k in base0)
    assert adapter0.keys() == adapter1.keys() and all(torch.equal(adapter0[k], adapter1[k]) for k in adapter0)
    assert ratios0 == [0.0, 0.0]  # rank 0 keeps the history
    initial = _adapter(_trainer(tmp_path / "fresh"))
    assert any(not torch.equal(initial[k], adapter0[k]) for k in adapter0)


def test_only_torchaos_known_noise_is_dropped(caplog):
    """fastgrpo drops three messages torchao's presence causes (fastgrpo/_quiet.py); the rest of what those
    loggers say, and the same words from another logger, still reach the log."""
    import logging

    with caplog.at_level(logging.WARNING):
        logging.getLogger("torchao").warning("Failed to load /x/_C_cutlass_90a.abi3.so: Could not load this library")
        logging.getLogger("torchao").warning("something torchao means")
        logging.getLogger("diffusers.quantizers.torchao.torchao_quantizer").warning(
            "Unable to import `torchao` Tensor objects. This may affect loading checkpoints serialized with `torchao`")
        logging.getLogger("torch.utils._pytree").warning("<enum 'X'> is an Enum subclass and is now natively "
                                                         "supported by torch.compile as an opaque value type.")
        logging.getLogger("elsewhere").warning("Failed to load a file")
    kept = [(r.name, r.getMessage()) for r in caplog.records]
    cpu = torch.version.cuda is None and not torch.version.hip
    assert ("torchao", "something torchao means") in kept and ("elsewhere", "Failed to load a file") in kept
    assert len(kept) == (2 if cpu else 3)


@pytest.mark.slow
def test_compiled_blocks_on_an_fp8_base_match_eager(tmp_path):
    """Regional compilation over the float8 layers (torchao's tensors and the straight-through backward traced by
    dynamo): the first ratio stays 1 and the iterations equal the eager ones within float32 tolerances. Slow: ≈ 2
    min of compilation on 2 cores (2026-12-07)."""
    from fastgrpo.models.compile import why_not as why_not_compile

    if why_not_compile(CPU) is not None:
        pytest.skip(why_not_compile(CPU))
    runs = {}
    for name, extra in (("eager", ()), ("blocks", ("model.compile=true", "model.compile_scope=blocks"))):
        trainer = _trainer(tmp_path / name, "iterations=2", *extra)
        trainer.run(progress=False)
        runs[name] = [h for h in trainer.history if "loss" in h]
    assert len(runs["blocks"]) == 2
    for a, b in zip(runs["eager"], runs["blocks"]):
        assert b["first_ratio_max_dev"] == 0.0
        for key in ("reward", "loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-5), key


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_an_fp8_base_trains_a_tiny_pipeline_with_the_first_ratio_one(kind, tmp_path, monkeypatch):
    """SD3's joint blocks and FLUX's double and single blocks quantised (the newer families: test_new_models)."""
    from fastgrpo.models.tiny import save_tiny_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_tiny_pipeline(kind, tmp_path / "model")
    (tmp_path / "prompts.txt").write_text("a red cat\na blue dog\na green square\na photo of a circle\n")
    trainer = Trainer(load_config(None, (
        f"model.kind={kind}", f"model.path={tmp_path / 'model'}", "model.resolution=32", "model.dtype=fp32",
        "model.max_sequence_length=16", f"data.train_prompts={tmp_path / 'prompts.txt'}", "data.eval_count=2",
        "reward.names=jpeg_incompressibility", "sampling.steps=3", "window.size=1", "adagrpo.candidates=2",
        "adagrpo.keep=2", "group_size=2", "eval_every=1000", "eval_seeds=1", f"out_dir={tmp_path / 'run'}",
        "model.base_fp8=weight")))
    per_block = {}
    for block in repeated_blocks(trainer.model):
        per_block.setdefault(type(block).__name__, []).extend(
            m for m in block.modules() if isinstance(m, Float8FrozenLinear))
    assert trainer.quantized == sum(map(len, per_block.values())) > 0
    assert all(per_block.values())  # every kind of block: FLUX's double and single ones
    assert set(per_block) == ({"FluxTransformerBlock", "FluxSingleTransformerBlock"} if kind == "flux"
                              else {"JointTransformerBlock"})
    metrics = trainer.step()
    assert metrics["first_ratio_max_dev"] == 0.0 and metrics["grad_norm"] > 0
