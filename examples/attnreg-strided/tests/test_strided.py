"""The strided plugin: its part's definition and exact coverage, its pattern against the definition written out
here, the blocked engine against the reference, patterns as data, and attnreg's conformance suite on it."""

from __future__ import annotations

import itertools

import pytest
import torch
from attnreg_strided import StridedColumns

import attnreg

EMPTY, PARTIAL, FULL = 0, 1, 2


def definition(length: int, local: int, stride: int) -> torch.Tensor:
    """``(i - local <= j <= i) or (j mod stride == stride - 1 and j <= i)``, pair by pair."""
    return torch.tensor(
        [[i - local <= j <= i or (j % stride == stride - 1 and j <= i) for j in range(length)] for i in range(length)]
    )


def test_the_pattern_and_the_part_kind_are_registered_by_the_plugin():
    registry = attnreg.get_registry()
    assert registry.pattern_entry("strided").plugin.distribution == "attnreg-strided"
    assert registry.part_entry("strided-columns").part_type is StridedColumns
    assert registry.part_entry("strided-columns").plugin.distribution == "attnreg-strided"


@pytest.mark.parametrize(("length", "local", "stride"), [(24, 3, 4), (17, 0, 5), (9, 2, 1), (13, 4, 20)])
def test_a_query_sees_its_local_window_and_the_summary_columns_before_it(length, local, stride):
    allowed = attnreg.get_pattern("strided", local=local, stride=stride).materialize(length).allowed[0]
    assert torch.equal(allowed, definition(length, local, stride))


@pytest.mark.parametrize("stride", [1, 2, 3, 5])
def test_the_part_allows_the_last_key_of_each_stride_for_every_query(stride):
    i, j = torch.arange(11)[:, None], torch.arange(11)[None, :]
    expected = torch.tensor([[k % stride == stride - 1 for k in range(11)] for _ in range(11)])
    assert torch.equal(StridedColumns(stride).allowed(i, j, 11), expected)


@pytest.mark.parametrize("stride", [1, 2, 3, 4])
def test_the_coverage_is_exact_for_every_pair_of_ranges(stride):
    length = 10
    part = StridedColumns(stride)
    allowed = part.allowed(torch.arange(length)[:, None], torch.arange(length)[None, :], length)
    ranges = [(a, b) for a, b in itertools.combinations_with_replacement(range(length), 2)]
    for (q0, q1), (k0, k1) in itertools.product(ranges, ranges):
        inside = allowed[q0 : q1 + 1, k0 : k1 + 1]
        expected = FULL if inside.all() else EMPTY if not inside.any() else PARTIAL
        verdict = part.coverage(*(torch.tensor(x) for x in (q0, q1, k0, k1)), length)
        assert int(verdict) == expected, (q0, q1, k0, k1)


@pytest.mark.parametrize("length", [1, 7, 8, 9, 31])
def test_the_blocked_engine_equals_the_reference_forward_and_backward(length):
    pattern = attnreg.get_pattern("strided", local=3, stride=4)
    attention_mask = torch.ones(2, length, dtype=torch.bool)
    attention_mask[1, length - length // 3 :] = False
    q, k, v = (torch.randn(2, 3, length, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    results = {}
    for backend in ("blocked", "reference"):
        out = attnreg.attention(q, k, v, pattern, attention_mask=attention_mask, backend=backend)
        results[backend] = (out, *torch.autograd.grad((out * torch.linspace(-1, 1, 8)).sum(), (q, k, v)))
    for blocked, reference in zip(results["blocked"], results["reference"], strict=True):
        torch.testing.assert_close(blocked, reference)


def test_the_pattern_round_trips_as_data():
    pattern = attnreg.get_pattern("strided", local=5, stride=7)
    data = pattern.to_dict()
    assert data["mask"]["parts"][1]["parts"][0] == {"kind": "strided-columns", "stride": 7}
    assert attnreg.Pattern.from_dict(data) == pattern
    assert attnreg.Pattern.from_json(pattern.to_json()) == pattern


@pytest.mark.parametrize(("name", "value"), [("local", -1), ("stride", 0), ("stride", 2.0)])
def test_bad_parameters_are_refused_by_name(name, value):
    with pytest.raises(attnreg.PatternError, match=f"{name}={value!r} is not allowed"):
        attnreg.get_pattern("strided", **{name: value})


def test_passes_the_conformance_suite(attnreg_conformance):
    attnreg_conformance("strided", params={"local": 3, "stride": 4})
