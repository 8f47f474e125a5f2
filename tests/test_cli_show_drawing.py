"""What ``attnreg show`` draws: each cell's kind, and a legend naming only the kinds present, the token rule by what
the pattern says it is (its window, its mask parts)."""

from __future__ import annotations

import pytest
import torch

from attnreg import AggregatedGlobals, Band, KeyRange, Pattern, SelectedGlobals, Window
from attnreg.render import render_text

LENGTH = 8


def _legend(pattern: Pattern, pad: int = 0, globals_: tuple[int, ...] = ()) -> str:
    """The ``legend:`` line of ``pattern`` drawn at :data:`LENGTH` with ``pad`` padded tokens and ``globals_``."""
    attention_mask = torch.arange(LENGTH)[None, :] < LENGTH - pad
    global_mask = None
    if globals_:
        global_mask = torch.zeros(1, LENGTH, dtype=torch.bool)
        global_mask[0, list(globals_)] = True
    layout = pattern.materialize(LENGTH, attention_mask=attention_mask, global_mask=global_mask)
    return next(line for line in render_text(layout).splitlines() if line.startswith("legend: "))


@pytest.mark.parametrize(
    ("pattern", "legend"),
    [
        (Pattern(window=Window(1, 0)), "# Window(left=1, right=0)   . not allowed"),
        (Pattern(), "# every key"),
        (
            Pattern(mask=Band(2, 0) | (KeyRange(0, 2) & Band(None, 0))),
            "# Band(left=2, right=0) | (KeyRange(start=0, stop=2) & Band(left=None, right=0))   . not allowed",
        ),
        (
            Pattern(window=Window(1, 1), mask=Band(None, 0)),
            "# Window(left=1, right=1) & Band(left=None, right=0)   . not allowed",
        ),
        (
            Pattern(window=Window(0, 0), aggregated_globals=AggregatedGlobals(4)),
            "# Window(left=0, right=0)   A aggregated key   . not allowed",
        ),
    ],
)
def test_the_legend_names_the_token_rule_and_only_the_cells_present(pattern, legend):
    assert _legend(pattern) == f"legend: {legend}"


def test_the_legend_lists_padding_and_global_tokens_when_the_example_has_them():
    pattern = Pattern(window=Window(1, 1), selected_globals=SelectedGlobals())
    assert _legend(pattern) == "legend: # Window(left=1, right=1)   . not allowed"
    assert _legend(pattern, pad=2, globals_=(0,)) == (
        "legend: # Window(left=1, right=1)   G global token   - padding   . not allowed"
    )


def test_a_key_seen_only_through_a_global_token_is_global_under_a_mask_part_too():
    pattern = Pattern(mask=Band(0, 0), selected_globals=SelectedGlobals())
    global_mask = torch.zeros(1, 4, dtype=torch.bool)
    global_mask[0, 2] = True
    grid = render_text(pattern.materialize(4, global_mask=global_mask)).splitlines()
    start = grid.index("       0123")
    assert grid[start + 1 : start + 5] == ["    0  #.G.", "    1  .#G.", "    2g GG#G", "    3  ..G#"]
