"""The ``longformer`` pattern: a sliding window plus symmetric, per-example global tokens with their own projections.

Transformers' ``attention_window=w`` (even, per layer) means ``w // 2`` keys on each side; attnreg's own
``left``/``right`` give any window. Scores are scaled by ``1 / sqrt(head_dim)``.
"""

from __future__ import annotations

from attnreg import Pattern, PatternError, SelectedGlobals, Window
from attnreg.validation import require

DEFAULT_ATTENTION_WINDOW = 512


def window_from_attention_window(attention_window: int, *, name: str = "attention_window") -> Window:
    """The attnreg window for transformers' ``attention_window`` (even, positive): ``w // 2`` keys on each side."""
    require(
        isinstance(attention_window, int)
        and not isinstance(attention_window, bool)
        and attention_window > 0
        and attention_window % 2 == 0,
        name,
        attention_window,
        "expected a positive even int (transformers' Longformer window: attention_window // 2 keys on each side)",
    )
    return Window.symmetric(attention_window // 2)


def longformer(attention_window: int | None = None, left: int | None = None, right: int | None = None) -> Pattern:
    """Longformer: a sliding window (attention_window, default 512, or left/right) + per-example global tokens.

    Give either transformers' even ``attention_window`` or attnreg's ``left`` and ``right`` (both), not both forms.
    Global tokens are chosen per call by ``global_mask`` and use their own query/key/value projections.
    """
    explicit = left is not None or right is not None
    if explicit and attention_window is not None:
        raise PatternError(
            f"attention_window={attention_window!r} with left={left!r}, right={right!r} is not allowed: "
            "give either attention_window (transformers' even window) or left and right, not both"
        )
    if explicit:
        require(left is not None and right is not None, "left, right", (left, right), "give both left and right")
        window = Window(left=left, right=right)
    else:
        window = window_from_attention_window(
            DEFAULT_ATTENTION_WINDOW if attention_window is None else attention_window
        )
    return _with_globals(window)


def _with_globals(window: Window) -> Pattern:
    return Pattern(window=window, selected_globals=SelectedGlobals(own_projections=True), scale=None)


def layer_pattern(attention_window: int | list[int] | tuple[int, ...], layer_id: int) -> Pattern:
    """The pattern of layer ``layer_id`` from a config's ``attention_window`` (one int, or one per layer)."""
    if isinstance(attention_window, (list, tuple)):
        require(
            isinstance(layer_id, int) and 0 <= layer_id < len(attention_window),
            "layer_id",
            layer_id,
            f"expected an int in [0, {len(attention_window)}) for config.attention_window={list(attention_window)}",
        )
        window = window_from_attention_window(attention_window[layer_id], name=f"config.attention_window[{layer_id}]")
    else:
        window = window_from_attention_window(attention_window, name="config.attention_window")
    return _with_globals(window)
