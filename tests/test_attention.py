"""model.attention_backend: the dispatching joint-attention processor against a float64 write-out of
softmax(QKᵀ/√d)V, whole tiny SD3 (with SD3.5's dual attention and QK norms) and FLUX transformers against the
stock processors for every backend that runs on this CPU, gradients included; the errors for a backend not
installed, a CUDA-only one on CPU, a half-precision-only one on a float32 attention and an unknown name; the
Trainer's choice, logged."""
import copy
import logging

import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from diffusers.models.attention_processor import JointAttnProcessor2_0

from fastgrpo.models import attention
from fastgrpo.models.attention import DispatchJointAttnProcessor, check_backend, set_attention_backend
from fastgrpo.train import load_config
from fastgrpo.train.loop import Trainer

CPU = torch.device("cpu")
RUNS_HERE = ("native", "native_math")


def _sd3(seed=0):
    torch.manual_seed(seed)
    return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8,
                                 num_attention_heads=2, joint_attention_dim=12, caption_projection_dim=16,
                                 pooled_projection_dim=10, out_channels=4, qk_norm="rms_norm",
                                 dual_attention_layers=(0,)).eval()


def _sd3_inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 4, 8, 8, generator=g),
                encoder_hidden_states=torch.randn(2, 5, 12, generator=g),
                pooled_projections=torch.randn(2, 10, generator=g), timestep=torch.tensor([300.0, 800.0]))


def _joint_attention_float64(attn, x, context):
    """softmax(QKᵀ/√d)V over the image and text tokens together, every product in float64: the MM-DiT math."""
    x, context = x.double(), None if context is None else context.double()
    attn = copy.deepcopy(attn).double()
    heads = attn.heads

    def split(t):
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, H, N, d)

    q, k, v = split(attn.to_q(x)), split(attn.to_k(x)), split(attn.to_v(x))
    q = attn.norm_q(q) if attn.norm_q is not None else q
    k = attn.norm_k(k) if attn.norm_k is not None else k
    if context is not None:
        tq, tk, tv = split(attn.add_q_proj(context)), split(attn.add_k_proj(context)), split(attn.add_v_proj(context))
        tq = attn.norm_added_q(tq) if attn.norm_added_q is not None else tq
        tk = attn.norm_added_k(tk) if attn.norm_added_k is not None else tk
        q, k, v = (torch.cat(pair, dim=2) for pair in ((q, tq), (k, tk), (v, tv)))
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    out = (weights @ v).transpose(1, 2).flatten(2)
    image = attn.to_out[0](out[:, :x.shape[1]])
    if context is None:
        return image, None
    text = out[:, x.shape[1]:]
    return image, (text if attn.context_pre_only else attn.to_add_out(text))


@pytest.mark.parametrize("backend", RUNS_HERE)
@pytest.mark.parametrize("which", ["joint", "joint_last", "image_only"])
def test_dispatching_processor_is_joint_attention(backend, which):
    model = _sd3()
    block = model.transformer_blocks[-1 if which == "joint_last" else 0]
    attn = block.attn2 if which == "image_only" else block.attn
    assert which != "joint_last" or attn.context_pre_only
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 7, attn.query_dim, generator=g)
    context = None if which == "image_only" else torch.randn(2, 3, attn.query_dim, generator=g)
    from diffusers.models.attention_dispatch import AttentionBackendName
    processor = DispatchJointAttnProcessor(AttentionBackendName(attention.BACKENDS[backend].dispatch))
    with torch.no_grad():
        got = processor(attn, x, context)
        image, text = _joint_attention_float64(attn, x, context)
    got_image, got_text = (got, None) if context is None else got
    torch.testing.assert_close(got_image.double(), image, rtol=1e-5, atol=1e-6)
    if context is not None:
        torch.testing.assert_close(got_text.double(), text, rtol=1e-5, atol=1e-6)


def _run(model, inputs):
    x = inputs["hidden_states"].clone().requires_grad_(True)
    out = model(**{**inputs, "hidden_states": x}, return_dict=False)[0]
    out.square().mean().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("backend", RUNS_HERE)
def test_sd3_transformer_output_and_gradient_equal_the_stock_processor(backend):
    stock = _sd3()
    routed = _sd3()
    text = set_attention_backend(routed, backend, CPU)
    processors = [m.processor for m in routed.modules() if hasattr(m, "processor")]
    assert len(processors) == 4  # three joint attentions and the first block's dual (image-only) attention
    kind = JointAttnProcessor2_0 if backend == "native" else DispatchJointAttnProcessor
    assert all(type(p) is kind for p in processors)
    assert text.startswith(f"attention: {backend} — ") and "4 attention modules" in text
    out_stock, grad_stock = _run(stock, _sd3_inputs())
    out, grad = _run(routed, _sd3_inputs())
    torch.testing.assert_close(out, out_stock, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, grad_stock, rtol=1e-4, atol=1e-7)


def test_native_again_restores_the_stock_processor():
    model = _sd3()
    set_attention_backend(model, "native_math", CPU)
    set_attention_backend(model, "native", CPU)
    assert all(type(m.processor) is JointAttnProcessor2_0 for m in model.modules() if hasattr(m, "processor"))


@pytest.mark.parametrize("backend", RUNS_HERE)
def test_flux_processors_take_the_backend(backend):
    torch.manual_seed(0)
    config = dict(patch_size=1, in_channels=8, num_layers=1, num_single_layers=1, attention_head_dim=8,
                  num_attention_heads=2, joint_attention_dim=12, pooled_projection_dim=10, axes_dims_rope=(2, 2, 4))
    stock = FluxTransformer2DModel(**config).eval()
    routed = FluxTransformer2DModel(**config).eval()
    routed.load_state_dict(stock.state_dict())
    set_attention_backend(routed, backend, CPU)
    processors = [m.processor for m in routed.modules() if hasattr(m, "processor")]
    assert len(processors) == 2 and all(p._attention_backend.value == attention.BACKENDS[backend].dispatch
                                        for p in processors)
    g = torch.Generator().manual_seed(3)
    inputs = dict(hidden_states=torch.randn(2, 16, 8, generator=g), encoder_hidden_states=torch.randn(2, 5, 12, generator=g),
                  pooled_projections=torch.randn(2, 10, generator=g), timestep=torch.tensor([0.3, 0.8]),
                  img_ids=torch.randn(16, 3, generator=g), txt_ids=torch.zeros(5, 3))
    out_stock, grad_stock = _run(stock, inputs)
    out, grad = _run(routed, inputs)
    torch.testing.assert_close(out, out_stock, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, grad_stock, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name, package, extra", [("flash", "flash_attn", "pip install 'flash-attn>=2.6.3'"),
                                                  ("xformers", "xformers", "pip install 'xformers>=0.0.29'"),
                                                  ("sage", "sageattention", "SageAttention >= 2.1.1")])
def test_a_backend_not_installed_is_an_error_naming_it_and_how_to_install_it(monkeypatch, name, package, extra):
    real = attention.importlib.util.find_spec
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda m: None if m == package else real(m))
    with pytest.raises(RuntimeError) as err:
        check_backend(name, torch.device("cuda"))
    text = str(err.value)
    assert f"model.attention_backend={name!r}" in text and repr(package) in text and extra in text


@pytest.mark.parametrize("name", ["native_flash", "native_efficient", "native_cudnn", "flex"])
def test_a_cuda_only_kernel_on_cpu_is_an_error(name):
    with pytest.raises(RuntimeError, match=f"model.attention_backend='{name}'.*CUDA only.*'cpu'"):
        set_attention_backend(_sd3(), name, CPU)


@pytest.mark.parametrize("name", ["native_flash", "native_cudnn", "flash", "flash3", "sage"])
def test_a_half_precision_kernel_on_a_float32_attention_is_an_error_naming_autocast(monkeypatch, name):
    kernels = {b.module for b in attention.BACKENDS.values() if b.module}  # as if every kernel were installed
    real = attention.importlib.util.find_spec
    monkeypatch.setattr(attention.importlib.util, "find_spec",
                        lambda module, *rest: object() if module in kernels else real(module, *rest))
    cuda = torch.device("cuda")
    with pytest.raises(RuntimeError, match=f"model.attention_backend='{name}'.*float16 / bfloat16 only.*"
                                           r"torch\.float32.*model\.autocast=true"):
        check_backend(name, cuda, torch.float32)
    for ok in (torch.bfloat16, torch.float16, None):  # half precision, or not known: past the precision check
        try:
            check_backend(name, cuda, ok)
        except RuntimeError as err:  # diffusers' own requirement check may still refuse a kernel not installed
            assert "float16 / bfloat16 only" not in str(err)
    for other in ("native", "native_efficient", "xformers", "flex"):  # these compute in float32 too
        try:
            check_backend(other, cuda, torch.float32)
        except RuntimeError as err:
            assert "float16 / bfloat16 only" not in str(err)


def test_the_attention_precision_is_the_autocast_or_the_query_weight_dtype():
    model = _sd3()
    assert attention.attention_dtype(model, autocast=True) == torch.bfloat16
    assert attention.attention_dtype(model, autocast=False) == torch.float32
    from fastgrpo.models import add_lora

    half = _sd3().to(torch.bfloat16)
    add_lora(half, 4, 4, ["to_q", "to_k", "to_v"])  # float32 adapters on a bfloat16 base: the base's dtype
    assert attention.attention_dtype(half, autocast=False) == torch.bfloat16
    x = torch.randn(2, 5, 16, dtype=torch.bfloat16)
    block = half.transformer_blocks[1].attn
    assert block.to_q(x).dtype == torch.bfloat16  # what the kernel would see


def test_unknown_and_hub_backends_are_refused():
    with pytest.raises(ValueError, match="model.attention_backend='flash_hub': not one of"):
        check_backend("flash_hub", CPU)
    with pytest.raises(ValueError, match="model.attention_backend"):
        load_config(None, ["model.attention_backend=flash_hub"])


def test_the_default_backend_is_native():
    from fastgrpo.train.config import ModelConfig
    assert ModelConfig().attention_backend == "native"


def test_the_trainer_logs_its_choice_and_trains(tmp_path, caplog):
    tiny = ("sampling.steps=3", "window.size=1", "adagrpo.candidates=2", "adagrpo.keep=1", "group_size=2",
            "eval_every=0", "iterations=1", f"out_dir={tmp_path}")
    with caplog.at_level(logging.INFO, logger="fastgrpo.models.attention"):
        math = Trainer(load_config(None, tiny + ("model.attention_backend=native_math",)))
    assert "attention: native_math" in caplog.text and math.attention.startswith("attention: native_math")
    native = Trainer(load_config(None, tiny))
    # the two kernels' velocities agree (a continuous check: the world's reward has discrete parts — colour,
    # shape, position — so an iteration's reward may flip on a 1e-7 difference, and did on one 2-core EPYC)
    x = torch.randn((3, *native.backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    sigma, text = torch.tensor([0.9, 0.5, 0.1]), native.backbone.encode_prompts(native.train_prompts.texts[:3])
    with torch.no_grad():
        v_native = native.backbone.denoiser(native.model)(x, sigma, text)
        v_math = math.backbone.denoiser(math.model)(x, sigma, text)
    torch.testing.assert_close(v_math, v_native, rtol=1e-4, atol=1e-5)
    for step in (native.step(), math.step()):
        assert step["first_ratio_max_dev"] < 1e-6  # rollout and replay run the same kernel
        assert torch.isfinite(torch.tensor(step["loss"])) and step["grad_norm"] > 0
