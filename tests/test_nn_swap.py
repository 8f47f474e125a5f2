"""``MultiheadPatternAttention`` and ``attnreg.swap``: MHA's weights and results kept, the pattern applied, errors."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnreg
from attnreg import AggregatedGlobals, Pattern, PatternError, SelectedGlobals, Window
from attnreg.nn import MultiheadPatternAttention

EMBED, HEADS, LENGTH, BATCH = 16, 4, 11, 2


def _encoder(seed: int = 0, *, batch_first: bool = True) -> nn.TransformerEncoder:
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(EMBED, HEADS, dim_feedforward=32, dropout=0.0, batch_first=batch_first)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=True).eval()


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    x = torch.randn(BATCH, LENGTH, EMBED)
    padding = torch.zeros(BATCH, LENGTH, dtype=torch.bool)
    padding[1, -3:] = True
    return x, padding


@pytest.fixture(params=[False, True], ids=["fastpath-off", "fastpath-on"])
def fastpath(request):
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(request.param)
    yield request.param
    torch.backends.mha.set_fastpath_enabled(before)


def test_full_window_keeps_encoder_outputs(fastpath):
    x, padding = _inputs()
    model = _encoder()
    with torch.no_grad():
        expected = model(x, src_key_padding_mask=padding)
        attnreg.swap(model, Pattern(window=None))
        got = model(x, src_key_padding_mask=padding)
    assert all(isinstance(layer.self_attn, MultiheadPatternAttention) for layer in model.layers)
    real = ~padding
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


def test_swap_keeps_state_dict_keys_and_values():
    model = _encoder()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attnreg.swap(model, Pattern(window=Window(2, 2)))
    after = model.state_dict()
    assert set(after) == set(before)
    for key, value in before.items():
        torch.testing.assert_close(after[key], value)


def _masked_mha_reference(mha: nn.MultiheadAttention, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """MHA itself with the pattern's allowed matrix as a per-example mask: the dense expectation."""
    mask = (~allowed).repeat_interleave(mha.num_heads, dim=0)
    return mha(x, x, x, attn_mask=mask, need_weights=False)[0]


@pytest.mark.parametrize(
    "pattern",
    [Pattern(window=Window(2, 1)), Pattern(window=Window.causal(3)), Pattern(window=Window(1, 1), scale=0.5)],
    ids=["window-2-1", "causal-3", "scale"],
)
def test_narrow_window_matches_masked_mha(pattern):
    x, padding = _inputs()
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(EMBED, HEADS, batch_first=True).eval()
    layer = attnreg.nn.from_multihead(mha, pattern)
    allowed = pattern.materialize(LENGTH, ~padding).allowed
    if pattern.scale is not None:  # MHA scales by 1/sqrt(head_dim); fold the pattern's scale into q
        with torch.no_grad():
            mha.in_proj_weight[:EMBED] *= pattern.scale * (EMBED // HEADS) ** 0.5
            mha.in_proj_bias[:EMBED] *= pattern.scale * (EMBED // HEADS) ** 0.5
    with torch.no_grad():
        expected = _masked_mha_reference(mha, x, allowed)
        got, _ = layer(x, x, x, key_padding_mask=padding, need_weights=False)
        full, _ = attnreg.nn.from_multihead(mha, Pattern())(x, x, x, key_padding_mask=padding, need_weights=False)
    real = ~padding
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[real], full[real], atol=1e-3)


def test_need_weights_averages_like_mha():
    x, padding = _inputs()
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(EMBED, HEADS, batch_first=True).eval()
    layer = attnreg.nn.from_multihead(mha, Pattern(), dense_weights=True)
    with torch.no_grad():
        out, weights = layer(x, x, x, key_padding_mask=padding)
        ref_out, ref_weights = mha(x, x, x, key_padding_mask=padding)
        _, per_head = layer(x, x, x, key_padding_mask=padding, average_attn_weights=False)
    real = ~padding
    assert weights.shape == ref_weights.shape and per_head.shape == (BATCH, HEADS, LENGTH, LENGTH)
    torch.testing.assert_close(weights[real], ref_weights[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[real], ref_out[real], atol=1e-5, rtol=1e-5)


def test_sequence_first_module_is_supported():
    x, padding = _inputs()
    model = _encoder(batch_first=False)
    xt = x.transpose(0, 1)
    with torch.no_grad():
        expected = model(xt, src_key_padding_mask=padding)
        got = attnreg.swap(model, Pattern())(xt, src_key_padding_mask=padding)
    real = (~padding).T
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


def test_causal_mask_accepted_with_causal_pattern():
    x, _ = _inputs()
    model = _encoder()
    mask = nn.Transformer.generate_square_subsequent_mask(LENGTH)
    with torch.no_grad():
        expected = model(x, mask=mask, is_causal=True)
        got = attnreg.swap(model, Pattern(window=Window.causal(None)))(x, mask=mask, is_causal=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_selected_globals_with_own_projections_run():
    x, padding = _inputs()
    pattern = Pattern(window=Window(1, 1), selected_globals=SelectedGlobals(own_projections=True))
    layer = MultiheadPatternAttention(EMBED, HEADS, pattern, dense_weights=True).eval()
    global_mask = torch.zeros(BATCH, LENGTH, dtype=torch.bool)
    global_mask[0, 0] = global_mask[1, 4] = True
    with torch.no_grad():
        fast, _ = layer(x, x, x, key_padding_mask=padding, need_weights=False, global_mask=global_mask)
        dense, weights = layer(x, x, x, key_padding_mask=padding, global_mask=global_mask)
    torch.testing.assert_close(fast, dense)
    assert bool((weights[0, 5, 0] > 0).all()) and bool((weights[1, :8, 4] > 0).all())
    assert layer.global_in_proj_weight is not None


def test_pattern_parts_add_their_parameters():
    pattern = Pattern(
        window=Window(2, 2),
        aggregated_globals=attnreg.AggregatedGlobals(4),
        bias=attnreg.RelativePositionBias(8, 16),
        aggregated_bias=attnreg.RelativePositionBias(8, 16),
    )
    layer = MultiheadPatternAttention(EMBED, HEADS, pattern)
    names = {name for name, _ in layer.named_parameters()}
    assert {"relative_attention_bias", "aggregated_attention_bias", "aggregated_norm.weight"} <= names
    x, padding = _inputs()
    out, _ = layer(x, x, x, key_padding_mask=padding, need_weights=False)
    out.sum().backward()
    assert layer.relative_attention_bias.grad is not None and torch.isfinite(out).all()


def test_swap_by_registered_name_rejects_params_with_pattern_object():
    with pytest.raises(PatternError, match="pattern_params"):
        attnreg.swap(_encoder(), Pattern(), window=3)


@pytest.mark.parametrize(
    ("mha", "message"),
    [
        (nn.MultiheadAttention(EMBED, HEADS, kdim=8, vdim=8, batch_first=True), "cross-attention"),
        (nn.MultiheadAttention(EMBED, HEADS, add_bias_kv=True, batch_first=True), "add_bias_kv"),
        (nn.MultiheadAttention(EMBED, HEADS, add_zero_attn=True, batch_first=True), "add_zero_attn"),
    ],
    ids=["kdim", "bias_kv", "zero_attn"],
)
def test_unswappable_modules_are_refused(mha, message):
    with pytest.raises(PatternError, match=message):
        attnreg.swap(nn.Sequential(mha), Pattern())


def test_cross_attention_call_is_refused():
    layer = MultiheadPatternAttention(EMBED, HEADS, Pattern())
    x, _ = _inputs()
    with pytest.raises(PatternError, match="self-attention"):
        layer(x, x.clone(), x.clone())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attn_mask": torch.zeros(LENGTH, LENGTH, dtype=torch.bool)}, "not causal"),
        ({"is_causal": True, "attn_mask": None}, "not causal"),
    ],
    ids=["any-mask", "causal-hint"],
)
def test_masks_that_conflict_with_a_bidirectional_pattern_are_refused(kwargs, message):
    layer = MultiheadPatternAttention(EMBED, HEADS, Pattern(window=Window(2, 2)))
    x, _ = _inputs()
    with pytest.raises(PatternError, match=message):
        layer(x, x, x, need_weights=False, **kwargs)


def test_non_causal_attn_mask_with_causal_pattern_is_refused():
    layer = MultiheadPatternAttention(EMBED, HEADS, Pattern(window=Window.causal(2)))
    x, _ = _inputs()
    mask = torch.zeros(LENGTH, LENGTH, dtype=torch.bool)
    mask[0, 1] = True
    with pytest.raises(PatternError, match="plain causal mask"):
        layer(x, x, x, attn_mask=mask, need_weights=False)


def test_float_padding_mask_with_biases_is_refused():
    layer = MultiheadPatternAttention(EMBED, HEADS, Pattern())
    x, _ = _inputs()
    with pytest.raises(PatternError, match="0 and -inf"):
        layer(x, x, x, key_padding_mask=torch.full((BATCH, LENGTH), 0.5), need_weights=False)


def test_swap_keeps_each_modules_attention_dropout_unless_overridden():
    """What training then does with it is tests/test_dropout_policy.py's subject."""
    model = _encoder()
    model.layers[0].self_attn.dropout = 0.1
    attnreg.swap(model, Pattern())
    assert [layer.self_attn.dropout for layer in model.layers] == [0.1, 0.0]
    overridden = attnreg.swap(_encoder(), Pattern(), dropout=0.2)
    assert [layer.self_attn.dropout for layer in overridden.layers] == [0.2, 0.2]


def test_an_attention_dropout_outside_zero_to_one_is_refused_naming_the_module():
    model = _encoder()
    model.layers[1].self_attn.dropout = 1.0
    with pytest.raises(PatternError, match=r"layers\.1\.self_attn\.dropout=1\.0 is not allowed"):
        attnreg.swap(model, Pattern())


def test_weights_in_training_are_the_dropped_ones_the_output_comes_from():
    """As MHA's: ``need_weights=True`` in training returns the weights after dropout, which the output is made of."""
    x, padding = _inputs()
    torch.manual_seed(0)
    pattern = Pattern(window=Window(2, 1))
    layer = MultiheadPatternAttention(EMBED, HEADS, pattern, dropout=0.5, dense_weights=True).train()
    out, weights = layer(x, x, x, key_padding_mask=padding, average_attn_weights=False)
    v = F.linear(x, layer.in_proj_weight[2 * EMBED :], layer.in_proj_bias[2 * EMBED :])
    v = v.unflatten(-1, (HEADS, EMBED // HEADS)).transpose(1, 2)
    expected = layer.out_proj((weights @ v).transpose(1, 2).flatten(2))
    real = ~padding
    torch.testing.assert_close(out[real], expected[real], atol=1e-5, rtol=1e-5)
    allowed = Pattern(window=Window(2, 1)).materialize(LENGTH, real).allowed[:, None].expand_as(weights)
    assert bool((weights[allowed] == 0).any()) and bool((weights[~allowed] == 0).all())


def test_a_pinned_backend_reaches_the_layer_and_weights_are_refused_under_it(monkeypatch):
    layer = MultiheadPatternAttention(EMBED, HEADS, Pattern(window=Window(1, 1)), dense_weights=True)
    x, _ = _inputs()
    blocked = type(attnreg.get_registry().engine("blocked"))
    monkeypatch.setattr(blocked, "unsupported_reasons", lambda self, call: ["planted"])
    with attnreg.backend("blocked"):
        with pytest.raises(attnreg.BackendUnavailableError, match="backend='blocked' cannot run this call: planted"):
            layer(x, x, x, need_weights=False)
        refusal = r"need_weights=True is not allowed: False inside attnreg.backend\(\('blocked',\)\): with dense"
        with pytest.raises(attnreg.PatternError, match=refusal):
            layer(x, x, x)


def test_include_leaves_other_modules_alone():
    model = nn.ModuleDict({"a": nn.MultiheadAttention(EMBED, HEADS), "b": nn.MultiheadAttention(EMBED, HEADS)})
    attnreg.swap(model, Pattern(), include=lambda name, module: name == "a")
    assert isinstance(model["a"], MultiheadPatternAttention) and type(model["b"]) is nn.MultiheadAttention


def test_a_lone_module_or_a_model_without_attention_is_refused():
    with pytest.raises(PatternError, match="from_multihead"):
        attnreg.swap(nn.MultiheadAttention(EMBED, HEADS), Pattern())
    with pytest.raises(PatternError, match="at least one"):
        attnreg.swap(nn.Linear(2, 2), Pattern())


def test_mha_state_dict_loads_into_the_adapter():
    mha = nn.MultiheadAttention(EMBED, HEADS, batch_first=True)
    layer = MultiheadPatternAttention(EMBED, HEADS, Pattern(window=Window(1, 1)))
    layer.load_state_dict(mha.state_dict())
    torch.testing.assert_close(layer.in_proj_weight, mha.in_proj_weight)
    mha.load_state_dict(layer.state_dict())


def test_gradients_match_masked_mha_on_real_positions():
    x, padding = _inputs()
    pattern = Pattern(window=Window(2, 1))
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(EMBED, HEADS, batch_first=True)
    layer = attnreg.nn.from_multihead(mha, pattern)
    allowed = pattern.materialize(LENGTH, ~padding).allowed
    real = (~padding)[..., None]
    (_masked_mha_reference(mha, x, allowed) * real).square().sum().backward()
    (layer(x, x, x, key_padding_mask=padding, need_weights=False)[0] * real).square().sum().backward()
    for name in ("in_proj_weight", "in_proj_bias"):
        torch.testing.assert_close(getattr(layer, name).grad, getattr(mha, name).grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.out_proj.weight.grad, mha.out_proj.weight.grad, atol=1e-5, rtol=1e-4)


def test_bfloat16_runs_without_nan_close_to_float32():
    x, padding = _inputs()
    torch.manual_seed(0)
    layer = MultiheadPatternAttention(EMBED, HEADS, Pattern(window=Window(2, 2))).eval()
    with torch.no_grad():
        full, _ = layer(x, x, x, key_padding_mask=padding, need_weights=False)
        half, _ = layer.to(torch.bfloat16)(*(x.bfloat16(),) * 3, key_padding_mask=padding, need_weights=False)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), full, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize(
    "pattern",
    [
        Pattern(window=Window.causal(None), selected_globals=SelectedGlobals()),
        Pattern(window=Window.causal(None), aggregated_globals=AggregatedGlobals(2)),
    ],
    ids=["selected-globals", "aggregated-globals"],
)
def test_causal_mask_is_refused_for_a_causal_window_with_global_tokens(pattern):
    """Global tokens look ahead, so such a pattern is not causal and a causal mask cannot be honoured."""
    model = _encoder()
    mask = nn.Transformer.generate_square_subsequent_mask(LENGTH)
    x, _ = _inputs()
    with pytest.raises(PatternError, match="is not causal"):
        attnreg.swap(model, pattern)(x, mask=mask, is_causal=True)


def test_mhas_default_arguments_run_the_fast_engine_and_say_once_that_there_are_no_weights(caplog):
    """MHA's default ``need_weights=True`` must not send the output to the O(length²) reference engine."""
    mha = nn.Sequential(nn.MultiheadAttention(EMBED, HEADS, batch_first=True))
    layer = attnreg.swap(mha, Pattern(window=Window(1, 1)))[0]
    x, _ = _inputs()
    warned = pytest.warns(UserWarning, match="dense_weights=True")
    with caplog.at_level(logging.DEBUG, logger="attnreg"), warned as said:
        out, weights = layer(x, x, x)
        layer(x, x, x)
    assert weights is None and len(said) == 1
    assert all("reference" not in message for message in caplog.messages) and caplog.messages
    expected, _ = layer(x, x, x, need_weights=False)
    torch.testing.assert_close(out, expected)


def test_dense_weights_is_an_opt_in_on_swap():
    mha = nn.Sequential(nn.MultiheadAttention(EMBED, HEADS, batch_first=True))
    model = attnreg.swap(mha, Pattern(), dense_weights=True)
    x, _ = _inputs()
    with torch.no_grad():
        _, weights = model[0](x, x, x)
    assert weights.shape == (BATCH, LENGTH, LENGTH)
    with pytest.raises(PatternError, match="dense_weights=1 is not allowed: expected True or False"):
        MultiheadPatternAttention(EMBED, HEADS, Pattern(), dense_weights=1)
