"""The pattern model against small cases computed by hand, and against transformers' LongT5 helpers.

Grids read as the allowed matrix: one row per query, one column per key, ``1`` allowed and ``.`` not;
aggregated keys follow the token keys after a ``|``.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.longt5.modeling_longt5 import (
    LongT5Attention,
    _create_global_aggregates,
    _make_global_fixed_block_ids,
)

from attnreg import AggregatedGlobals, Pattern, PatternError, RelativePositionBias, SelectedGlobals, Window


def grid(*rows: str) -> torch.Tensor:
    """A bool matrix from rows such as ``"11.|1"``."""
    return torch.tensor([[c == "1" for c in row.replace("|", "")] for row in rows])


def mask(text: str) -> torch.Tensor:
    """A ``(1, n)`` bool mask from ``"1101"``."""
    return torch.tensor([[c == "1" for c in text]])


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        (Window(1, 1), ["11...", "111..", ".111.", "..111", "...11"]),
        (Window(2, 0), ["1....", "11...", "111..", ".111.", "..111"]),
        (Window(0, 1), ["11...", ".11..", "..11.", "...11", "....1"]),
        (Window(0, 0), ["1....", ".1...", "..1..", "...1.", "....1"]),
        (Window(None, 0), ["1....", "11...", "111..", "1111.", "11111"]),
        (Window(1, None), ["11111", "11111", ".1111", "..111", "...11"]),
        (Window(None, None), ["11111"] * 5),
        (Window(9, 9), ["11111"] * 5),
        (None, ["11111"] * 5),
    ],
    ids=str,
)
def test_window_allows_keys_from_i_minus_left_to_i_plus_right(window, expected):
    layout = Pattern(window=window).materialize(5)
    assert torch.equal(layout.allowed[0], grid(*expected))


@pytest.mark.parametrize(("left", "right", "causal"), [(3, 0, True), (0, 0, True), (None, 0, True), (2, 1, False)])
def test_window_is_causal_when_right_is_zero(left, right, causal):
    assert Window(left, right).is_causal is causal


def test_window_constructors_follow_the_anchors_conventions():
    assert Window.symmetric(3) == Window(3, 3)
    assert Window.causal(4) == Window(4, 0)


@pytest.mark.parametrize(
    ("attention_mask", "expected"),
    [
        ("11101", ["11...", "111..", ".11..", ".....", "....1"]),
        ("00111", [".....", ".....", "..11.", "..111", "...11"]),
        ("11111", ["11...", "111..", ".111.", "..111", "...11"]),
        ("00000", ["....."] * 5),
    ],
)
def test_padded_keys_are_never_seen_and_padded_queries_see_nothing(attention_mask, expected):
    layout = Pattern(window=Window(1, 1)).materialize(5, attention_mask=mask(attention_mask))
    assert torch.equal(layout.allowed[0], grid(*expected))


@pytest.mark.parametrize(
    ("attention_mask", "expected"),
    [
        ("11111", ["1.1..", ".11..", "11111", "..11.", "..1.1"]),
        ("11110", ["1.1..", ".11..", "1111.", "..11.", "....."]),
    ],
)
def test_one_selected_global_token_is_symmetric(attention_mask, expected):
    pattern = Pattern(window=Window(0, 0), selected_globals=SelectedGlobals())
    layout = pattern.materialize(5, attention_mask=mask(attention_mask), global_mask=mask("00100"))
    assert torch.equal(layout.allowed[0], grid(*expected))
    assert layout.global_rows[0].tolist() == [False, False, True, False, False]


def test_a_padded_token_marked_global_is_not_global():
    pattern = Pattern(window=Window(0, 0), selected_globals=SelectedGlobals())
    layout = pattern.materialize(3, attention_mask=mask("110"), global_mask=mask("001"))
    assert torch.equal(layout.allowed[0], grid("1..", ".1.", "..."))
    assert not layout.global_rows.any()


def test_selected_globals_differ_per_example():
    pattern = Pattern(window=Window(0, 0), selected_globals=SelectedGlobals())
    layout = pattern.materialize(3, global_mask=torch.tensor([[True, False, False], [False, False, True]]))
    assert torch.equal(layout.allowed[0], grid("111", "11.", "1.1"))
    assert torch.equal(layout.allowed[1], grid("1.1", ".11", "111"))


def test_a_global_key_inside_the_window_is_counted_once():
    pattern = Pattern(window=Window(1, 1), selected_globals=SelectedGlobals())
    layout = pattern.materialize(4, global_mask=mask("0100"))
    assert torch.equal(layout.allowed[0], grid("11..", "1111", ".111", ".111"))


@pytest.mark.parametrize(
    ("block", "attention_mask", "block_ids", "valid", "expected"),
    [
        # two full blocks and a tail of one: the orphan joins the block before it
        (2, "11111", [0, 0, 1, 1, 1], [1, 1], ["11...|11", "111..|11", ".111.|11", "..111|11", "...11|11"]),
        # right padding: only one block ends on a real token, so every real token joins block 0
        (2, "11100", [0, 0, 0, -1, -1], [1, 0], ["11...|1.", "111..|1.", ".11..|1.", ".....|..", ".....|.."]),
        # left padding: blocks keep their positions, block 0 has a single real token
        (2, "011111", [-1, 0, 1, 1, 2, 2], [1, 1, 1], None),
        # no block ends on a real token: no aggregated key is valid
        (3, "1101", [-1, -1, -1, -1], [0], None),
        # shorter than a block: no aggregated keys at all
        (4, "111", [-1, -1, -1], [], ["11.|", "111|", ".11|"]),
    ],
)
def test_aggregated_blocks_follow_the_tail_and_padding_rules(block, attention_mask, block_ids, valid, expected):
    pattern = Pattern(window=Window(1, 1), aggregated_globals=AggregatedGlobals(block))
    real = mask(attention_mask)
    layout = pattern.materialize(real.shape[1], attention_mask=real)
    assert layout.block_ids[0].tolist() == block_ids
    assert layout.count == len(valid)
    assert pattern.aggregated_globals.valid(layout.block_ids, layout.count)[0].tolist() == [bool(v) for v in valid]
    aggregated_columns = layout.allowed[0, :, real.shape[1] :]
    assert torch.equal(
        aggregated_columns, real[0, :, None] & torch.tensor([bool(v) for v in valid], dtype=torch.bool)[None, :]
    )
    if expected is not None:
        assert torch.equal(layout.allowed[0], grid(*expected))


def test_aggregated_relative_position_is_block_minus_query_block():
    pattern = Pattern(aggregated_globals=AggregatedGlobals(2))
    layout = pattern.materialize(5)
    assert layout.aggregated_relative_position[0].tolist() == [[0, 1], [0, 1], [-1, 0], [-1, 0], [-1, 0]]


def test_aggregation_matrix_sums_each_block():
    layout = Pattern(aggregated_globals=AggregatedGlobals(2)).materialize(5, attention_mask=mask("11011"))
    assert layout.aggregation()[0].tolist() == [[1, 1, 0, 0, 0], [0, 0, 0, 1, 1]]


@pytest.mark.parametrize("block", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("length", [1, 7, 16, 33])
def test_block_ids_and_valid_match_transformers_on_random_masks(block, length):
    torch.manual_seed(block * 100 + length)
    attention_mask = (torch.rand(6, length) > 0.3).float()
    attention_mask[0] = 1.0
    expected_ids, expected_valid = _make_global_fixed_block_ids(attention_mask, block)
    part = AggregatedGlobals(block)
    block_ids = part.block_ids(attention_mask)
    assert torch.equal(block_ids, expected_ids.long())
    assert torch.equal(part.valid(block_ids, part.count(length)), expected_valid.bool())


@pytest.mark.parametrize("block", [1, 3, 4])
@pytest.mark.parametrize("length", [5, 16, 21])
def test_aggregate_matches_transformers_on_random_masks(block, length):
    torch.manual_seed(block + length)
    attention_mask = torch.rand(3, length) > 0.4
    hidden = torch.randn(3, length, 6, dtype=torch.float64)
    part = AggregatedGlobals(block)
    block_ids, _ = _make_global_fixed_block_ids(attention_mask.double(), block)
    expected = _create_global_aggregates(hidden, block_ids, length // block)
    torch.testing.assert_close(part.aggregate(hidden, attention_mask), expected)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (16, 20), (8, 9), (4, 100)])
def test_relative_position_bucket_matches_transformers(bidirectional, num_buckets, max_distance):
    relative = torch.arange(-300, 301)[:, None]
    bias = RelativePositionBias(num_buckets, max_distance, bidirectional)
    expected = LongT5Attention._relative_position_bucket(
        relative, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )
    assert torch.equal(bias.bucket(relative), expected)


def test_bias_reads_the_table_by_bucket_of_j_minus_i_and_of_g_minus_block():
    torch.manual_seed(0)
    pattern = Pattern(
        aggregated_globals=AggregatedGlobals(2),
        bias=RelativePositionBias(8, 16),
        aggregated_bias=RelativePositionBias(4, 8),
    )
    weight, aggregated_weight = torch.randn(8, 3), torch.randn(4, 3)
    layout = pattern.materialize(5, attention_mask=mask("11110"))
    bias = layout.bias(weight, aggregated_weight)
    assert bias.shape == (1, 3, 5, 7)
    for i in range(5):
        for j in range(5):
            assert torch.equal(bias[0, :, i, j], weight[pattern.bias.bucket(torch.tensor(j - i))])
        for g in range(2):
            rel = torch.tensor(g - int(layout.block_ids[0, i]))
            assert torch.equal(bias[0, :, i, 5 + g], aggregated_weight[pattern.aggregated_bias.bucket(rel)])


def test_bias_is_zero_without_tables():
    layout = Pattern(window=Window(1, 1)).materialize(4)
    assert torch.equal(layout.bias(num_heads=2), torch.zeros(1, 2, 4, 4))


@pytest.mark.parametrize(("scale", "head_dim", "expected"), [(None, 16, 0.25), (None, 64, 0.125), (1.0, 64, 1.0)])
def test_score_scale_defaults_to_one_over_sqrt_head_dim(scale, head_dim, expected):
    assert Pattern(scale=scale).score_scale(head_dim) == expected


def test_materialize_without_masks_builds_on_the_requested_device():
    layout = Pattern(window=Window(1, 1)).materialize(4, device="meta")
    assert layout.allowed.device.type == "meta"


@pytest.mark.parametrize(
    ("hidden", "attention_mask", "named"),
    [
        (torch.zeros(2, 8), torch.ones(2, 8), "hidden_states.shape=(2, 8)"),
        (
            torch.zeros(2, 8, 4),
            torch.ones(2, 7),
            "attention_mask.shape=(2, 7) is not allowed: expected (batch, length)",
        ),
        (torch.zeros(2, 8, 4), torch.ones(1, 8), "attention_mask.shape=(1, 8)"),
    ],
)
def test_aggregate_rejects_mismatched_shapes(hidden, attention_mask, named):
    with pytest.raises(PatternError) as error:
        AggregatedGlobals(2).aggregate(hidden, attention_mask)
    assert named in str(error.value)


def test_selected_global_slots_put_each_examples_globals_first_in_order() -> None:
    mask = torch.tensor([[False, True, False, True], [False, False, False, False], [True, False, False, False]])
    positions, filled = SelectedGlobals.slots(mask, 2)
    assert positions.tolist() == [[1, 3], [0, 1], [0, 1]]
    assert filled.tolist() == [[True, True], [False, False], [True, False]]


def test_aggregate_without_a_mask_counts_every_token_real() -> None:
    hidden = torch.randn(2, 11, 3)
    part = AggregatedGlobals(4)
    torch.testing.assert_close(part.aggregate(hidden), part.aggregate(hidden, torch.ones(2, 11, dtype=torch.bool)))
    assert part.aggregate(hidden).shape == (2, 2, 3)
