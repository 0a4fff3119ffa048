"""Reward scorers on tiny random CLIP models built in code, saved to tmp dirs and loaded through the real loaders."""
import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast  # noqa: E402

from fastgrpo.rewards import (AestheticHead, MultiReward, RewardConfigError, RewardModel,  # noqa: E402
                              available_rewards, build_reward, open_clip_to_hf, register)
from fastgrpo.rewards.open_clip_map import clip_model_from_open_clip  # noqa: E402

WORDS = "a photo of cat dog red blue green square circle on the left right big small".split()
PROMPTS = ["a photo of a cat", "a red square on the left", "big blue circle", "a photo of a cat",
           "small green dog on the right"]
WIDTH, LAYERS, HEADS, CONTEXT, EMBED, IMAGE, PATCH = 32, 2, 4, 16, 24, 32, 8


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {"<pad>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    bos, eos = len(vocab), len(vocab) + 1  # end-of-text is the largest id, as in CLIP's BPE
    vocab.update({"<bos>": bos, "<eos>": eos})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>",
                                                       special_tokens=[("<bos>", bos), ("<eos>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=CONTEXT), len(vocab), eos


def tiny_config(vocab=64, eos=63, act="gelu"):
    common = dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, hidden_act=act)
    return CLIPConfig(text_config=dict(vocab_size=vocab, max_position_embeddings=CONTEXT, eos_token_id=eos,
                                       bos_token_id=eos - 1, pad_token_id=0, **common),
                      vision_config=dict(image_size=IMAGE, patch_size=PATCH, **common), projection_dim=EMBED)


def save_clip(directory, *, seed=0, processor=True):
    tokenizer, vocab, eos = tiny_tokenizer()
    torch.manual_seed(seed)
    model = CLIPModel(tiny_config(vocab, eos)).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if processor:
        image_processor(IMAGE + 4).save_pretrained(directory)  # shorter side → 36, centre crop 32
    return model


def image_processor(size):
    from transformers import CLIPImageProcessor  # the PIL backend when torchvision is absent

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": IMAGE, "width": IMAGE})


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("clip")
    save_clip(directory)
    return directory


def make_images(b=5, h=48, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(b, 3, 6, 5, generator=g), size=(h, w), mode="bilinear")
    return (0.7 * smooth + 0.3 * torch.rand(b, 3, h, w, generator=g)).clamp(0, 1)


# ---- registry -----------------------------------------------------------------------------------------------

def test_registry_lists_builtins_and_rejects_unknown_names():
    assert {"clip_score", "pickscore", "hpsv2", "aesthetic", "jpeg_compressibility",
            "jpeg_incompressibility"} <= set(available_rewards())
    with pytest.raises(ValueError, match="unknown reward 'nope'.*pickscore"):
        build_reward("nope")
    with pytest.raises(ValueError, match="bad config"):
        build_reward("jpeg_compressibility", qualty=90)


def test_user_reward_in_one_definition():
    @register("test_brightness")
    class Brightness(RewardModel):
        name = "test_brightness"
        needs_prompts = False

        def score_batch(self, images, prompt_features):
            return images.mean(dim=(1, 2, 3))

    images = make_images()
    scores = build_reward("test_brightness", batch_size=2)(images)
    torch.testing.assert_close(scores, images.mean(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match="already registered"):
        register("test_brightness")(lambda: None)


# ---- loading errors -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["clip_score", "pickscore", "hpsv2", "aesthetic"])
def test_missing_or_wrong_path_names_the_key(name, tmp_path):
    extra = {"head_path": None} if name == "aesthetic" else {}
    if name == "aesthetic":  # the head is checked first
        head = tmp_path / "head.pth"
        torch.save(AestheticHead(EMBED).state_dict(), head)
        extra = {"head_path": str(head)}
    with pytest.raises(RewardConfigError, match="`path` is required.*config.json"):
        build_reward(name, **extra)
    with pytest.raises(RewardConfigError, match="`path`='/no/such/dir' is not a local directory.*config.json"):
        build_reward(name, path="/no/such/dir", **extra)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RewardConfigError, match="`path`=.*config.json"):
        build_reward(name, path=str(tmp_path / "empty"), **extra)


def test_weights_that_do_not_fit_the_config_are_an_error(tmp_path):
    save_clip(tmp_path)
    config = tiny_config(*tiny_tokenizer()[1:])
    config.vision_config.num_hidden_layers = LAYERS + 1  # the saved weights have one layer fewer
    config.save_pretrained(tmp_path)
    with pytest.raises(RewardConfigError, match="`path`.*(missing|mismatch|do not match)"):
        build_reward("clip_score", path=str(tmp_path))


def test_aesthetic_head_path_errors(clip_dir, tmp_path):
    with pytest.raises(RewardConfigError, match="`head_path` is required"):
        build_reward("aesthetic", path=str(clip_dir))
    bad = tmp_path / "bad.pth"
    torch.save({"layers.0.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(RewardConfigError, match="`head_path`"):
        build_reward("aesthetic", path=str(clip_dir), head_path=str(bad))


# ---- CLIP-family scorers ------------------------------------------------------------------------------------

def reference_cosine(directory, images, prompts):
    """The anchors' path: uint8 → PIL → CLIPImageProcessor → CLIPModel, cosine of the normalised embeddings."""
    from PIL import Image
    from transformers import AutoTokenizer

    model = CLIPModel.from_pretrained(directory, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    u8 = (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    pixels = image_processor(IMAGE + 4)([Image.fromarray(a) for a in u8], return_tensors="pt")["pixel_values"]
    tokens = tokenizer(prompts, padding="max_length", max_length=CONTEXT, return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=pixels, **tokens)
    cos = (F.normalize(out.image_embeds, dim=-1) * F.normalize(out.text_embeds, dim=-1)).sum(-1)
    return cos, model.logit_scale.exp().item(), pixels


def test_clip_score_shape_device_and_scales(clip_dir):
    images = make_images()
    cos = build_reward("clip_score", path=str(clip_dir))(images, PROMPTS)
    assert cos.shape == (5,) and cos.dtype == torch.float32 and cos.device == images.device
    assert bool((cos.abs() <= 1 + 1e-6).all())
    ref, logit_scale, _ = reference_cosine(clip_dir, images, PROMPTS)
    torch.testing.assert_close(cos, ref, atol=1e-5, rtol=0)
    flow = build_reward("clip_score", path=str(clip_dir), scale="flow_grpo")(images, PROMPTS)
    torch.testing.assert_close(flow, cos * logit_scale / 30, atol=1e-5, rtol=1e-5)
    pick = build_reward("pickscore", path=str(clip_dir))(images, PROMPTS)
    torch.testing.assert_close(pick, cos * logit_scale / 26, atol=1e-5, rtol=1e-5)
    raw = build_reward("pickscore", path=str(clip_dir), processor_path=str(clip_dir), divisor=1.0)(images, PROMPTS)
    torch.testing.assert_close(raw, cos * logit_scale, atol=1e-4, rtol=1e-5)


def test_op_preprocessing_matches_the_pil_path(clip_dir):
    """Same score whether pixels come from clip_preprocess or from PIL + CLIPImageProcessor."""
    images = make_images(b=4, h=41, w=57, seed=3)  # non-square, high-frequency content
    scorer = build_reward("clip_score", path=str(clip_dir))
    _, _, pil_pixels = reference_cosine(clip_dir, images, PROMPTS[:4])
    op_pixels = scorer.preprocess(images)
    assert (op_pixels - pil_pixels).abs().max().item() <= 1.5 / 255 / min(scorer.geometry.std)
    text = scorer.text_embeds(PROMPTS[:4], torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(scorer.score_pixels(op_pixels, text), scorer.score_pixels(pil_pixels, text),
                                   atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["clip_score", "pickscore", "aesthetic", "jpeg_compressibility"])
def test_batch_size_invariance(name, clip_dir, tmp_path):
    config = {} if name.startswith("jpeg") else {"path": str(clip_dir)}
    if name == "aesthetic":
        torch.manual_seed(1)
        head = tmp_path / "head.pth"
        torch.save(AestheticHead(EMBED).state_dict(), head)
        config["head_path"] = str(head)
    images = make_images()
    batched = build_reward(name, batch_size=3, **config)(images, PROMPTS)
    single = build_reward(name, batch_size=1, **config)
    one_by_one = torch.cat([single(images[i:i + 1], PROMPTS[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-5)


def test_input_range_minus_one_to_one(clip_dir):
    images = make_images()
    a = build_reward("clip_score", path=str(clip_dir))(images, PROMPTS)
    b = build_reward("clip_score", path=str(clip_dir), input_range="-1_1")(images * 2 - 1, PROMPTS)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_prompts_must_match_images(clip_dir):
    scorer = build_reward("clip_score", path=str(clip_dir))
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer(make_images(), PROMPTS[:2])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        scorer(torch.rand(2, 4, 8, 8), PROMPTS[:2])


# ---- aesthetic ----------------------------------------------------------------------------------------------

def test_aesthetic_head_shapes_and_score(clip_dir, tmp_path):
    head = AestheticHead()
    linears = [m for m in head.layers if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(768, 1024), (1024, 128), (128, 64), (64, 16),
                                                                   (16, 1)]
    assert sorted(head.state_dict()) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7)
                                               for p in ("weight", "bias"))
    assert head(torch.randn(3, 768)).shape == (3,)
    torch.manual_seed(2)
    small = AestheticHead(EMBED)
    from safetensors.torch import save_file
    save_file(small.state_dict(), str(tmp_path / "head.safetensors"))
    images = make_images()
    scores = build_reward("aesthetic", path=str(clip_dir), head_path=str(tmp_path / "head.safetensors"))(images)
    model = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval()
    scorer = build_reward("clip_score", path=str(clip_dir))
    with torch.no_grad():
        embeds = F.normalize(model.get_image_features(pixel_values=scorer.preprocess(images)).pooler_output, dim=-1)
        # LAION's improved-aesthetic MLP in eval mode is a chain of five affine maps (dropout is the identity)
        chain = embeds
        weights = small.state_dict()
        for i in (0, 2, 4, 6, 7):
            chain = chain @ weights[f"layers.{i}.weight"].T + weights[f"layers.{i}.bias"]
        torch.testing.assert_close(scores, chain.squeeze(-1), atol=1e-5, rtol=0)


# ---- JPEG ---------------------------------------------------------------------------------------------------

def test_jpeg_sign_and_monotonic_in_noise():
    flat = torch.full((1, 3, 64, 64), 0.5)
    noise = [(flat + a * (torch.rand(1, 3, 64, 64) - 0.5)).clamp(0, 1) for a in (0.05, 0.3, 1.0)]
    images = torch.cat([flat] + noise)
    inc = build_reward("jpeg_incompressibility")(images)
    comp = build_reward("jpeg_compressibility")(images)
    assert bool((inc > 0).all()) and bool((torch.diff(inc) > 0).all())  # noisier → bigger file
    torch.testing.assert_close(comp, -inc)
    torch.testing.assert_close(build_reward("jpeg_compressibility", divisor=500.0)(images), -inc / 500)
    # kB of Pillow's quality-95 encoding, as DDPO/Flow-GRPO compute it
    import io
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray((noise[1][0] * 255).round().byte().permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=95)
    assert math.isclose(inc[2].item(), buffer.tell() / 1000, rel_tol=1e-6)


# ---- multi-reward -------------------------------------------------------------------------------------------

def test_multi_reward_weights_and_group_advantages(clip_dir):
    from fastgrpo.ops import group_advantages

    multi = MultiReward({"clip_score": 2.0, "jpeg_incompressibility": 0.5}, clip_score={"path": str(clip_dir)},
                        shared={"batch_size": 2})
    images = make_images()
    out = multi(images, PROMPTS)
    assert out.matrix.shape == (5, 2) and list(out.scores) == ["clip_score", "jpeg_incompressibility"]
    torch.testing.assert_close(out.total, 2.0 * out.scores["clip_score"] + 0.5 * out.scores["jpeg_incompressibility"])
    ids = torch.tensor([0, 0, 1, 1, 1])
    a = group_advantages(out.matrix, ids, weights=multi.weight_tensor(), aggregate="sum_zscore")
    b = group_advantages(out.total, ids)
    torch.testing.assert_close(a.advantages, b.advantages, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not in weights"):
        MultiReward({"clip_score": 1.0}, pickscore={"path": "x"})


# ---- open_clip → CLIPModel mapping (HPS-v2.1) ---------------------------------------------------------------

def open_clip_state_dict(vocab, seed=0):
    """A random state dict with open_clip's ViT CLIP key names and shapes (text and vision towers)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2, mean=0.0):
        return mean + scale * torch.randn(*shape, generator=g)

    def tower(prefix):
        sd = {}
        for i in range(LAYERS):
            b = f"{prefix}transformer.resblocks.{i}."
            sd.update({b + "ln_1.weight": rnd(WIDTH, mean=1), b + "ln_1.bias": rnd(WIDTH),
                       b + "attn.in_proj_weight": rnd(3 * WIDTH, WIDTH), b + "attn.in_proj_bias": rnd(3 * WIDTH),
                       b + "attn.out_proj.weight": rnd(WIDTH, WIDTH), b + "attn.out_proj.bias": rnd(WIDTH),
                       b + "ln_2.weight": rnd(WIDTH, mean=1), b + "ln_2.bias": rnd(WIDTH),
                       b + "mlp.c_fc.weight": rnd(4 * WIDTH, WIDTH), b + "mlp.c_fc.bias": rnd(4 * WIDTH),
                       b + "mlp.c_proj.weight": rnd(WIDTH, 4 * WIDTH), b + "mlp.c_proj.bias": rnd(WIDTH)})
        return sd

    grid = (IMAGE // PATCH) ** 2
    sd = {"token_embedding.weight": rnd(vocab, WIDTH), "positional_embedding": rnd(CONTEXT, WIDTH),
          "ln_final.weight": rnd(WIDTH, mean=1), "ln_final.bias": rnd(WIDTH), "text_projection": rnd(WIDTH, EMBED),
          "logit_scale": torch.tensor(math.log(1 / 0.07)), "attn_mask": torch.empty(CONTEXT, CONTEXT),
          "visual.class_embedding": rnd(WIDTH), "visual.positional_embedding": rnd(grid + 1, WIDTH),
          "visual.conv1.weight": rnd(WIDTH, 3, PATCH, PATCH, scale=0.05), "visual.ln_pre.weight": rnd(WIDTH, mean=1),
          "visual.ln_pre.bias": rnd(WIDTH), "visual.ln_post.weight": rnd(WIDTH, mean=1),
          "visual.ln_post.bias": rnd(WIDTH), "visual.proj": rnd(WIDTH, EMBED)}
    sd.update(tower(""))
    sd.update(tower("visual."))
    return sd


def open_clip_forward(sd, pixels, ids):
    """open_clip's ViT CLIP written from its state dict in plain torch: (image features, text features)."""
    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"])

    def block(x, b, causal):
        h = ln(x, b + "ln_1")
        q, k, v = (h @ sd[b + "attn.in_proj_weight"].T + sd[b + "attn.in_proj_bias"]).chunk(3, dim=-1)
        B, T, W = q.shape
        q, k, v = (t.reshape(B, T, HEADS, W // HEADS).transpose(1, 2) for t in (q, k, v))
        att = q @ k.transpose(-1, -2) / math.sqrt(W // HEADS)
        if causal:
            att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        o = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, W)
        x = x + o @ sd[b + "attn.out_proj.weight"].T + sd[b + "attn.out_proj.bias"]
        h = F.gelu(ln(x, b + "ln_2") @ sd[b + "mlp.c_fc.weight"].T + sd[b + "mlp.c_fc.bias"])
        return x + h @ sd[b + "mlp.c_proj.weight"].T + sd[b + "mlp.c_proj.bias"]

    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.class_embedding"].expand(x.shape[0], 1, WIDTH), x], dim=1)
    x = ln(x + sd["visual.positional_embedding"], "visual.ln_pre")
    for i in range(LAYERS):
        x = block(x, f"visual.transformer.resblocks.{i}.", causal=False)
    image = ln(x[:, 0], "visual.ln_post") @ sd["visual.proj"]
    t = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
    for i in range(LAYERS):
        t = block(t, f"transformer.resblocks.{i}.", causal=True)
    t = ln(t, "ln_final")
    text = t[torch.arange(ids.shape[0]), ids.argmax(-1)] @ sd["text_projection"]  # pooled at end-of-text
    return image, text


def test_open_clip_mapping_matches_an_independent_forward():
    _, vocab, eos = tiny_tokenizer()
    sd = open_clip_state_dict(vocab)
    model = clip_model_from_open_clip(sd, tiny_config(vocab, eos))
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(3, 3, IMAGE, IMAGE, generator=g)
    ids = torch.randint(2, eos - 1, (3, CONTEXT), generator=g)
    ids[:, 0], ids[0, 5], ids[1, 9], ids[2, CONTEXT - 1] = eos - 1, eos, eos, eos
    ids[0, 6:], ids[1, 10:] = 0, 0
    image_ref, text_ref = open_clip_forward(sd, pixels, ids)
    with torch.no_grad():
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        text = model.text_projection(model.text_model(input_ids=ids).pooler_output)
    torch.testing.assert_close(image, image_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(text, text_ref, atol=1e-4, rtol=1e-4)
    assert model.logit_scale.item() == pytest.approx(sd["logit_scale"].item())


def test_open_clip_mapping_rejects_what_does_not_fit():
    _, vocab, eos = tiny_tokenizer()
    sd = open_clip_state_dict(vocab)
    with pytest.raises(ValueError, match="no CLIPModel counterpart.*ls_1.gamma"):
        open_clip_to_hf({**sd, "visual.transformer.resblocks.0.ls_1.gamma": torch.ones(WIDTH)},
                         tiny_config(vocab, eos))
    with pytest.raises(ValueError, match="does not provide"):
        open_clip_to_hf({k: v for k, v in sd.items() if k != "visual.proj"}, tiny_config(vocab, eos))
    wide = tiny_config(vocab, eos)
    wide.projection_dim = EMBED + 1
    with pytest.raises(ValueError, match="shapes that do not fit"):
        open_clip_to_hf(sd, wide)
    module = {"module." + k: v for k, v in sd.items()}  # DDP checkpoints
    assert open_clip_to_hf(module, tiny_config(vocab, eos)).keys() == open_clip_to_hf(sd, tiny_config(vocab, eos)).keys()


def test_hps_loader_scores_the_cosine_of_the_open_clip_forward(tmp_path):
    tokenizer, vocab, eos = tiny_tokenizer()
    sd = open_clip_state_dict(vocab, seed=4)
    tiny_config(vocab, eos).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    torch.save({"state_dict": sd, "epoch": 1}, tmp_path / "HPS_v2.1_compressed.pt")
    scorer = build_reward("hpsv2", path=str(tmp_path))
    images = make_images()
    scores = scorer(images, PROMPTS)
    ids = tokenizer(PROMPTS, padding="max_length", max_length=CONTEXT, return_tensors="pt")["input_ids"]
    image_ref, text_ref = open_clip_forward(sd, scorer.preprocess(images), ids)
    cos = (F.normalize(image_ref, dim=-1) * F.normalize(text_ref, dim=-1)).sum(-1)
    torch.testing.assert_close(scores, cos, atol=1e-5, rtol=0)
    with pytest.raises(RewardConfigError, match="`path`.*HPS checkpoint"):
        build_reward("hpsv2", path=str(tmp_path), checkpoint="HPS_v2.pt")
    torch.save({"state_dict": {k: v for k, v in sd.items() if "resblocks.1." not in k}}, tmp_path / "short.pt")
    with pytest.raises(RewardConfigError, match="does not fit its config.json"):
        build_reward("hpsv2", path=str(tmp_path), checkpoint="short.pt")


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("open_clip") is None, reason="open_clip is not installed")
def test_open_clip_mapping_matches_open_clip_itself():
    """open_clip_torch 3.3.0 itself as the oracle, on CUDA. It is no dependency of fastgrpo (it pulls torchvision):
    to run this test, install ``open_clip_torch==3.3.0`` with timm, ftfy, wcwidth and regex."""
    import open_clip

    _, vocab, eos = tiny_tokenizer()
    torch.manual_seed(0)
    reference = open_clip.model.CLIP(
        embed_dim=EMBED, vision_cfg=dict(layers=LAYERS, width=WIDTH, head_width=WIDTH // HEADS, patch_size=PATCH,
                                         image_size=IMAGE, mlp_ratio=4),
        text_cfg=dict(context_length=CONTEXT, vocab_size=vocab, width=WIDTH, heads=HEADS, layers=LAYERS)).eval()
    with torch.no_grad():  # open_clip initialises some tensors to zero: randomise everything
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = clip_model_from_open_clip(reference.state_dict(), tiny_config(vocab, eos)).cuda()
    reference = reference.cuda()
    pixels = torch.randn(4, 3, IMAGE, IMAGE, device="cuda")
    ids = torch.randint(2, eos - 1, (4, CONTEXT), device="cuda")
    ids[:, 0], ids[:, 7], ids[:, 8:] = eos - 1, eos, 0
    # cuDNN may run fp32 convolutions in TF32 (~1e-3 relative): keep both patch embeddings in full fp32
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        torch.testing.assert_close(
            model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output),
            reference.encode_image(pixels), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.text_projection(model.text_model(input_ids=ids).pooler_output),
                                   reference.encode_text(ids), atol=1e-4, rtol=1e-4)
