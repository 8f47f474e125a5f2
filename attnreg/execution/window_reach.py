"""How far a call's window reaches: read by every engine that lays keys out around each query (blocked, xformers)."""

from __future__ import annotations

from attnreg.execution.call import AttentionCall


def window_reach(call: AttentionCall) -> tuple[int, int]:
    """How far the window reaches ``(left, right)``, unbounded sides capped at the sequence."""
    window = call.pattern.window
    length = call.length
    return (length - 1, length - 1) if window is None else window.span(length)
