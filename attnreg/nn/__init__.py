"""Modules that put attnreg patterns into any model: ``PatternAttention`` and ``swap``."""

from attnreg.nn.attention import PatternAttention
from attnreg.nn.swap import from_multihead, swap

__all__ = ["PatternAttention", "from_multihead", "swap"]
