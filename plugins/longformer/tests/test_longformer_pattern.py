"""The ``longformer`` pattern: windows from transformers' attention_window or left/right, and its errors."""

from __future__ import annotations

import pytest
from attnreg_longformer.pattern import layer_pattern

import attnreg


def test_registered_through_the_entry_point() -> None:
    assert "longformer" in attnreg.list_patterns()
    assert "longformer" in attnreg.list_builders()


@pytest.mark.parametrize(("window", "side"), [(None, 256), (512, 256), (8, 4), (2, 1)])
def test_attention_window_means_half_on_each_side(window: int | None, side: int) -> None:
    params = {} if window is None else {"attention_window": window}
    pattern = attnreg.get_pattern("longformer", **params)
    assert pattern.window == attnreg.Window(side, side)
    assert pattern.selected_globals == attnreg.SelectedGlobals(own_projections=True)
    assert pattern.scale is None


def test_explicit_left_and_right() -> None:
    assert attnreg.get_pattern("longformer", left=3, right=0).window == attnreg.Window(3, 0)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"attention_window": 7}, "attention_window=7"),
        ({"attention_window": 0}, "attention_window=0"),
        ({"attention_window": -4}, "attention_window=-4"),
        ({"attention_window": 8, "left": 2, "right": 2}, "not both"),
        ({"left": 2}, "give both left and right"),
        ({"left": -1, "right": 2}, "Window.left=-1"),
        ({"window": 8}, "'window'"),
    ],
)
def test_bad_parameters_are_errors_naming_them(params: dict, named: str) -> None:
    with pytest.raises(attnreg.PatternError, match=named):
        attnreg.get_pattern("longformer", **params)


def test_one_window_per_layer() -> None:
    assert layer_pattern([4, 6, 8], 1).window == attnreg.Window(3, 3)
    assert layer_pattern(8, 5).window == attnreg.Window(4, 4)
    with pytest.raises(attnreg.PatternError, match=r"config.attention_window\[2\]=5"):
        layer_pattern([4, 6, 5], 2)
    with pytest.raises(attnreg.PatternError, match="layer_id=3"):
        layer_pattern([4, 6, 8], 3)
