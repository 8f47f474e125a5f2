"""attnreg-strided: Sparse Transformer's strided summary columns, as a new attnreg part kind and a pattern."""

from attnreg_strided.parts import StridedColumns
from attnreg_strided.pattern import strided

__all__ = ["StridedColumns", "strided"]
