"""HPS-v3 (Ma et al. 2025, "HPSv3: Towards Wide-Spectrum Human Preference Score", arXiv:2508.03789).

A Qwen2-VL-7B-Instruct fine-tuned on HPDv3 preferences, with a reward head. HPSv3's inference builds one user
message per image: the image, then ``INSTRUCTION`` (the prompt substituted) + ``RATING``, which holds the added
special token ``<|Reward|>``; renders it with the chat template (generation prompt on), runs Qwen2-VL and applies
``rm_head`` (Linear(d, 1024) → ReLU → Linear(1024, 16) → ReLU → Linear(16, 2), in fp32) to the final hidden
state at ``<|Reward|>``. The output is (μ, σ) of its uncertainty-aware ranking loss; the score is μ (≈ 10 for
strong text-to-image models on the HPDv3 benchmark).

What this module reproduces, step by step:
- Resize (qwen-vl-utils, min_pixels = max_pixels = 256·28·28 = ``PIXELS``): ``smart_resize`` to (h', w'),
  multiples of 28 with h'·w' ≈ 200704 and the aspect ratio kept, by PIL's bicubic ``Image.resize`` of the
  uint8 image. Here on the images' device, bit for bit as Pillow ≤ 12 does it: the two fixed-point separable
  passes of ``fastgrpo.reference.preprocess`` (horizontal first, rounded and clipped to uint8 between them) as
  float64 matmuls. (Pillow 13 runs the vertical pass first for portraits taller than about 2:1.)
- ``Qwen2VLImageProcessor``: its own smart_resize leaves (h', w') as they are; rescale by 1/255, normalise with
  the CLIP mean/std (or ``preprocessor_config.json``'s), repeat the frame ``temporal_patch_size`` = 2 times and
  cut 14×14 patches in 2×2 merge order into (Σ gh·gw, 3·2·14·14) rows with ``image_grid_thw`` = (1, gh, gw);
  the text's one ``<|image_pad|>`` becomes gh·gw/4 of them. Also on the device: a reshape and a permute.
- Positions: HPSv3 calls the language model with ``inputs_embeds`` and no ``input_ids``, so transformers cannot
  locate the image and uses sequential positions 0..L−1 in all three M-RoPE sections (its training did the
  same). This module passes those positions explicitly, not the 3-D image positions Qwen2-VL would compute.
- Attention is causal, so the state at ``<|Reward|>`` ignores the template's tail ("END", end of turn, the
  generation prompt): sequences are cut right after it, right-padded, and run without a padding mask (every pad
  comes after the tokens that are read).

``path``: a directory with
  - config.json: Qwen2-VL-7B-Instruct's ``Qwen2VLConfig`` (model_type "qwen2_vl"; the shipped flat layout or
    transformers 5's nested one). Its vocab_size is replaced by the checkpoint's embedding rows: HPSv3 resized
    the embeddings to its tokenizer's length with ``<|Reward|>`` added;
  - the Qwen2-VL tokenizer (tokenizer.json or vocab.json + merges.txt, tokenizer_config.json) and its chat
    template (tokenizer_config.json, chat_template.jinja or chat_template.json); ``<|Reward|>`` is added here as
    HPSv3 adds it;
  - optionally preprocessor_config.json (image_mean, image_std);
  - the HPSv3 checkpoint named by ``checkpoint`` (default HPSv3.safetensors, the released file; .pt/.pth state
    dicts load too): ``Qwen2VLForConditionalGeneration``'s keys plus ``rm_head.*``, named ``model.visual.*`` and
    ``model.language_model.*`` (transformers ≥ 4.52) or ``visual.*`` and ``model.*`` (older); ``lm_head.weight``
    is not needed for a score and is skipped. The Qwen2-VL base weights are not needed: the checkpoint has them.
Needs transformers ≥ 5 (tested with 5.23). The backbone is stored in the ``precision`` dtype (bf16 by default, as
HPSv3 runs it; the 7B in fp32 would take ~33 GB), on CPU as well; the head stays fp32. ``precision="fp32"`` keeps
everything in fp32.
"""
from __future__ import annotations

import math
import os
import re
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..reference.preprocess import CLIP_MEAN, CLIP_STD, _shift_round, resize_table, to_levels
from .base import (PRECISIONS, RewardConfigError, RewardModel, load_state_dict_file, read_json, require_dir,
                   require_files)
from .clip_base import TOKENIZER_FILES
from .registry import register

REWARD_TOKEN = "<|Reward|>"
IMAGE_TOKEN = "<|image_pad|>"
PIXELS = 256 * 28 * 28  # HPSv3's min_pixels = max_pixels
MAX_RATIO = 200  # qwen-vl-utils refuses more extreme aspect ratios

# The text of HPSv3's user turn (its data collator), verbatim: the checkpoint was trained on exactly these tokens.
INSTRUCTION = """
You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a overall score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the worst and 10 being the best. 

**Visual Quality:**  
Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:
- **Reasonableness:** The image should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.
- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to interpret, with no blurring or indistinct areas.
- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).
- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.
- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. 

**Text Alignment:**  
Assess how well the image matches the textual prompt across the following sub-dimensions:
- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.
- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the image adheres to this style.
- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in the image logically fit the scenario described in the prompt. The environment should support and enhance the subject without contradictions.
- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, clothing, accessories, expressions, actions) are faithfully represented in the image. Minor deviations may be acceptable, but critical attributes should be preserved.
- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in the image. The generated content should not introduce elements that conflict with or distort the original description.
Textual prompt - {text_prompt}


"""  # the trailing spaces on four lines belong to the trained prompt
RATING = "\nPlease provide the overall ratings of this image: " + REWARD_TOKEN + "\n\nEND\n"

HPSV3_CONTENTS = ("config.json (the Qwen2-VL-7B-Instruct Qwen2VLConfig), the Qwen2-VL tokenizer files (tokenizer.json "
                  "or vocab.json + merges.txt, tokenizer_config.json) with its chat template, and the HPSv3 checkpoint "
                  "named by `checkpoint` (HPSv3.safetensors)")
# HPSv3's rm_head is nn.Sequential(Linear, ReLU, Dropout, Linear, ReLU, Linear); ours drops the Dropout
_HEAD_LAYERS = {"0": "0", "3": "2", "5": "4"}
_SKIPPED = {"lm_head.weight"}


def user_text(prompt: str) -> str:
    """The text part of HPSv3's user turn for ``prompt``."""
    return INSTRUCTION.format(text_prompt=prompt) + RATING


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = PIXELS,
                 max_pixels: int = PIXELS) -> tuple[int, int]:
    """Qwen2-VL's output size: each side rounded to a multiple of ``factor``, then both scaled by one β so that
    the area lands in [min_pixels, max_pixels] (floor when shrinking, ceil when growing); the float operations are
    the processor's, so the sizes agree with it exactly."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"hpsv3: aspect ratio {max(height, width) / min(height, width):.1f} exceeds {MAX_RATIO}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def pil_bicubic_levels(levels: Tensor, height: int, width: int) -> Tensor:
    """(B, C, H, W) uint8 levels as float → (B, C, height, width) float64 levels: ``Image.resize((width, height),
    BICUBIC)`` of Pillow ≤ 12, horizontal pass then vertical, fixed-point weights, uint8 between and after
    (exact in float64; see ``fastgrpo.reference.preprocess``)."""
    H, W = levels.shape[-2:]
    dev = levels.device
    cols = resize_table(W, width).matrix(True, device=dev)
    rows = resize_table(H, height).matrix(True, device=dev)
    horizontal = _shift_round(levels.double() @ cols.T)
    return _shift_round(rows @ horizontal)


def patchify(pixels: Tensor, patch: int, merge: int, temporal: int) -> tuple[Tensor, Tensor]:
    """(B, C, H, W) normalised pixels → Qwen2-VL's (B·gh·gw, C·temporal·patch²) rows, ``image_grid_thw`` (B, 3).

    Each image is one frame repeated ``temporal`` times; rows run over merge blocks (gh/m, gw/m), then the m×m
    patches inside a block, each flattened as (C, temporal, patch, patch)."""
    B, C, H, W = pixels.shape
    gh, gw = H // patch, W // patch
    x = pixels.unsqueeze(1).expand(B, temporal, C, H, W)
    x = x.reshape(B, temporal, C, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    rows = x.reshape(B * gh * gw, C * temporal * patch * patch)
    grid = torch.tensor([[1, gh, gw]], dtype=torch.long, device=pixels.device).expand(B, 3)
    return rows, grid


class RewardHead(nn.Module):
    """HPSv3's ``rm_head`` ("ranknet") at inference: Linear → ReLU → Linear → ReLU → Linear → (μ, σ)."""

    def __init__(self, dim: int = 3584, hidden: int = 1024, inner: int = 16, out: int = 2):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, inner), nn.ReLU(),
                                    nn.Linear(inner, out))

    def forward(self, hidden_state: Tensor) -> Tensor:
        return self.layers(hidden_state)


def split_hpsv3_state_dict(state_dict: dict) -> tuple[dict, dict]:
    """An HPSv3 checkpoint → (``Qwen2VLModel`` state dict, ``RewardHead`` state dict), key by key.

    ``model.visual.*`` / ``visual.*`` → ``visual.*``; ``model.language_model.*`` / ``model.*`` →
    ``language_model.*``; ``rm_head.{0,3,5}.*`` → ``layers.{0,2,4}.*``; ``lm_head.weight`` skipped; a ``module.``
    prefix (DDP) is dropped. Raises ValueError listing keys it cannot place."""
    backbone: dict[str, Tensor] = {}
    head: dict[str, Tensor] = {}
    unplaced = []
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key in _SKIPPED:
            continue
        m = re.fullmatch(r"rm_head\.(\d+)\.(weight|bias)", key)
        if m is not None and m.group(1) in _HEAD_LAYERS:
            head[f"layers.{_HEAD_LAYERS[m.group(1)]}.{m.group(2)}"] = value
        elif key.startswith("model.visual."):
            backbone["visual." + key[len("model.visual."):]] = value
        elif key.startswith("model.language_model."):
            backbone["language_model." + key[len("model.language_model."):]] = value
        elif key.startswith("visual."):
            backbone[key] = value
        elif key.startswith("model."):
            backbone["language_model." + key[len("model."):]] = value
        else:
            unplaced.append(key)
    if unplaced:
        raise ValueError(f"keys that are neither Qwen2-VL weights nor rm_head.{{0,3,5}}: {unplaced[:10]}")
    return backbone, head


def _head_from(state: dict) -> RewardHead:
    missing = [f"rm_head.{i}.weight" for i, k in _HEAD_LAYERS.items() if f"layers.{k}.weight" not in state]
    if missing:
        raise ValueError(f"rm_head weights missing: {missing}")
    (hidden, dim), (inner, _), (out, _) = (tuple(state[f"layers.{k}.weight"].shape) for k in ("0", "2", "4"))
    head = RewardHead(dim, hidden, inner, out)
    try:
        head.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as err:
        raise ValueError(f"rm_head does not fit Linear({dim}, {hidden}) → Linear({hidden}, {inner}) → "
                         f"Linear({inner}, {out}): {err}") from None
    return head


def _chat_template(tokenizer, directory: str) -> Optional[str]:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    legacy = os.path.join(directory, "chat_template.json")  # the processor-level file Qwen2-VL-7B-Instruct ships
    if os.path.isfile(legacy):
        return read_json(legacy).get("chat_template")
    return None


@register("hpsv3")
class HPSv3(RewardModel):
    name = "hpsv3"

    def __init__(self, path=None, *, checkpoint: str = "HPSv3.safetensors", **common):
        super().__init__(**common)
        import transformers
        from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLModel

        if int(transformers.__version__.split(".")[0]) < 5:  # Qwen2VLModel holding the vision tower, dtype=
            raise RuntimeError(f"{self.name} needs transformers >= 5, found {transformers.__version__}")

        directory = require_dir(self.name, "path", path, HPSV3_CONTENTS)
        require_files(self.name, "path", directory, HPSV3_CONTENTS, ("config.json",), TOKENIZER_FILES, (checkpoint,))
        if read_json(os.path.join(directory, "config.json")).get("model_type") != "qwen2_vl":
            raise RewardConfigError(f"{self.name}: config key `path`={directory!r} has a config.json that is not "
                                    f"model_type 'qwen2_vl'; the directory must contain {HPSV3_CONTENTS}")
        config = Qwen2VLConfig.from_pretrained(directory, local_files_only=True)
        state = load_state_dict_file(self.name, "checkpoint", os.path.join(directory, checkpoint))
        where = f"the checkpoint {checkpoint!r} in config key `path`={directory!r}"
        try:
            backbone_state, head_state = split_hpsv3_state_dict(state)
            self.head = _head_from(head_state).eval().requires_grad_(False)
        except ValueError as err:
            raise RewardConfigError(f"{self.name}: {where} is not an HPSv3 checkpoint: {err}") from err
        text_config = getattr(config, "text_config", config)
        embed = backbone_state.get("language_model.embed_tokens.weight")
        if embed is None:
            raise RewardConfigError(f"{self.name}: {where} has no token embedding (model.language_model."
                                    "embed_tokens.weight)")
        text_config.vocab_size = embed.shape[0]  # HPSv3 resized the embeddings to its tokenizer
        dtype = PRECISIONS[self.precision] or torch.float32
        try:
            model, info = Qwen2VLModel.from_pretrained(None, config=config, state_dict=backbone_state, dtype=dtype,
                                                       output_loading_info=True)
        except Exception as err:
            raise RewardConfigError(f"{self.name}: {where} does not fit its config.json: "
                                    f"{type(err).__name__}: {err}") from err
        bad = [f"missing {k}" for k in sorted(info.get("missing_keys", ()))] + \
              [f"unexpected {k}" for k in sorted(info.get("unexpected_keys", ()))] + \
              [f"mismatched {m}" for m in info.get("mismatched_keys", ())]
        if bad:
            raise RewardConfigError(f"{self.name}: {where} does not fit its config.json: {bad[:10]}"
                                    f"{' ...' if len(bad) > 10 else ''}")
        if self.head.layers[0].in_features != text_config.hidden_size:
            raise RewardConfigError(f"{self.name}: rm_head in {where} takes {self.head.layers[0].in_features} "
                                    f"features but the model's hidden size is {text_config.hidden_size}")
        self.model = model.eval().requires_grad_(False)

        try:
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        except Exception as err:
            raise RewardConfigError(f"{self.name}: cannot load the tokenizer from config key `path`={directory!r}: "
                                    f"{type(err).__name__}: {err}") from err
        tokenizer.add_tokens([REWARD_TOKEN], special_tokens=True)  # as HPSv3 does; a no-op if already there
        self.tokenizer = tokenizer
        self.chat_template = _chat_template(tokenizer, directory)
        if self.chat_template is None:
            raise RewardConfigError(f"{self.name}: config key `path`={directory!r} has no chat template "
                                    "(tokenizer_config.json, chat_template.jinja or chat_template.json)")
        self.reward_id = tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
        self.image_id = config.image_token_id
        if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != self.image_id or self.reward_id >= embed.shape[0]:
            raise RewardConfigError(
                f"{self.name}: the tokenizer at config key `path`={directory!r} does not fit the checkpoint: "
                f"{IMAGE_TOKEN} → {tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)} (config: {self.image_id}), "
                f"{REWARD_TOKEN} → {self.reward_id} (embedding rows: {embed.shape[0]})")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

        vision = config.vision_config
        self.patch, self.merge, self.temporal = vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
        processor_file = os.path.join(directory, "preprocessor_config.json")
        processor = read_json(processor_file) if os.path.isfile(processor_file) else {}
        self.register_buffer("mean", torch.tensor(processor.get("image_mean", CLIP_MEAN)).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(processor.get("image_std", CLIP_STD)).view(1, 3, 1, 1),
                             persistent=False)

    def tokenize(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of each prompt's chat up to and including ``<|Reward|>``, with one ``<|image_pad|>``."""
        out = []
        for prompt in prompts:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text(prompt)}]}]
            text = self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                      add_generation_prompt=True)
            ids = self.tokenizer(text)["input_ids"]  # special tokens added as the processor adds them (none)
            if ids.count(self.image_id) != 1 or self.reward_id not in ids:
                raise ValueError(f"{self.name}: the chat template must render one {IMAGE_TOKEN} and keep "
                                 f"{REWARD_TOKEN}; got {ids.count(self.image_id)} image tokens for {prompt!r}")
            out.append(ids[:ids.index(self.reward_id) + 1])
        return out

    def encode_prompts(self, prompts: Sequence[str], device: torch.device) -> Tensor:
        """(B, L) int64 on the CPU: each prompt's ids (``tokenize``), right-padded with −1; distinct prompts are
        tokenized once. Kept on the host: ``score_batch`` expands the image token there and copies once."""
        unique = list(dict.fromkeys(prompts))
        table = dict(zip(unique, self.tokenize(unique)))
        width = max((len(ids) for ids in table.values()), default=0)
        return torch.tensor([table[p] + [-1] * (width - len(table[p])) for p in prompts], dtype=torch.long)

    def pixel_rows(self, images: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) images → Qwen2-VL ``pixel_values`` rows and ``image_grid_thw`` at the resized
        (``height``, ``width``), on the images' device."""
        input_range = "0_1" if images.dtype == torch.uint8 else self.input_range
        levels = pil_bicubic_levels(to_levels(images, input_range, quantize=True), height, width)
        pixels = (levels.float() / 255 - self.mean.float()) / self.std.float()
        return patchify(pixels, self.patch, self.merge, self.temporal)

    def expand_image_tokens(self, ids: Tensor, count: int) -> tuple[Tensor, Tensor]:
        """(B, L) ids with one image token each (−1 = pad) → (B, L + count − 1) with ``count`` image tokens in
        its place (pads → the pad id), and the position of ``<|Reward|>`` per row."""
        B, L = ids.shape
        at = (ids == self.image_id).int().argmax(1, keepdim=True)
        j = torch.arange(L + count - 1).expand(B, -1)
        source = torch.where(j < at, j, torch.where(j < at + count, at, j - count + 1))
        expanded = ids.gather(1, source)
        reward_at = (expanded == self.reward_id).int().argmax(1)
        return expanded.masked_fill(expanded < 0, self.pad_id), reward_at

    def score_batch(self, images: Tensor, prompt_features: Optional[Tensor]) -> Tensor:
        device = images.device
        height, width = smart_resize(*images.shape[-2:], self.patch * self.merge)
        pixel_values, grid = self.pixel_rows(images, height, width)
        count = (height // self.patch) * (width // self.patch) // self.merge ** 2  # tokens per image after merging
        ids, reward_at = self.expand_image_tokens(prompt_features.cpu(), count)
        ids, reward_at = ids.to(device, non_blocking=True), reward_at.to(device, non_blocking=True)
        B, L = ids.shape
        positions = torch.arange(L, device=device).expand(3, B, L)  # HPSv3's sequential positions
        hidden = self.model(input_ids=ids, position_ids=positions, pixel_values=pixel_values,
                            image_grid_thw=grid, use_cache=False).last_hidden_state
        state = hidden[torch.arange(B, device=device), reward_at]
        with torch.autocast(device.type, enabled=False):  # HPSv3 runs rm_head in fp32
            return self.head(state.float())[:, 0]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", pixels={PIXELS}"
