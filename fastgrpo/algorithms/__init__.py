"""Algorithm state and losses that sit on top of the ops: AdaGRPO's curriculum tracker, the policy losses."""
from .adagrpo import CapabilityTracker
from .losses import (LossOutput, adagrpo_loss, kl_penalty, mixgrpo_kl, ppo_clip_loss, rationorm_loss, rationorm_ratio,
                     tempflow_weights)

__all__ = ["CapabilityTracker", "LossOutput", "adagrpo_loss", "kl_penalty", "mixgrpo_kl", "ppo_clip_loss",
           "rationorm_loss", "rationorm_ratio", "tempflow_weights"]
