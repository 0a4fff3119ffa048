"""fastgrpo's trainer: configuration, rollouts, the AdaGRPO + MixGRPO loop, checkpoints and reports."""
from .config import TrainConfig, load_config
from .loop import Trainer, train

__all__ = ["TrainConfig", "Trainer", "load_config", "train"]
