"""``Pattern`` as a value: validation at construction, dict/JSON/pickle round trips, repr, equality, and cost."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from attnreg import AggregatedGlobals, Pattern, PatternError, RelativePositionBias, SelectedGlobals, Window

PATTERNS = [
    Pattern(),
    Pattern(window=Window(3, 3)),
    Pattern(window=Window(None, 0), scale=1.0),
    Pattern(window=Window(2, None), selected_globals=SelectedGlobals(own_projections=True)),
    Pattern(
        window=Window(4, 4),
        aggregated_globals=AggregatedGlobals(8),
        bias=RelativePositionBias(32, 128, True),
        aggregated_bias=RelativePositionBias(16, 64, False),
        scale=1,
    ),
]


@pytest.mark.parametrize(
    ("make", "name", "value", "allowed"),
    [
        (lambda: Window(-1, 2), "Window.left", "-1", "int >= 0"),
        (lambda: Window(1, -3), "Window.right", "-3", "int >= 0"),
        (lambda: Window(True, 1), "Window.left", "True", "int >= 0"),
        (lambda: Window(1.5, 1), "Window.left", "1.5", "int >= 0"),
        (lambda: Window("2", 1), "Window.left", "'2'", "int >= 0"),
        (lambda: SelectedGlobals(own_projections=1), "SelectedGlobals.own_projections", "1", "bool"),
        (lambda: AggregatedGlobals(0), "AggregatedGlobals.global_block_size", "0", "int >= 1"),
        (lambda: AggregatedGlobals(False), "AggregatedGlobals.global_block_size", "False", "int >= 1"),
        (lambda: RelativePositionBias(num_buckets=3), "RelativePositionBias.num_buckets", "3", "int >= 4"),
        (lambda: RelativePositionBias(1, 8, False), "RelativePositionBias.num_buckets", "1", "int >= 2"),
        (lambda: RelativePositionBias(32, 0), "RelativePositionBias.max_distance", "0", "int >= 1"),
        (lambda: RelativePositionBias(32, 8), "RelativePositionBias.max_distance", "8", "exceed the 8 exact buckets"),
        (lambda: RelativePositionBias(bidirectional=1), "RelativePositionBias.bidirectional", "1", "bool"),
        (lambda: Pattern(window=(1, 1)), "Pattern.window", "(1, 1)", "Window"),
        (lambda: Pattern(selected_globals=True), "Pattern.selected_globals", "True", "SelectedGlobals"),
        (lambda: Pattern(aggregated_globals=8), "Pattern.aggregated_globals", "8", "AggregatedGlobals"),
        (lambda: Pattern(bias=Window(1, 1)), "Pattern.bias", "Window(left=1, right=1)", "RelativePositionBias"),
        (
            lambda: Pattern(aggregated_bias=RelativePositionBias()),
            "Pattern.aggregated_bias",
            "RelativePositionBias(",
            "needs aggregated_globals",
        ),
        (lambda: Pattern(scale=0), "Pattern.scale", "0", "finite number > 0"),
        (lambda: Pattern(scale=-1.0), "Pattern.scale", "-1.0", "finite number > 0"),
        (lambda: Pattern(scale=float("inf")), "Pattern.scale", "inf", "finite number > 0"),
        (lambda: Pattern(scale=float("nan")), "Pattern.scale", "nan", "finite number > 0"),
        (lambda: Pattern(scale=True), "Pattern.scale", "True", "finite number > 0"),
        (lambda: Pattern(scale="1"), "Pattern.scale", "'1'", "finite number > 0"),
    ],
)
def test_a_bad_parameter_is_an_error_naming_it_its_value_and_what_is_allowed(make, name, value, allowed):
    with pytest.raises(PatternError) as error:
        make()
    message = str(error.value)
    assert name in message
    assert value in message
    assert allowed in message


@pytest.mark.parametrize(
    ("data", "where", "unknown"),
    [
        ({"window": {"left": 1, "right": 1}, "radius": 3}, "Pattern.from_dict", "'radius'"),
        ({"window": {"left": 1, "right": 1, "causal": True}}, "Pattern.from_dict['window']", "'causal'"),
        ({"bias": {"buckets": 32}}, "Pattern.from_dict['bias']", "'buckets'"),
    ],
)
def test_from_dict_rejects_unknown_keys(data, where, unknown):
    with pytest.raises(PatternError, match="unknown parameter") as error:
        Pattern.from_dict(data)
    assert where in str(error.value)
    assert unknown in str(error.value)


@pytest.mark.parametrize("data", [[("window", None)], {"window": [1, 1]}])
def test_from_dict_rejects_non_mappings(data):
    with pytest.raises(PatternError, match="expected a mapping"):
        Pattern.from_dict(data)


def test_from_dict_checks_the_values_it_rebuilds():
    with pytest.raises(PatternError, match=r"Window\.left=-2"):
        Pattern.from_dict({"window": {"left": -2, "right": 0}})


@pytest.mark.parametrize("pattern", PATTERNS, ids=repr)
def test_round_trips_through_dict_json_and_pickle(pattern):
    assert Pattern.from_dict(pattern.to_dict()) == pattern
    assert Pattern.from_json(pattern.to_json()) == pattern
    assert Pattern.from_dict(json.loads(json.dumps(pattern.to_dict()))) == pattern
    assert pickle.loads(pickle.dumps(pattern)) == pattern


@pytest.mark.parametrize("pattern", PATTERNS, ids=repr)
def test_to_dict_is_plain_data(pattern):
    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        return value is None or isinstance(value, (bool, int, float))

    assert plain(pattern.to_dict())


def test_repr_names_only_the_parts_present():
    pattern = Pattern(window=Window(2, 0), scale=1)
    assert repr(pattern) == "Pattern(window=Window(left=2, right=0), scale=1.0)"
    assert repr(Pattern()) == "Pattern()"


@pytest.mark.parametrize("pattern", PATTERNS, ids=repr)
def test_repr_evaluates_back_to_an_equal_pattern(pattern):
    namespace = {
        cls.__name__: cls for cls in (Pattern, Window, SelectedGlobals, AggregatedGlobals, RelativePositionBias)
    }
    assert eval(repr(pattern), namespace) == pattern


def test_patterns_compare_and_hash_by_value():
    first = Pattern(window=Window(3, 3), scale=1)
    second = Pattern(window=Window.symmetric(3), scale=1.0)
    assert first == second
    assert hash(first) == hash(second)
    assert len({first, second}) == 1
    assert first != Pattern(window=Window(3, 2), scale=1.0)
    assert first != Pattern(window=Window(3, 3))


def test_patterns_are_frozen():
    with pytest.raises(AttributeError):
        Pattern().scale = 2.0


def _first_globals(length: int, count: int) -> torch.Tensor:
    return (torch.arange(length) < count)[None, :]


@pytest.mark.parametrize(
    "pattern",
    [
        Pattern(),
        Pattern(window=Window(0, 0)),
        Pattern(window=Window(3, 3)),
        Pattern(window=Window(5, 0)),
        Pattern(window=Window(0, 7)),
        Pattern(window=Window(None, 2)),
        Pattern(window=Window(2, 1), selected_globals=SelectedGlobals()),
        Pattern(window=Window(4, 4), aggregated_globals=AggregatedGlobals(3)),
        Pattern(selected_globals=SelectedGlobals(), aggregated_globals=AggregatedGlobals(5)),
    ],
    ids=repr,
)
@pytest.mark.parametrize("length", [1, 2, 6, 13, 40])
def test_cost_counts_the_allowed_pairs_of_the_materialised_pattern(pattern, length):
    for num_globals in [0, 1, 3, length] if pattern.selected_globals else [0]:
        num_globals = min(num_globals, length)
        layout = pattern.materialize(length, global_mask=_first_globals(length, num_globals))
        cost = pattern.cost(length, num_globals=num_globals, head_dim=8, num_heads=2)
        pairs = int(layout.allowed.sum())
        assert cost.allowed_pairs == pairs
        assert cost.flops == 4 * pairs * 8 * 2
        assert cost.density == pytest.approx(pairs / layout.allowed[0].numel())
        assert cost.length == length


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"length": 0}, "length=0"), ({"length": 4, "num_globals": 5}, "num_globals=5"), ({"length": 4.0}, "length")],
)
def test_cost_rejects_bad_arguments(kwargs, name):
    with pytest.raises(PatternError, match=name):
        Pattern(selected_globals=SelectedGlobals()).cost(**kwargs)


def test_cost_rejects_globals_for_a_pattern_without_them():
    with pytest.raises(PatternError, match="no selected_globals"):
        Pattern(window=Window(1, 1)).cost(8, num_globals=1)


@pytest.mark.parametrize(
    ("make", "unknown"),
    [
        (lambda: Pattern(radius=3), "radius"),
        (lambda: Window(1, 1, causal=True), "causal"),
        (lambda: AggregatedGlobals(global_block=4), "global_block"),
        (lambda: RelativePositionBias(buckets=32), "buckets"),
    ],
)
def test_an_unknown_constructor_parameter_is_an_error_naming_it(make, unknown):
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{unknown}'"):
        make()
