"""The dispatcher: the cheapest engine that supports the call runs; an explicit backend that cannot is an error."""

from __future__ import annotations

import pytest
import torch
from pattern_cases import PATTERNS, case_inputs, run

import attnreg
from attnreg.execution import choose, judge, make_call


def _call(name: str, length: int, **kwargs):
    inputs = case_inputs(name, length, **kwargs)
    return make_call(inputs.pop("q"), inputs.pop("k"), inputs.pop("v"), PATTERNS[name], **inputs)


def _zeros_call(name: str, length: int, *, heads: int = 8, head_dim: int = 64):
    """A call with the sizes of a real layer at ``length``, its tensors free expanded zeros."""
    pattern = PATTERNS[name]
    shape = (1, heads, length, head_dim)
    zeros = torch.zeros(()).expand(*shape)
    extras = {}
    if pattern.aggregated_globals is not None:
        count = pattern.aggregated_count(length)
        extras["aggregated_kv"] = (torch.zeros(()).expand(1, heads, count, head_dim),) * 2
    if pattern.bias is not None:
        extras["bias_weight"] = torch.zeros(pattern.bias.num_buckets, heads)
    if pattern.aggregated_bias is not None:
        extras["aggregated_bias_weight"] = torch.zeros(pattern.aggregated_bias.num_buckets, heads)
    return make_call(zeros, zeros, zeros, pattern, **extras)


def _engines():
    return attnreg.get_registry().engines()


@pytest.mark.parametrize("name", ["local-bias", "tglobal"])
def test_short_sequences_run_dense_sdpa(name: str) -> None:
    assert choose(_zeros_call(name, 128), _engines()).name == "dense-sdpa"


@pytest.mark.parametrize("name", ["local-bias", "tglobal", "window-only"])
def test_long_sequences_never_run_a_quadratic_engine(name: str) -> None:
    chosen = choose(_zeros_call(name, 16384), _engines()).name
    assert chosen not in ("dense-sdpa", "reference")


def test_reference_is_never_the_automatic_choice() -> None:
    for length in (1, 64, 4096):
        assert choose(_zeros_call("tglobal", length), _engines()).name != "reference"


def test_judge_lists_every_engine_supported_first_by_cost_reference_last() -> None:
    verdicts = judge(_call("local-bias", 19), _engines())
    assert {v.engine.name for v in verdicts} == {e.name for e in _engines()}
    supported = [v for v in verdicts if v.supported]
    assert all(v.supported for v in verdicts[: len(supported)])
    assert supported[-1].engine.name == "reference"
    assert [v.cost for v in supported[:-1]] == sorted(v.cost for v in supported[:-1])


def test_automatic_choice_matches_reference() -> None:
    inputs = case_inputs("tglobal", 19)
    q, k, v = inputs.pop("q"), inputs.pop("k"), inputs.pop("v")
    out = attnreg.attention(q, k, v, PATTERNS["tglobal"], **inputs)
    expected = run({"q": q, "k": k, "v": v, **inputs}, PATTERNS["tglobal"], "reference")
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_asking_for_an_engine_that_cannot_run_says_why() -> None:
    with pytest.raises(attnreg.BackendUnavailableError, match=r"backend='xformers' cannot run this call: .*device is"):
        choose(_call("local-bias", 19), _engines(), "xformers")


def test_asking_for_an_unknown_engine_lists_the_known_ones() -> None:
    with pytest.raises(attnreg.BackendUnavailableError, match=r"known engines are .*dense-sdpa"):
        choose(_call("local-bias", 19), _engines(), "nope")
