"""The drop-in layer against transformers' ``LongformerSelfAttention`` on the same weights, as the encoder calls it."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
import transformers
from attnreg_longformer import LongformerSelfAttention
from attnreg_longformer.probs import transformers_probs
from longformer_helpers import layer_inputs
from transformers.models.longformer import modeling_longformer

import attnreg
from attnreg import SelectedGlobals
from attnreg.testing.dropout import inject_keep_flags, torch_dropout_keeps

WINDOW = 4  # one-sided 2; transformers' layer needs lengths that are multiples of 2 * 2


def layer_pair(dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, torch.nn.Module]:
    config = transformers.LongformerConfig(
        hidden_size=16, num_attention_heads=2, attention_window=[WINDOW], attention_probs_dropout_prob=0.1
    )
    torch.manual_seed(0)
    theirs = modeling_longformer.LongformerSelfAttention(config, layer_id=0).to(dtype).eval()
    ours = LongformerSelfAttention(config, layer_id=0).to(dtype).eval()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


CASES = {
    "local-only": ([8, 8], [[], []]),
    "padding": ([8, 5], [[], []]),
    "one-global": ([8, 8], [[0], [0]]),
    "per-example-globals": ([12, 9], [[0, 11], [3, 4, 5]]),
    "global-only-in-one": ([12, 12], [[6], []]),
    "all-global": ([4, 4], [[0, 1, 2, 3], [0, 1, 2, 3]]),
}


@pytest.mark.parametrize("case", CASES)
def test_outputs_and_attentions_equal_transformers(case: str) -> None:
    real, globals_ = CASES[case]
    length = max(-(-max(real) // WINDOW) * WINDOW, max(real))
    ours, theirs = layer_pair()
    inputs = layer_inputs(real, globals_, length)
    got = ours(**inputs, output_attentions=True)
    expected = theirs(**inputs, output_attentions=True)
    assert len(got) == len(expected) == (3 if inputs["is_global_attn"] else 2)
    keep = ~inputs["is_index_masked"]
    torch.testing.assert_close(got[0][keep], expected[0][keep], atol=1e-5, rtol=1e-4)
    assert torch.all(got[0][~keep] == 0)
    for ours_probs, their_probs in zip(got[1:], expected[1:], strict=True):
        assert ours_probs.shape == their_probs.shape
        torch.testing.assert_close(ours_probs, their_probs, atol=1e-6, rtol=1e-4)


def test_any_length_equals_transformers_on_the_padded_input() -> None:
    ours, theirs = layer_pair()
    padded = layer_inputs([7, 5], [[0, 6], [2]], 8)
    unpadded = layer_inputs([7, 5], [[0, 6], [2]], 7)
    unpadded["hidden_states"] = padded["hidden_states"][:, :7]
    got = ours(**unpadded)[0]
    expected = theirs(**padded)[0][:, :7]
    keep = ~unpadded["is_index_masked"]
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-5, rtol=1e-4)


GLOBAL_QUERY_PATHS = {
    "global rows only, count read back": (None, True),
    "global rows only, count bounded": (3, False),
    "every row, no read": (None, False),
}


@pytest.mark.parametrize("path", GLOBAL_QUERY_PATHS)
def test_gradients_equal_transformers(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """However ``query_global`` is projected (only the global rows, or every row where nothing may be read)."""
    bound, readable = GLOBAL_QUERY_PATHS[path]
    if not readable:
        monkeypatch.setattr("attnreg.execution.host.host_readable", lambda x: False)
    ours, theirs = layer_pair()
    ours.attnreg_max_globals = bound
    inputs = layer_inputs([12, 9], [[0, 11], [3, 4]], 12)
    results = []
    for layer in (ours, theirs):
        hidden = inputs["hidden_states"].clone().requires_grad_()
        out = layer(**{**inputs, "hidden_states": hidden})[0]
        (out * ~inputs["is_index_masked"][..., None]).pow(2).sum().backward()
        results.append({"hidden": hidden.grad, **{n: p.grad for n, p in layer.named_parameters()}})
    for name in results[1]:
        torch.testing.assert_close(results[0][name], results[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_no_global_tokens_means_no_global_projection() -> None:
    ours, _ = layer_pair()
    with torch.no_grad():
        for name in ("query_global", "key_global", "value_global"):
            getattr(ours, name).weight.fill_(float("nan"))
    out = ours(**layer_inputs([8, 6], [[], []], 8))[0]
    assert torch.isfinite(out).all()


def test_no_host_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on an accelerator (the layer reads the global count back only from the CPU, where it costs no sync)."""
    monkeypatch.setattr("attnreg.execution.host.host_readable", lambda x: False)
    ours, _ = layer_pair()
    inputs = layer_inputs([12, 9], [[0, 11], [3, 4]], 12)

    def sync(*args, **kwargs):
        raise AssertionError("host sync on the layer's path")

    for name in ("item", "nonzero", "tolist", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    monkeypatch.setattr(torch, "nonzero", sync)
    with attnreg.backend("reference"):
        out = ours(**inputs)[0]
    monkeypatch.undo()
    assert torch.isfinite(out).all()


def test_no_host_sync_on_the_blocked_engine_with_a_bound_on_global_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on an accelerator: the engine reads masks back only from the CPU, where that costs no device sync."""
    monkeypatch.setattr("attnreg.execution.host.host_readable", lambda x: False)
    ours, _ = layer_pair()
    inputs = layer_inputs([12, 9], [[0, 11], [3, 4]], 12)
    with attnreg.backend("reference"):
        expected = ours(**inputs)[0]
    ours.attnreg_max_globals = 2

    def sync(*args, **kwargs):
        raise AssertionError("host sync on the layer's path")

    for name in ("item", "nonzero", "tolist", "__bool__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    monkeypatch.setattr(torch, "nonzero", sync)
    with attnreg.backend("blocked"):
        out = ours(**inputs)[0]
    monkeypatch.undo()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_the_pinned_backend_runs_the_layer(caplog: pytest.LogCaptureFixture) -> None:
    ours, _ = layer_pair()
    inputs = layer_inputs([8], [[0]], 8)
    for engine in ("reference", "blocked"):
        with attnreg.backend(engine), caplog.at_level(logging.DEBUG, logger="attnreg"):
            assert torch.isfinite(ours(**inputs)[0]).all()
        assert caplog.messages[-1].startswith(f"engine {engine!r} runs q 1x"), caplog.messages


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_finite_forward_and_backward(dtype: torch.dtype) -> None:
    ours, _ = layer_pair(dtype)
    inputs = layer_inputs([12, 5], [[0, 11], [1, 4]], 12, dtype=dtype)
    hidden = inputs["hidden_states"].requires_grad_()
    outputs = ours(**inputs, output_attentions=True)
    outputs[0].float().sum().backward()
    for tensor in (*outputs, hidden.grad, *(p.grad for p in ours.parameters())):
        assert torch.isfinite(tensor).all()


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        ({"hidden_states": torch.zeros(2, 8, 15)}, r"hidden_states.shape=\(2, 8, 15\)"),
        ({"hidden_states": torch.zeros(8, 16)}, r"hidden_states.shape=\(8, 16\)"),
        ({"hidden_states": torch.zeros(2, 8, 16), "attention_mask": torch.zeros(2, 7)}, r"attention_mask.shape"),
        ({"hidden_states": torch.zeros(2, 8, 16), "is_index_masked": torch.zeros(8, 2)}, r"is_index_masked.shape"),
    ],
)
def test_bad_inputs_are_errors_naming_them(inputs: dict, named: str) -> None:
    ours, _ = layer_pair()
    with pytest.raises(attnreg.PatternError, match=named):
        ours(**inputs)


def test_odd_and_non_divisible_configs_are_errors() -> None:
    with pytest.raises(attnreg.PatternError, match=r"config.attention_window\[0\]=5"):
        LongformerSelfAttention(
            transformers.LongformerConfig(hidden_size=16, num_attention_heads=2, attention_window=[5]), 0
        )
    with pytest.raises(attnreg.PatternError, match=r"config\.hidden_size=16"):
        LongformerSelfAttention(
            transformers.LongformerConfig(hidden_size=16, num_attention_heads=3, attention_window=[4]), 0
        )


def test_a_bound_beyond_the_length_and_half_precision_autocast_project_the_global_rows() -> None:
    ours, theirs = layer_pair()
    inputs = layer_inputs([8, 6], [[0, 7], [2]], 8)
    expected = theirs(**inputs)[0]
    ours.attnreg_max_globals = 64
    keep = ~inputs["is_index_masked"]
    torch.testing.assert_close(ours(**inputs)[0][keep], expected[keep], atol=1e-5, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(**inputs)[0]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[keep].float(), expected[keep], atol=5e-2, rtol=5e-2)


# Attention dropout in training: attention_probs_dropout_prob on the local and global probabilities, as transformers.

DROPOUT = 0.1  # layer_pair's config
DROPOUT_INPUTS = ([11, 8], [[0, 10], [3]])  # padding, per-example global tokens, a length no multiple of anything


def _seeded(layer: torch.nn.Module, seed: int, inputs: dict, **kwargs) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(seed)
    return layer(**inputs, **kwargs)


def test_training_drops_attention_reproducibly_per_seed_and_without_a_warning() -> None:
    ours, _ = layer_pair()
    inputs = layer_inputs(*DROPOUT_INPUTS, 11)
    real = ~inputs["is_index_masked"]
    evaluated = ours(**inputs)[0]
    ours.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first, again, other = (_seeded(ours, seed, inputs)[0] for seed in (0, 0, 1))
    assert torch.equal(first, again)
    assert not torch.allclose(first[real], other[real])
    assert not torch.allclose(first[real], evaluated[real])


def test_training_without_dropout_equals_eval_mode() -> None:
    ours, _ = layer_pair()
    inputs = layer_inputs(*DROPOUT_INPUTS, 11)
    evaluated = ours(**inputs)[0]
    ours.train().dropout = 0.0
    assert torch.equal(ours(**inputs)[0], evaluated)


def test_dropout_is_unbiased_the_mean_over_draws_is_the_eval_output() -> None:
    """Inverted dropout keeps the expectation: the mean of N independent draws is within a few standard errors of eval.

    The draws are N copies of the batch in one call (each example draws its own flags). The bound is three times the
    root of the summed per-element variance over N, the expected norm of an unbiased mean's error; a missing
    ``1 / (1 - p)`` would put the mean off by ``p`` of the output, several times that bound.
    """
    draws = 200
    ours, _ = layer_pair()
    inputs = layer_inputs(*DROPOUT_INPUTS, 11)
    real = ~inputs["is_index_masked"]
    copies = {name: _copies(value, draws) for name, value in inputs.items()}
    with torch.no_grad():
        expected = ours(**inputs)[0][real]
        samples = _seeded(ours.train(), 0, copies)[0].unflatten(0, (draws, -1))[:, real]
    standard_error = (samples.var(dim=0).sum() / draws).sqrt()
    assert (samples.mean(dim=0) - expected).norm() <= 3 * standard_error


def _copies(value: torch.Tensor | bool, count: int) -> torch.Tensor | bool:
    """``count`` copies of a batch, one after the other along the batch dimension (flags stay as they are)."""
    return value.repeat(count, *[1] * (value.dim() - 1)) if isinstance(value, torch.Tensor) else value


TRANSFORMERS_DROPOUT_CASES = {  # transformers' layer needs a multiple of the window
    "per-example-globals": ([12, 9], [[0, 11], [3]]),
    "window-only": ([12, 9], [[], []]),
}


@pytest.mark.parametrize("output_attentions", [False, True], ids=["fast-path", "output_attentions"])
@pytest.mark.parametrize("case", TRANSFORMERS_DROPOUT_CASES)
def test_training_equals_transformers_dropping_the_same_weights(
    case: str, output_attentions: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """attnreg drops with flags given in its dense layout; transformers with the same flags in its local and global
    layouts (mapped as ``output_attentions`` maps the weights). Global slots past an example's own count are
    transformers' filler (dropped at random there, uniform in attnreg's) and are not compared."""
    ours, theirs = layer_pair()
    ours.train()
    theirs.train()
    inputs = layer_inputs(*TRANSFORMERS_DROPOUT_CASES[case], 12)
    flags = inject_keep_flags(monkeypatch, DROPOUT)
    got = ours(**inputs, output_attentions=output_attentions)
    global_mask = inputs["is_index_global_attn"]
    local, global_ = transformers_probs(flags[0].float(), global_mask, WINDOW // 2)
    torch_dropout_keeps(monkeypatch, DROPOUT, [local, global_] if inputs["is_global_attn"] else [local])
    expected = theirs(**inputs, output_attentions=output_attentions)
    real = ~inputs["is_index_masked"]
    assert len(got) == len(expected) and not flags[0].all()
    torch.testing.assert_close(got[0][real], expected[0][real], atol=1e-5, rtol=1e-4)
    if output_attentions:
        torch.testing.assert_close(got[1], expected[1], atol=1e-6, rtol=1e-4)
    if output_attentions and inputs["is_global_attn"]:
        filled = SelectedGlobals.slots(global_mask, global_.shape[2])[1]
        torch.testing.assert_close(got[2].transpose(1, 2)[filled], expected[2].transpose(1, 2)[filled])


def test_training_with_dropout_gives_every_parameter_a_finite_gradient() -> None:
    """Key biases included, though their gradient is zero up to rounding (in transformers too): a key bias shifts all
    of a query's scores alike."""
    ours, _ = layer_pair()
    inputs = layer_inputs(*DROPOUT_INPUTS, 11)
    hidden = inputs["hidden_states"].requires_grad_()
    out = _seeded(ours.train(), 0, inputs)[0]
    out[~inputs["is_index_masked"]].pow(2).sum().backward()
    for name, parameter in [("hidden_states", hidden), *ours.named_parameters()]:
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert name in {"key.bias", "key_global.bias"} or parameter.grad.abs().sum() > 0, name


def test_bf16_training_with_dropout_is_finite_forward_and_backward() -> None:
    ours, _ = layer_pair(torch.bfloat16)
    inputs = layer_inputs(*DROPOUT_INPUTS, 11, dtype=torch.bfloat16)
    hidden = inputs["hidden_states"].requires_grad_()
    out = _seeded(ours.train(), 0, inputs)[0]
    out.float().pow(2).sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(hidden.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters())


def test_the_pinned_blocked_engine_trains_with_dropout() -> None:
    ours, _ = layer_pair()
    ours.train()
    inputs = layer_inputs(*DROPOUT_INPUTS, 11)
    hidden = inputs["hidden_states"].requires_grad_()
    real = ~inputs["is_index_masked"]
    with attnreg.backend("blocked"):
        first, other = (_seeded(ours, seed, inputs)[0] for seed in (0, 1))
    assert not torch.allclose(first[real], other[real])
    first[real].pow(2).sum().backward()
    assert torch.isfinite(first).all() and torch.isfinite(hidden.grad).all()
