"""Modules that put attnreg patterns into any model: ``PatternAttention``, its ``nn.MultiheadAttention`` adapter
``MultiheadPatternAttention``, ``swap``, and fused head projections."""

from attnreg.nn.attention import PatternAttention
from attnreg.nn.batch import SharedBatch
from attnreg.nn.multihead import MultiheadPatternAttention
from attnreg.nn.projections import project_heads, project_linears, stacked
from attnreg.nn.swap import from_multihead, swap

__all__ = [
    "MultiheadPatternAttention",
    "PatternAttention",
    "SharedBatch",
    "from_multihead",
    "project_heads",
    "project_linears",
    "stacked",
    "swap",
]
