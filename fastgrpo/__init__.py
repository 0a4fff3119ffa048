"""fastgrpo: fast, exact GRPO for flow-matching text-to-image models."""
from . import _quiet

__version__ = "0.1.0"
_quiet.install()
