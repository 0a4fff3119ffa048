"""HPS-v3 on a tiny random Qwen2-VL built in code, saved as an HPSv3 checkpoint directory and loaded through the
real loader; checked against transformers' own processor (PIL path) and the official forward written out by hand."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
if int(transformers.__version__.split(".")[0]) < 5:
    pytest.skip("hpsv3 needs transformers >= 5", allow_module_level=True)
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration  # noqa: E402

from fastgrpo.rewards import RewardConfigError, available_rewards, build_reward  # noqa: E402
from fastgrpo.rewards.hpsv3 import (INSTRUCTION, PIXELS, RATING, REWARD_TOKEN, pil_bicubic_levels,  # noqa: E402
                                    smart_resize)

PROMPTS = ["a red square on the left", "a photo of a cat", "big blue circle under a tree at night",
           "a photo of a cat"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
# Qwen2-VL's chat format for one user turn of content parts (the real template also numbers pictures on request)
TEMPLATE = ("{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
            "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
            "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
            "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ part['text'] }}{% endif %}{% endfor %}"
            "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
HIDDEN = 32


def tiny_tokenizer():
    """A word-level tokenizer over the instruction's words with Qwen2-VL's special tokens and chat template."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    split = pre_tokenizers.Whitespace()
    text = INSTRUCTION + RATING.replace(REWARD_TOKEN, "") + " ".join(PROMPTS) + " system user assistant You are a"
    words = sorted({w for w, _ in split.pre_tokenize_str(text)} - {"{", "}", "text_prompt"})
    core = Tokenizer(models.WordLevel({"<unk>": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="<unk>"))
    core.pre_tokenizer = split
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<|endoftext|>",
                                        eos_token="<|im_end|>")
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def tiny_config(tokenizer, vocab):
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
                         bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>")),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=HIDDEN, num_heads=4, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def flat_config(tokenizer, vocab):
    """The same model as ``tiny_config`` in the flat layout Qwen2-VL-7B-Instruct's config.json ships in."""
    nested = tiny_config(tokenizer, vocab)
    text = nested.text_config
    return {"model_type": "qwen2_vl", "vocab_size": vocab, "hidden_size": text.hidden_size,
            "intermediate_size": text.intermediate_size, "num_hidden_layers": text.num_hidden_layers,
            "num_attention_heads": text.num_attention_heads, "num_key_value_heads": text.num_key_value_heads,
            "max_position_embeddings": text.max_position_embeddings, "rms_norm_eps": text.rms_norm_eps,
            "hidden_act": text.hidden_act, "rope_theta": 10000.0, "eos_token_id": text.eos_token_id,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]}, "tie_word_embeddings": False,
            "image_token_id": nested.image_token_id, "video_token_id": nested.video_token_id,
            "vision_start_token_id": nested.vision_start_token_id, "vision_end_token_id": nested.vision_end_token_id,
            "vision_config": {"depth": 2, "embed_dim": 32, "hidden_size": HIDDEN, "num_heads": 4, "mlp_ratio": 2,
                              "in_chans": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}}


def tiny_head(seed=1):
    """HPSv3's rm_head layout (Linear, ReLU, Dropout, Linear, ReLU, Linear) with its hidden sizes."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"0": (1024, HIDDEN), "3": (16, 1024), "5": (2, 16)}
    head = {}
    for i, (out, inp) in shapes.items():
        head[f"rm_head.{i}.weight"] = torch.randn(out, inp, generator=g) / inp ** 0.5
        head[f"rm_head.{i}.bias"] = 0.1 * torch.randn(out, generator=g)
    return head


def save_hpsv3(directory, *, seed=0, legacy=False):
    """Config (with Qwen2-VL's padded vocab, as shipped), tokenizer, HPSv3.safetensors; returns model and head.
    ``legacy``: the checkpoint keys of transformers < 4.52 and the shipped flat config.json."""
    tokenizer = tiny_tokenizer()
    vocab = len(tokenizer) + 1  # + <|Reward|>, as HPSv3 resizes its embeddings
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(tiny_config(tokenizer, vocab)).eval()
    state = {**model.state_dict(), **tiny_head(seed + 1)}
    if legacy:
        state = {k.replace("model.visual.", "visual.").replace("model.language_model.", "model."): v
                 for k, v in state.items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "HPSv3.safetensors"))
    if legacy:
        (directory / "config.json").write_text(json.dumps(flat_config(tokenizer, vocab + 37)))
    else:
        tiny_config(tokenizer, vocab + 37).save_pretrained(directory)  # the shipped config's vocab differs
    tokenizer.save_pretrained(directory)
    if not legacy:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        Qwen2VLImageProcessorPil().save_pretrained(directory)
    return model, tiny_head(seed + 1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models here are tiny: on a busy machine, intra-op threads cost far more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hps_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hpsv3")
    model, head = save_hpsv3(directory)
    return directory, model, head


def make_images(b=4, h=40, w=52, seed=0):
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(b, 3, 5, 6, generator=g), size=(h, w), mode="bilinear")
    return (0.6 * smooth + 0.4 * torch.rand(b, 3, h, w, generator=g)).clamp(0, 1)


def official_scores(model, head, images, prompts):
    """HPSv3's inference with transformers' image processor: uint8 PIL → ``Image.resize`` to smart_resize's size
    → Qwen2VLImageProcessorPil, and the chat template's text with <|image_pad|> repeated once per merged patch
    (what Qwen2VLProcessor does; it cannot be built here without torchvision) → the image features scattered into
    the embeddings → language model on inputs_embeds with the padding mask (so sequential positions) → rm_head at
    <|Reward|>, by hand → μ."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (Qwen2VLImageProcessorPil,
                                                                            smart_resize as hf_smart_resize)

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
    tokenizer.padding_side = "right"
    h, w = hf_smart_resize(*images.shape[-2:], factor=28, min_pixels=PIXELS, max_pixels=PIXELS)
    u8 = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    pils = [Image.fromarray(a).resize((w, h), Image.BICUBIC) for a in u8]
    vision = Qwen2VLImageProcessorPil()(pils, return_tensors="pt")
    tokens = int(vision["image_grid_thw"][0].prod()) // 4
    texts = [tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": INSTRUCTION.format(text_prompt=p)
                                                          + RATING}]}], tokenize=False, add_generation_prompt=True)
        for p in prompts]
    texts = [t.replace("<|image_pad|>", "<|image_pad|>" * tokens) for t in texts]
    batch = {**tokenizer(texts, padding=True, return_tensors="pt"), **vision}
    with torch.no_grad():
        embeds = model.model.get_input_embeddings()(batch["input_ids"])
        features = model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"], return_dict=True)
        mask = (batch["input_ids"] == model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(mask, torch.cat(features.pooler_output))
        hidden = model.model.language_model(inputs_embeds=embeds,
                                            attention_mask=batch["attention_mask"]).last_hidden_state
        at = batch["input_ids"] == tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
        assert at.sum(1).tolist() == [1] * len(prompts)
        x = F.relu(hidden[at] @ head["rm_head.0.weight"].T + head["rm_head.0.bias"])
        x = F.relu(x @ head["rm_head.3.weight"].T + head["rm_head.3.bias"])
        mu_sigma = x @ head["rm_head.5.weight"].T + head["rm_head.5.bias"]
    return mu_sigma[:, 0], batch


def test_registered():
    assert "hpsv3" in available_rewards()


@pytest.mark.parametrize("size", [(512, 512), (1024, 1024), (768, 1360), (1360, 768), (40, 52), (333, 1000),
                                  (720, 1280), (28, 28)])
def test_smart_resize_matches_transformers(size):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

    assert smart_resize(*size) == hf_smart_resize(*size, factor=28, min_pixels=PIXELS, max_pixels=PIXELS)


@pytest.mark.parametrize("shape,out", [((37, 61), (56, 84)), ((100, 130), (56, 84)), ((40, 52), (392, 532))])
def test_resize_is_pils_bicubic_bit_for_bit(shape, out):
    g = torch.Generator().manual_seed(5)
    u8 = torch.randint(0, 256, (2, 3, *shape), generator=g, dtype=torch.uint8)  # noise: the hardest case
    ours = pil_bicubic_levels(u8.float(), *out).to(torch.uint8)
    for i in range(2):
        ref = Image.fromarray(u8[i].permute(1, 2, 0).numpy()).resize(out[::-1], Image.BICUBIC)
        assert torch.equal(ours[i], torch.from_numpy(np.array(ref)).permute(2, 0, 1))


def test_score_equals_the_official_forward(hps_dir):
    directory, model, head = hps_dir
    images = make_images()
    scorer = build_reward("hpsv3", path=str(directory), precision="fp32", batch_size=4)
    scores = scorer(images, PROMPTS)
    assert scores.shape == (4,) and scores.dtype == torch.float32 and scores.device == images.device
    reference, batch = official_scores(model, head, images, PROMPTS)
    torch.testing.assert_close(scores, reference, atol=1e-4, rtol=1e-4)
    assert scores.std() > 1e-3  # different prompts and images give different scores
    h, w = smart_resize(*images.shape[-2:])
    pixel_values, grid = scorer.pixel_rows(images, h, w)
    assert torch.equal(grid, batch["image_grid_thw"])
    torch.testing.assert_close(pixel_values, batch["pixel_values"], atol=1e-5, rtol=0)


def test_batch_size_invariance_and_input_forms(hps_dir):
    directory, _, _ = hps_dir
    images = make_images(seed=2, h=64, w=48)
    batched = build_reward("hpsv3", path=str(directory), precision="fp32", batch_size=4)
    single = build_reward("hpsv3", path=str(directory), precision="fp32", batch_size=1)
    scores = batched(images, PROMPTS)
    one_by_one = torch.cat([single(images[i:i + 1], PROMPTS[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(scores, one_by_one, atol=1e-5, rtol=1e-5)
    minus_one = build_reward("hpsv3", path=str(directory), precision="fp32", input_range="-1_1")
    torch.testing.assert_close(minus_one(images * 2 - 1, PROMPTS), scores, atol=1e-5, rtol=0)
    u8 = (images * 255).round().to(torch.uint8)
    torch.testing.assert_close(batched(u8, PROMPTS), scores, atol=1e-5, rtol=0)


def test_default_precision_keeps_the_backbone_in_bf16(hps_dir):
    directory, _, _ = hps_dir
    images = make_images(b=2)
    scorer = build_reward("hpsv3", path=str(directory))
    assert {p.dtype for p in scorer.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in scorer.head.parameters()} == {torch.float32}
    full = build_reward("hpsv3", path=str(directory), precision="fp32")(images, PROMPTS[:2])
    half = scorer(images, PROMPTS[:2])
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=0.05 * full.abs().max().item() + 1e-3, rtol=0)


def test_legacy_keys_and_flat_config_load_the_same_model(hps_dir, tmp_path):
    directory, _, _ = hps_dir
    save_hpsv3(tmp_path, legacy=True)
    images = make_images(b=2)
    a = build_reward("hpsv3", path=str(directory), precision="fp32")(images, PROMPTS[:2])
    b = build_reward("hpsv3", path=str(tmp_path), precision="fp32")(images, PROMPTS[:2])
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_bad_paths_name_the_key(hps_dir, tmp_path):
    directory, _, _ = hps_dir
    with pytest.raises(RewardConfigError, match="`path` is required.*config.json.*HPSv3.safetensors"):
        build_reward("hpsv3")
    with pytest.raises(RewardConfigError, match="`path`='/no/such/dir' is not a local directory.*Qwen2-VL"):
        build_reward("hpsv3", path="/no/such/dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RewardConfigError, match="`path`=.*has none of.*config.json"):
        build_reward("hpsv3", path=str(tmp_path / "empty"))
    with pytest.raises(RewardConfigError, match="`path`=.*has none of.*'HPSv3.pth'"):
        build_reward("hpsv3", path=str(directory), checkpoint="HPSv3.pth")


def test_wrong_checkpoints_are_errors(tmp_path):
    from safetensors.torch import load_file

    save_hpsv3(tmp_path)
    state = load_file(str(tmp_path / "HPSv3.safetensors"))
    save_file({**state, "score.weight": torch.zeros(1, HIDDEN)}, str(tmp_path / "stray.safetensors"))
    with pytest.raises(RewardConfigError, match="`path`.*not an HPSv3 checkpoint.*score.weight"):
        build_reward("hpsv3", path=str(tmp_path), checkpoint="stray.safetensors")
    save_file({k: v for k, v in state.items() if not k.startswith("rm_head.5")}, str(tmp_path / "nohead.safetensors"))
    with pytest.raises(RewardConfigError, match="rm_head.5.weight"):
        build_reward("hpsv3", path=str(tmp_path), checkpoint="nohead.safetensors")
    save_file({k: v for k, v in state.items() if ".layers.1." not in k}, str(tmp_path / "short.safetensors"))
    with pytest.raises(RewardConfigError, match="does not fit its config.json.*missing language_model.layers.1"):
        build_reward("hpsv3", path=str(tmp_path), checkpoint="short.safetensors")
    from transformers import CLIPConfig
    CLIPConfig().save_pretrained(tmp_path)
    with pytest.raises(RewardConfigError, match="`path`.*not model_type 'qwen2_vl'"):
        build_reward("hpsv3", path=str(tmp_path))
