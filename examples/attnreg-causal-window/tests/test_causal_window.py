"""The causal-window plugin: what the pattern allows, and attnreg's conformance suite on it."""

from __future__ import annotations

import pytest
import torch

import attnreg


def test_it_is_listed_by_attnreg():
    assert "causal-window" in attnreg.list_patterns()


def test_a_query_sees_itself_and_the_window_before_it():
    allowed = attnreg.get_pattern("causal-window", window=2).materialize(6).allowed[0]
    expected = torch.tensor([[i - 2 <= j <= i for j in range(6)] for i in range(6)])
    assert torch.equal(allowed, expected)


def test_the_bias_has_buckets_for_the_past_only():
    bias = attnreg.get_pattern("causal-window").bias
    assert not bias.bidirectional
    assert bias.bucket(torch.tensor([1, 5, 100])).tolist() == [0, 0, 0]


@pytest.mark.parametrize(("name", "value"), [("window", 0), ("num_buckets", "8"), ("max_distance", 1)])
def test_bad_parameters_are_refused_by_name(name, value):
    with pytest.raises(attnreg.PatternError, match=name):
        attnreg.get_pattern("causal-window", **{name: value})


def test_passes_the_conformance_suite(attnreg_conformance):
    attnreg_conformance("causal-window", params={"window": 5})
