"""Three warnings that installing torchao (``fastgrpo[fp8]``) adds to every run, dropped because none concerns
fastgrpo: torchao's CUDA extension libraries failing to load into a CPU-only torch, torchao registering its enums
with a ``torch.utils._pytree`` call this torch deprecates, and diffusers not finding torchao's NF4 / uintx classes
(moved in torchao 0.18), which it needs only to load checkpoints serialised by torchao — fastgrpo quantises at load
instead. Everything else those loggers say is kept."""
from __future__ import annotations

import logging
import sys


def _cpu_torch() -> bool:
    """A torch without CUDA or ROCm (torchao's CUDA libraries cannot load into it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return getattr(torch.version, "cuda", None) is None and getattr(torch.version, "hip", None) is None


DROPPED = {
    "torchao": lambda message: message.startswith("Failed to load") and _cpu_torch(),
    "torch.utils._pytree": lambda message: "is an Enum subclass and is now natively supported" in message,
    "diffusers.quantizers.torchao.torchao_quantizer":
        lambda message: message.startswith("Unable to import `torchao` Tensor objects"),
}
"""logger name → which of its messages to drop."""


def install() -> None:
    """Add the filters (once) to the loggers those messages come from."""
    for name, dropped in DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Keep) for f in logger.filters):
            logger.addFilter(_Keep(dropped))


class _Keep(logging.Filter):
    """Passes every record but those ``dropped`` (message → bool) names."""

    def __init__(self, dropped):
        super().__init__()
        self.dropped = dropped

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.dropped(record.getMessage())
