"""Three warnings that installing torchao (``fastgrpo[fp8]``) adds to every run, dropped because none concerns
fastgrpo: torchao's CUDA extension libraries failing to load into a CPU-only torch, torchao registering its enums
with a ``torch.utils._pytree`` call this torch deprecates, and diffusers not finding torchao's NF4 / uintx classes
(moved in torchao 0.18), which it needs only to load checkpoints serialised by torchao — fastgrpo quantises at load
instead. Everything else those loggers say is kept."""
from __future__ import annotations

import logging
import sys


def _cpu_torch() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and getattr(torch.version, "cuda", None) is None and not getattr(torch.version, "hip",
                                                                                               None)


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
        if not any(getattr(f, "fastgrpo", False) for f in logger.filters):
            keep = _Keep(dropped)
            logger.addFilter(keep)


class _Keep(logging.Filter):
    fastgrpo = True

    def __init__(self, dropped):
        super().__init__()
        self.dropped = dropped

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.dropped(record.getMessage())
