"""Pipelines built from configs in code — no download — for tests, benchmarks and trying the real-model path:

* ``save_tiny_pipeline(kind, directory)``: a few-layer StableDiffusion3Pipeline (``sd3``) / FluxPipeline (``flux``)
  / Flux2KleinPipeline (``flux2``) / Flux2Pipeline (``flux2_dev``) / QwenImagePipeline (``qwenimage``) /
  WanPipeline (``wan``; ``wan22``: two experts; ``wan22_ti2v``: per-token timesteps) / ZImagePipeline (``zimage``)
  (random weights, word-level tokenizers) written with
  ``save_pretrained``, loadable by ``model.path`` exactly as a downloaded directory of that family is;
* ``sd35_medium_transformer()``: the SD3.5-Medium transformer architecture (2.5B parameters) with random weights,
  and ``sd3_vae()``: the SD3 VAE architecture (16 latent channels) — the benchmark's stand-ins for the real weights.
"""
from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("a photo of cat dog red blue green square circle on the in with and an image painting at".split())


def word_tokenizer(max_length: int):
    """A word-level tokenizer made in memory (pad, unknown, end tokens + ``WORDS``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "</s>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
                                   model_max_length=max_length)


def _clip_text(hidden: int, projection: int, max_length: int = 16, with_projection: bool = True):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(CLIPTextConfig(
        vocab_size=len(WORDS) + 3, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=max_length, projection_dim=projection, eos_token_id=2,
        pad_token_id=0, bos_token_id=2))


def _t5(d_model: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(WORDS) + 3, d_model=d_model, d_ff=2 * d_model, d_kv=8,
                                   num_layers=2, num_heads=2, pad_token_id=0, eos_token_id=2))


def _qwen3(hidden: int):
    from transformers import Qwen3Config, Qwen3Model

    return Qwen3Model(Qwen3Config(vocab_size=len(WORDS) + 3, hidden_size=hidden, intermediate_size=2 * hidden,
                                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                                  max_position_embeddings=64, pad_token_id=0, eos_token_id=2, bos_token_id=2))


def _mistral3(hidden: int):
    """Mistral-3 (a Pixtral vision tower, unused for text, and a 31-layer Mistral language model)."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig

    text = MistralConfig(vocab_size=len(WORDS) + 3, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=31, num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                         max_position_embeddings=64, pad_token_id=0, eos_token_id=2, bos_token_id=2)
    vision = PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 head_dim=8, image_size=32, patch_size=16)
    return Mistral3ForConditionalGeneration(Mistral3Config(vision_config=vision, text_config=text, spatial_merge_size=1,
                                                           image_token_index=len(WORDS) + 2))


def _vae(latent_channels: int, shift: float | None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=4, sample_size=32,
                         scaling_factor=1.5, shift_factor=shift, use_quant_conv=False, use_post_quant_conv=False)


KINDS = ("sd3", "flux", "flux2", "flux2_dev", "qwenimage", "wan", "wan22", "wan22_ti2v", "zimage")


def save_tiny_pipeline(kind: str, directory, seed: int = 0) -> Path:
    """Write a tiny ``kind`` (one of ``KINDS``) pipeline to ``directory``
    (random weights; VAE factor 2, Wan's temporal factor 2)."""
    torch.manual_seed(seed)
    directory = Path(directory)
    if kind == "sd3":
        from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

        transformer = SD3Transformer2DModel(
            sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
            joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=24, out_channels=4,
            pos_embed_max_size=32)
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(4, 0.1),
            text_encoder=_clip_text(8, 8), tokenizer=word_tokenizer(16),
            text_encoder_2=_clip_text(16, 16), tokenizer_2=word_tokenizer(16),
            text_encoder_3=_t5(32), tokenizer_3=word_tokenizer(16))
    elif kind == "flux":
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
            axes_dims_rope=(4, 4, 8))
        pipe = FluxPipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(4, 0.1),
            text_encoder=_clip_text(16, 16, with_projection=False), tokenizer=word_tokenizer(16),
            text_encoder_2=_t5(32), tokenizer_2=word_tokenizer(16))
    elif kind == "zimage":
        from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

        transformer = ZImageTransformer2DModel(
            all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=2, n_refiner_layers=1,
            n_heads=2, n_kv_heads=2, cap_feat_dim=16, axes_dims=[4, 6, 6], axes_lens=[64, 32, 32])
        tokenizer = word_tokenizer(16)
        tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # Qwen3's role: text
        pipe = ZImagePipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
                              vae=_vae(4, 0.1), text_encoder=_qwen3(16), tokenizer=tokenizer)
    elif kind in ("flux2", "flux2_dev"):
        from diffusers import (AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Pipeline,
                               Flux2Transformer2DModel)

        dev = kind == "flux2_dev"
        transformer = Flux2Transformer2DModel(  # [dev] is guidance-distilled: an embedded guidance input
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=48, timestep_guidance_channels=16, axes_dims_rope=(4, 4, 4, 4),
            guidance_embeds=dev)
        vae = AutoencoderKLFlux2(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                 block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                                 sample_size=32)
        tokenizer = word_tokenizer(16)
        if dev:  # Mistral-3 Small, 31+ layers: FLUX.2 [dev] reads hidden states 10, 20 and 30
            text = _mistral3(16)
            # the pipeline sends [{"type": "text", "text": ...}] contents; the tiny template keeps the user's only
            tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}{% for c in m['content'] %}"
                                       "{{ c['text'] }}{% endfor %}{% endif %}{% endfor %}")
            pipeline_cls = Flux2Pipeline
        else:  # Qwen3, 28 layers: FLUX.2 [klein] reads hidden states 9, 18 and 27
            from transformers import Qwen3Config, Qwen3ForCausalLM

            text = Qwen3ForCausalLM(Qwen3Config(
                vocab_size=len(WORDS) + 3, hidden_size=16, intermediate_size=32, num_hidden_layers=28,
                num_attention_heads=2, num_key_value_heads=2, head_dim=8, max_position_embeddings=64, pad_token_id=0,
                eos_token_id=2, bos_token_id=2))
            tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
            pipeline_cls = Flux2KleinPipeline
        pipe = pipeline_cls(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
                            vae=vae, text_encoder=text, tokenizer=tokenizer)
    elif kind in ("wan", "wan22", "wan22_ti2v"):
        from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
        from transformers import UMT5Config, UMT5EncoderModel

        def wan_transformer():
            return WanTransformer3DModel(
                patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=64)

        transformer = wan_transformer()
        # wan22: Wan2.2 A14B's layout — a second (low-noise) expert below boundary_ratio (0.5 here, so a short
        # schedule crosses it); wan22_ti2v: TI2V-5B's per-token timesteps
        experts = dict(transformer_2=wan_transformer(), boundary_ratio=0.5) if kind == "wan22" else {}
        if kind == "wan22_ti2v":
            experts = dict(expand_timesteps=True)
        vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True],
                               latents_mean=[0.1, -0.2, 0.0, 0.3], latents_std=[1.5, 0.8, 1.0, 2.0],
                               scale_factor_temporal=2, scale_factor_spatial=2)
        text = UMT5EncoderModel(UMT5Config(vocab_size=len(WORDS) + 3, d_model=16, d_ff=32, d_kv=8, num_layers=2,
                                           num_heads=2, pad_token_id=0, eos_token_id=2))
        pipe = WanPipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=vae,
                           text_encoder=text, tokenizer=word_tokenizer(16), **experts)
    elif kind == "qwenimage":
        from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline,
                               QwenImageTransformer2DModel)
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        transformer = QwenImageTransformer2DModel(
            patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=16, axes_dims_rope=(4, 6, 6))
        vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1,
                                     temperal_downsample=[False], latents_mean=[0.1, -0.2, 0.0, 0.3],
                                     latents_std=[1.5, 0.8, 1.0, 2.0])
        text = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
            text_config=dict(vocab_size=len(WORDS) + 3, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                             pad_token_id=0, eos_token_id=2, bos_token_id=2,
                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                              "mrope_section": [2, 1, 1]}),
            vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                               fullatt_block_indexes=[0]),
            pad_token_id=0, eos_token_id=2, bos_token_id=2))
        pipe = QwenImagePipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
                                 vae=vae, text_encoder=text, tokenizer=word_tokenizer(64))
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    pipe.save_pretrained(str(directory))
    return directory


def sd35_medium_transformer(**overrides):
    """SD3.5-Medium's transformer architecture (MMDiT-X, 24 layers, 2.2B parameters), random weights."""
    from diffusers import SD3Transformer2DModel

    config = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                  num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384, qk_norm="rms_norm",
                  dual_attention_layers=tuple(range(13)))
    config.update(overrides)
    return SD3Transformer2DModel(**config)


def sd3_vae():
    """The SD3 / SD3.5 VAE architecture (16 latent channels, factor 8), random weights."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                         layers_per_block=2, latent_channels=16, sample_size=1024, scaling_factor=1.5305,
                         shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
