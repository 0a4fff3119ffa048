"""Training methods behind one interface (``fastgrpo.methods.base.Method``), chosen by the ``method`` config key:

* ``grpo`` — the SDE-replay family: Flow-GRPO, DanceGRPO, Flow-CPS, MixGRPO(-Flash), G²RPO, Stepwise-Flow-GRPO,
  AdaGRPO and GRPO-Guard are settings of it (``window``, ``branch``, ``stepwise``, ``sampling``, ``optim``,
  ``guard``);
* ``nft`` — DiffusionNFT: clean samples of an old policy, trained on the forward process;
* ``awm`` — Advantage Weighted Matching: the flow-matching loss of clean samples, weighted by advantage;
* ``dgpo`` — Direct Group Preference Optimization: group-level DPO on the flow-matching error.

AdaGRPO's curriculum (prompt selection) sits in the driver and serves every method; its cross-level fusion adds to
the group advantages of every method (each method's ``advantages``).
"""
from .awm import AWM
from .base import Method, Rewards, RolloutBatch, UnitLoss
from .dgpo import DGPO
from .grpo import GRPO
from .nft import DiffusionNFT

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (GRPO, DiffusionNFT, AWM, DGPO)}


def build_method(name: str, trainer) -> Method:
    try:
        cls = METHODS[name]
    except KeyError:
        raise ValueError(f"method={name!r} is not one of {sorted(METHODS)}") from None
    return cls(trainer)


__all__ = ["AWM", "DGPO", "METHODS", "DiffusionNFT", "GRPO", "Method", "Rewards", "RolloutBatch", "UnitLoss",
           "build_method"]
