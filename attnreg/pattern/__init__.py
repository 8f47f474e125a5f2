"""The pattern model: parts (an open vocabulary), the ``Pattern`` value, and its dense materialisation."""

from attnreg.pattern.parts import AggregatedGlobals, RelativePositionBias, SelectedGlobals, Window
from attnreg.pattern.predicates import (
    AllOf,
    AnyOf,
    Band,
    BlockBand,
    Dilation,
    KeyRange,
    MaskPart,
    QueryRange,
    RandomBlocks,
    ScoreTerm,
    register_part,
)
from attnreg.pattern.prepared import PreparedMask
from attnreg.pattern.scores import ALiBi
from attnreg.pattern.spec import Cost, Pattern

__all__ = [
    "ALiBi",
    "AggregatedGlobals",
    "AllOf",
    "AnyOf",
    "Band",
    "BlockBand",
    "Cost",
    "Dilation",
    "KeyRange",
    "MaskPart",
    "Pattern",
    "PreparedMask",
    "QueryRange",
    "RandomBlocks",
    "RelativePositionBias",
    "ScoreTerm",
    "SelectedGlobals",
    "Window",
    "register_part",
]
