"""The pattern model: parts, the ``Pattern`` value, and its dense materialisation."""

from attnreg.pattern.parts import AggregatedGlobals, RelativePositionBias, SelectedGlobals, Window
from attnreg.pattern.spec import Cost, Pattern

__all__ = ["AggregatedGlobals", "Cost", "Pattern", "RelativePositionBias", "SelectedGlobals", "Window"]
