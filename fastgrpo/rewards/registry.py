"""The reward registry: ``@register(name)`` on a scorer class (or factory), ``build_reward(name, **config)``.

A user adds a scorer in one file: subclass ``RewardModel`` (or write any callable ``(images, prompts) -> (B,)``
factory), decorate it with ``@register("my_reward")`` and import the file before ``build_reward``.
"""
from __future__ import annotations

import inspect
from typing import Callable, TypeVar

_REGISTRY: dict[str, Callable] = {}
T = TypeVar("T", bound=Callable)


def register(name: str) -> Callable[[T], T]:
    """Class/function decorator: make ``build_reward(name, **config)`` call it with the config."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a reward name must be a non-empty string, got {name!r}")

    def wrap(factory: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"reward {name!r} is already registered (by {_REGISTRY[name].__qualname__})")
        _REGISTRY[name] = factory
        return factory

    return wrap


def available_rewards() -> list[str]:
    """Registered reward names, sorted."""
    return sorted(_REGISTRY)


def build_reward(name: str, **config):
    """Build the registered reward ``name`` from its config (keyword arguments of its class).

    Raises ValueError for an unknown name (listing the registered ones) or for config keys the reward does not take.
    """
    if name.startswith("remote:"):  # a reward server's (fastgrpo serve-reward NAME): its URL is the path
        from .remote import RemoteReward

        if not name[len("remote:"):]:
            raise ValueError("reward 'remote:' names no reward: write remote:NAME, the name the server serves")
        config = {**config, "remote": name[len("remote:"):]}
        factory = RemoteReward
    elif name not in _REGISTRY:
        raise ValueError(f"unknown reward {name!r}; registered rewards: {', '.join(available_rewards())} "
                         "(or remote:NAME for a reward server)")
    else:
        factory = _REGISTRY[name]
    accepted, open_ended = _accepted(factory)
    unknown = sorted(set(config) - accepted)
    if unknown and not open_ended:
        raise ValueError(f"reward {name!r}: bad config keys {unknown}; it accepts {sorted(accepted)}")
    return factory(**config)


def _accepted(factory) -> tuple[set, bool]:
    """Keyword names ``factory`` takes, following ``**kwargs`` up a class's bases (a scorer passes its common
    options to ``RewardModel.__init__``); the flag says whether it still takes any keyword."""
    names: set = set()
    chain = [c.__init__ for c in factory.__mro__ if "__init__" in vars(c)] if inspect.isclass(factory) else [factory]
    for fn in chain:
        params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names, False
    return names, True
