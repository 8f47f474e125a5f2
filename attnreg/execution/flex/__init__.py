"""The FlexAttention engine: block mask from the pattern's coverage, biases as ``score_mod``, compiled per shape."""

from attnreg.execution.flex.engine import FlexEngine, flex_attention_call

__all__ = ["FlexEngine", "flex_attention_call"]
