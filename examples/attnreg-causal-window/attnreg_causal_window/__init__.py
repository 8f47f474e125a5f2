"""attnreg-causal-window: a causal sliding window with a unidirectional relative-position bias, as an attnreg plugin."""

from attnreg_causal_window.pattern import causal_window

__all__ = ["causal_window"]
