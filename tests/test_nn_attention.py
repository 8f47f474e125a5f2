"""``PatternAttention``'s native call, ``attn(x, attention_mask, global_mask) -> output``, in attnreg's conventions.

True = real token in ``attention_mask`` (no inversion anywhere), the output alone, batch first; the
``nn.MultiheadAttention`` call is the adapter's (tests/test_nn_swap.py), which gives the same output.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnreg
from attnreg import AggregatedGlobals, Pattern, PatternAttention, PatternError, SelectedGlobals, Window
from attnreg.nn import MultiheadPatternAttention

EMBED, HEADS, LENGTH, BATCH = 16, 4, 11, 2

PATTERNS = {
    "window": Pattern(window=Window(2, 1)),
    "causal": Pattern(window=Window.causal(3)),
    "globals": Pattern(window=Window(1, 1), selected_globals=SelectedGlobals(own_projections=True)),
    "aggregated-and-biases": Pattern(
        window=Window(2, 2),
        aggregated_globals=AggregatedGlobals(4),
        bias=attnreg.RelativePositionBias(8, 16),
        aggregated_bias=attnreg.RelativePositionBias(8, 16),
    ),
}


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states, the real tokens (True = real; example 1 ends in padding) and two global tokens."""
    torch.manual_seed(seed)
    x = torch.randn(BATCH, LENGTH, EMBED)
    real = torch.ones(BATCH, LENGTH, dtype=torch.bool)
    real[1, -3:] = False
    global_mask = torch.zeros(BATCH, LENGTH, dtype=torch.bool)
    global_mask[0, 0] = global_mask[1, 4] = True
    return x, real, global_mask


def _randomised(layer: PatternAttention) -> PatternAttention:
    """``layer`` with every parameter random, so that zero-initialised bias tables take part."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.normal_(std=0.3)
    return layer.eval()


def _globals_for(pattern: Pattern, global_mask: torch.Tensor) -> torch.Tensor | None:
    return global_mask if pattern.selected_globals is not None else None


@pytest.mark.parametrize("name", PATTERNS)
def test_native_call_equals_the_adapter_with_pytorchs_padding_mask(name):
    pattern = PATTERNS[name]
    native = _randomised(PatternAttention(EMBED, HEADS, pattern))
    adapter = MultiheadPatternAttention(EMBED, HEADS, pattern).eval()
    adapter.load_state_dict(native.state_dict())
    x, real, global_mask = _inputs()
    global_mask = _globals_for(pattern, global_mask)
    with torch.no_grad():
        got = native(x, real, global_mask)
        expected, weights = adapter(x, x, x, key_padding_mask=~real, need_weights=False, global_mask=global_mask)
    assert weights is None and got.shape == (BATCH, LENGTH, EMBED)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


@pytest.mark.parametrize("name", PATTERNS)
def test_native_call_equals_the_reference_engine(name):
    pattern = PATTERNS[name]
    layer = _randomised(PatternAttention(EMBED, HEADS, pattern))
    x, real, global_mask = _inputs()
    global_mask = _globals_for(pattern, global_mask)
    with torch.no_grad():
        fast = layer(x, real, global_mask)
        with attnreg.backend("reference"):
            reference = layer(x, real, global_mask)
    torch.testing.assert_close(fast[real], reference[real], atol=1e-5, rtol=1e-5)


def test_true_marks_real_tokens_as_masked_mha_sees_them():
    """The dense expectation: MHA with the same weights, keys outside the pattern or padded masked out."""
    pattern = PATTERNS["window"]
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(EMBED, HEADS, batch_first=True).eval()
    layer = PatternAttention(EMBED, HEADS, pattern).eval()
    layer.load_state_dict(mha.state_dict())
    x, real, _ = _inputs()
    blocked = (~pattern.materialize(LENGTH, real).allowed).repeat_interleave(HEADS, dim=0)
    with torch.no_grad():
        expected = mha(x, x, x, attn_mask=blocked, need_weights=False)[0]
        got = layer(x, real)
        inverted = layer(x, ~real)
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(inverted[1, :-3], expected[1, :-3], atol=1e-3)


def test_an_integer_mask_of_ones_and_zeros_is_the_bool_one():
    layer = PatternAttention(EMBED, HEADS, PATTERNS["window"]).eval()
    x, real, _ = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(layer(x, real.long()), layer(x, real), atol=0, rtol=0)


def test_no_mask_means_every_token_is_real():
    layer = PatternAttention(EMBED, HEADS, PATTERNS["window"]).eval()
    x, _, _ = _inputs()
    everything = torch.ones(BATCH, LENGTH, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer(x, everything), atol=0, rtol=0)


def test_gradients_reach_every_parameter_through_the_native_call():
    pattern = PATTERNS["globals"]
    layer = PatternAttention(EMBED, HEADS, pattern)
    x, real, global_mask = _inputs()
    (layer(x, real, global_mask) * real[..., None]).square().sum().backward()
    missing = [name for name, parameter in layer.named_parameters() if parameter.grad is None]
    assert not missing


def test_mhas_call_on_the_native_module_names_the_adapter():
    layer = PatternAttention(EMBED, HEADS, PATTERNS["window"])
    x, _, _ = _inputs()
    with pytest.raises(PatternError, match=r"attention_mask\.shape=\(2, 11, 16\) is not allowed: .*MultiheadPattern"):
        layer(x, x, x)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.randn(LENGTH, EMBED), r"x\.shape=\(11, 16\) is not allowed: expected \(batch, length, 16\)"),
        (torch.randn(BATCH, LENGTH, EMBED + 1), r"x\.shape=\(2, 11, 17\) is not allowed"),
    ],
    ids=["unbatched", "wrong-width"],
)
def test_inputs_of_the_wrong_shape_are_refused_naming_x(x, message):
    with pytest.raises(PatternError, match=message):
        PatternAttention(EMBED, HEADS, PATTERNS["window"])(x)


def test_a_float_mask_is_refused():
    layer = PatternAttention(EMBED, HEADS, PATTERNS["window"])
    x, real, _ = _inputs()
    with pytest.raises(PatternError, match=r"attention_mask\.dtype"):
        layer(x, real.float())


def test_the_native_module_has_no_mha_options():
    """``batch_first`` and ``dense_weights`` are the adapter's: MHA's layout and weights are not the native call's."""
    with pytest.raises(TypeError, match="dense_weights"):
        PatternAttention(EMBED, HEADS, Pattern(), dense_weights=True)
    assert not hasattr(PatternAttention(EMBED, HEADS, Pattern()), "batch_first")
