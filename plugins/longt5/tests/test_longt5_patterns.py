"""The longt5-local and longt5-tglobal patterns: parameters, validation, and transformers' block and bucket rules."""

from __future__ import annotations

import pytest
import torch
from transformers.models.longt5 import modeling_longt5

import attnreg


def test_both_patterns_are_registered_through_the_entry_point():
    assert {"longt5-local", "longt5-tglobal"} <= set(attnreg.list_patterns())
    assert attnreg.get_registry().pattern_entry("longt5-tglobal").plugin.distribution == "attnreg-longt5"


def test_local_defaults_are_the_papers():
    pattern = attnreg.get_pattern("longt5-local")
    assert pattern.window == attnreg.Window(127, 127)
    assert pattern.bias == attnreg.RelativePositionBias(32, 128, True)
    assert pattern.aggregated_globals is None and pattern.scale == 1.0


def test_tglobal_adds_aggregated_keys_with_their_own_bias():
    pattern = attnreg.get_pattern("longt5-tglobal", local_radius=7, global_block_size=4, num_buckets=16)
    assert pattern.window == attnreg.Window(7, 7)
    assert pattern.aggregated_globals == attnreg.AggregatedGlobals(4)
    assert pattern.aggregated_bias == pattern.bias == attnreg.RelativePositionBias(16, 128, True)
    assert pattern.scale == 1.0


@pytest.mark.parametrize(
    ("name", "params", "named"),
    [
        ("longt5-local", {"local_radius": -1}, "local_radius"),
        ("longt5-local", {"local_radius": 2.5}, "local_radius"),
        ("longt5-tglobal", {"global_block_size": 0}, "global_block_size"),
        ("longt5-tglobal", {"num_buckets": 2}, "num_buckets"),
        ("longt5-local", {"max_distance": 0}, "max_distance"),
        ("longt5-local", {"radius": 3}, "radius"),
    ],
)
def test_bad_parameters_are_errors_that_name_them(name, params, named):
    with pytest.raises(attnreg.PatternError, match=named):
        attnreg.get_pattern(name, **params)


def _masks(length: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(length)
    lengths = torch.tensor([length, max(length - 7, 0), 1, 0])
    right = torch.arange(length)[None, :] < lengths[:, None]
    scattered = torch.rand(2, length, generator=generator) < 0.7
    return torch.cat([right, right.flip(-1), scattered]).long()


@pytest.mark.parametrize("global_block_size", [1, 2, 3, 4, 16])
@pytest.mark.parametrize("length", [1, 5, 16, 23, 40])
def test_block_ids_and_valid_globals_match_transformers(global_block_size, length):
    mask = _masks(length)
    expected_ids, expected_valid = modeling_longt5._make_global_fixed_block_ids(mask, global_block_size)
    globals_ = attnreg.AggregatedGlobals(global_block_size)
    ids = globals_.block_ids(mask)
    torch.testing.assert_close(ids, expected_ids.long(), rtol=0, atol=0)
    torch.testing.assert_close(globals_.valid(ids, length // global_block_size), expected_valid.bool(), rtol=0, atol=0)


@pytest.mark.parametrize("global_block_size", [3, 16])
def test_aggregates_match_transformers(global_block_size):
    mask = _masks(37)
    hidden = torch.randn(mask.shape[0], 37, 6)
    ids, _ = modeling_longt5._make_global_fixed_block_ids(mask, global_block_size)
    expected = modeling_longt5._create_global_aggregates(hidden, ids, 37 // global_block_size)
    torch.testing.assert_close(attnreg.AggregatedGlobals(global_block_size).aggregate(hidden, mask), expected)


@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (8, 12)])
def test_buckets_match_transformers(num_buckets, max_distance):
    relative = torch.arange(-300, 301)
    expected = modeling_longt5.LongT5LocalAttention._relative_position_bucket(
        relative, bidirectional=True, num_buckets=num_buckets, max_distance=max_distance
    )
    torch.testing.assert_close(attnreg.RelativePositionBias(num_buckets, max_distance).bucket(relative), expected)
