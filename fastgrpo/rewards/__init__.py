"""Reward scorers that keep images on the device: ``scorer(images, prompts) -> Tensor (B,)``.

Built-in (``available_rewards()``): ``clip_score``, ``pickscore``, ``hpsv2``, ``hpsv3``, ``aesthetic``,
``jpeg_compressibility``, ``jpeg_incompressibility``, ``vlm_judge`` (an OpenAI-compatible chat endpoint). Each
model loads from a local directory given as ``path=`` (never downloaded). ``remote:NAME`` scores through a
``fastgrpo serve-reward NAME`` server (``fastgrpo.rewards.remote``). Add one with ``@register("name")`` on a
``RewardModel`` subclass in one file.
"""
from .base import RewardConfigError, RewardModel
from .registry import available_rewards, build_reward, register
from . import aesthetic, clip_score, hps, hpsv3, jpeg, pickscore, vlm_judge  # noqa: F401  (registers the built-ins)
from .aesthetic import Aesthetic, AestheticHead
from .clip_score import ClipScore
from .hps import HPSv2
from .jpeg import JpegCompressibility, JpegIncompressibility, jpeg_kilobytes
from .multi import MultiReward, MultiRewardOutput
from .open_clip_map import clip_model_from_open_clip, open_clip_to_hf
from .pickscore import PickScore

__all__ = ["RewardModel", "RewardConfigError", "register", "build_reward", "available_rewards", "MultiReward",
           "MultiRewardOutput", "ClipScore", "PickScore", "HPSv2", "Aesthetic", "AestheticHead",
           "JpegCompressibility", "JpegIncompressibility", "jpeg_kilobytes", "open_clip_to_hf",
           "clip_model_from_open_clip"]
