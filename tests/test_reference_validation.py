"""Bad inputs to ``attnreg.attention``: each is an error naming the argument, its value, and what is allowed."""

from __future__ import annotations

import pytest
import torch

import attnreg
from attnreg import AggregatedGlobals, Pattern, PatternError, RelativePositionBias, SelectedGlobals, Window

B, H, N, D = 2, 3, 8, 4
LOCAL = Pattern(window=Window(1, 1))
GLOBALS = Pattern(window=Window(1, 1), selected_globals=SelectedGlobals())
OWN = Pattern(window=Window(1, 1), selected_globals=SelectedGlobals(own_projections=True))
TGLOBAL = Pattern(
    window=Window(1, 1),
    aggregated_globals=AggregatedGlobals(3),
    bias=RelativePositionBias(8, 16),
    aggregated_bias=RelativePositionBias(8, 16),
)


def x(*shape, dtype=torch.float32, device="cpu"):
    return torch.zeros(*shape, dtype=dtype, device=device)


QKV = (x(B, H, N, D), x(B, H, N, D), x(B, H, N, D))
TGLOBAL_INPUTS = {
    "aggregated_kv": (x(B, H, 2, D), x(B, H, 2, D)),
    "bias_weight": x(8, H),
    "aggregated_bias_weight": x(8, H),
}

CASES = {
    "pattern-not-a-pattern": (QKV, "local", {}, "pattern='local'", "expected an attnreg.Pattern"),
    "q-3d": ((x(B, N, D), *QKV[1:]), LOCAL, {}, "q='Tensor(2, 8, 4)'", "(batch, heads, length, head_dim)"),
    "q-int": ((x(B, H, N, D, dtype=torch.long), *QKV[1:]), LOCAL, {}, "q.dtype=torch.int64", "floating dtype"),
    "q-empty": ((x(B, H, 0, D),) * 3, LOCAL, {}, "q.shape=(2, 3, 0, 4)", "at least 1"),
    "k-shape": ((QKV[0], x(B, H, N + 1, D), QKV[2]), LOCAL, {}, "k.shape=(2, 3, 9, 4)", "expected (2, 3, 8, 4)"),
    "v-dtype": ((*QKV[:2], x(B, H, N, D, dtype=torch.float64)), LOCAL, {}, "v.dtype=torch.float64", "q's dtype"),
    "k-device": ((QKV[0], x(B, H, N, D, device="meta"), QKV[2]), LOCAL, {}, "k.device=device(type='meta')", "q's"),
    "v-list": ((*QKV[:2], [[0.0]]), LOCAL, {}, "v=[[0.0]]", "expected a tensor of shape"),
    "mask-shape": (QKV, LOCAL, {"attention_mask": x(B, N + 1, dtype=torch.bool)}, "attention_mask.shape", "(2, 8)"),
    "mask-float": (QKV, LOCAL, {"attention_mask": x(B, N)}, "attention_mask.dtype=torch.float32", "bool"),
    "mask-device": (
        QKV,
        LOCAL,
        {"attention_mask": x(B, N, dtype=torch.bool, device="meta")},
        "attention_mask.device",
        "q's device",
    ),
    "mask-list": (QKV, LOCAL, {"attention_mask": [1] * N}, "attention_mask=[1, 1", "bool tensor of shape (2, 8)"),
    "global-mask-shape": (QKV, GLOBALS, {"global_mask": x(1, N, dtype=torch.bool)}, "global_mask.shape", "(2, 8)"),
    "global-mask-without-globals": (
        QKV,
        LOCAL,
        {"global_mask": x(B, N, dtype=torch.bool)},
        "global_mask",
        "no selected_globals",
    ),
    "global-qkv-without-own-projections": (
        QKV,
        GLOBALS,
        {"global_qkv": QKV},
        "global_qkv",
        "own_projections=True",
    ),
    "global-qkv-pair": (QKV, OWN, {"global_qkv": QKV[:2]}, "global_qkv='tuple'", "(global_q, global_k, global_v)"),
    "global-k-shape": (
        QKV,
        OWN,
        {"global_qkv": (QKV[0], x(B, H, N, D + 1), QKV[2])},
        "global_k.shape=(2, 3, 8, 5)",
        "expected (2, 3, 8, 4)",
    ),
    "aggregated-kv-missing": (QKV, TGLOBAL, {**TGLOBAL_INPUTS, "aggregated_kv": None}, "aggregated_kv", "(2, 3, 2, 4)"),
    "aggregated-kv-unexpected": (
        QKV,
        LOCAL,
        {"aggregated_kv": TGLOBAL_INPUTS["aggregated_kv"]},
        "aggregated_kv",
        "no aggregated_globals",
    ),
    "aggregated-k-count": (
        QKV,
        TGLOBAL,
        {**TGLOBAL_INPUTS, "aggregated_kv": (x(B, H, 3, D), x(B, H, 2, D))},
        "aggregated_k.shape=(2, 3, 3, 4)",
        "expected (2, 3, 2, 4)",
    ),
    "bias-missing": (QKV, TGLOBAL, {**TGLOBAL_INPUTS, "bias_weight": None}, "bias_weight=None", "(8, 3)"),
    "bias-unexpected": (QKV, LOCAL, {"bias_weight": x(8, H)}, "bias_weight='Tensor(8, 3)'", "no such bias term"),
    "bias-shape": (QKV, TGLOBAL, {**TGLOBAL_INPUTS, "bias_weight": x(32, H)}, "bias_weight.shape=(32, 3)", "(8, 3)"),
    "aggregated-bias-heads": (
        QKV,
        TGLOBAL,
        {**TGLOBAL_INPUTS, "aggregated_bias_weight": x(8, H + 1)},
        "aggregated_bias_weight.shape=(8, 4)",
        "expected (8, 3)",
    ),
    "bias-int": (
        QKV,
        TGLOBAL,
        {**TGLOBAL_INPUTS, "bias_weight": x(8, H, dtype=torch.long)},
        "bias_weight.dtype",
        "floating",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_an_error_naming_the_argument_the_value_and_what_is_allowed(case):
    qkv, pattern, inputs, named, allowed = CASES[case]
    with pytest.raises(PatternError) as error:
        attnreg.attention(*qkv, pattern, backend="reference", **inputs)
    message = str(error.value)
    assert named in message
    assert allowed in message
    assert "is not allowed" in message


def test_integer_masks_are_taken_as_zero_one():
    q = torch.randn(1, 1, 4, 2)
    as_int = attnreg.attention(q, q, q, LOCAL, attention_mask=torch.tensor([[1, 1, 0, 1]]), backend="reference")
    as_bool = attnreg.attention(q, q, q, LOCAL, attention_mask=torch.tensor([[1, 1, 0, 1]]).bool(), backend="reference")
    torch.testing.assert_close(as_int, as_bool)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"length": 0}, "length=0"),
        ({"length": 4, "attention_mask": torch.ones(1, 5, dtype=torch.bool)}, "attention_mask=(1, 5)"),
        ({"length": 4, "global_mask": torch.ones(4, dtype=torch.bool)}, "global_mask=(4,)"),
    ],
)
def test_materialize_rejects_bad_lengths_and_masks(kwargs, named):
    with pytest.raises(PatternError, match="is not allowed") as error:
        GLOBALS.materialize(**kwargs)
    assert named in str(error.value)


def test_materialize_rejects_global_tokens_for_a_pattern_without_them():
    with pytest.raises(PatternError, match="no selected_globals"):
        LOCAL.materialize(4, global_mask=torch.tensor([[False, True, False, False]]))


def test_global_projections_without_a_global_mask_are_an_error():
    q = torch.randn(1, 2, 6, 4)
    pattern = attnreg.Pattern(selected_globals=attnreg.SelectedGlobals(own_projections=True))
    with pytest.raises(attnreg.PatternError, match=r"global_qkv=.* needs a global_mask"):
        attnreg.attention(q, q, q, pattern, global_qkv=(q, q, q))


def test_a_bias_table_in_another_dtype_than_q_or_float32_is_an_error():
    q = torch.randn(1, 2, 6, 4)
    pattern = attnreg.Pattern(window=attnreg.Window(1, 1), bias=attnreg.RelativePositionBias())
    with pytest.raises(attnreg.PatternError, match=r"bias_weight\.dtype=torch\.float64 is not allowed"):
        attnreg.attention(q, q, q, pattern, bias_weight=torch.zeros(32, 2, dtype=torch.float64))


def test_attention_weights_takes_no_backend():
    q = torch.randn(1, 2, 6, 4)
    with pytest.raises(attnreg.PatternError, match="backend='blocked' is not allowed"):
        attnreg.attention_weights(q, q, q, attnreg.Pattern(), backend="blocked")
