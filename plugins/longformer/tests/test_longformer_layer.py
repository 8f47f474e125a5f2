"""The drop-in layer against transformers' ``LongformerSelfAttention`` on the same weights, as the encoder calls it."""

from __future__ import annotations

import pytest
import torch
import transformers
from attnreg_longformer import LongformerSelfAttention
from longformer_helpers import layer_inputs
from transformers.models.longformer import modeling_longformer

import attnreg

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
    ours.attnreg_backend = "reference"
    inputs = layer_inputs([12, 9], [[0, 11], [3, 4]], 12)

    def sync(*args, **kwargs):
        raise AssertionError("host sync on the layer's path")

    for name in ("item", "nonzero", "tolist", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    monkeypatch.setattr(torch, "nonzero", sync)
    out = ours(**inputs)[0]
    monkeypatch.undo()
    assert torch.isfinite(out).all()


def test_no_host_sync_on_the_blocked_engine_with_a_bound_on_global_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on an accelerator: the engine reads masks back only from the CPU, where that costs no device sync."""
    monkeypatch.setattr("attnreg.execution.host.host_readable", lambda x: False)
    ours, _ = layer_pair()
    inputs = layer_inputs([12, 9], [[0, 11], [3, 4]], 12)
    ours.attnreg_backend = "reference"
    expected = ours(**inputs)[0]
    ours.attnreg_backend, ours.attnreg_max_globals = "blocked", 2

    def sync(*args, **kwargs):
        raise AssertionError("host sync on the layer's path")

    for name in ("item", "nonzero", "tolist", "__bool__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    monkeypatch.setattr(torch, "nonzero", sync)
    out = ours(**inputs)[0]
    monkeypatch.undo()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_backend_attribute_is_passed_to_attnreg() -> None:
    ours, _ = layer_pair()
    inputs = layer_inputs([8], [[0]], 8)
    ours.attnreg_backend = "no-such-engine"
    with pytest.raises(attnreg.BackendUnavailableError, match="no-such-engine"):
        ours(**inputs)
    ours.attnreg_backend = "reference"
    assert torch.isfinite(ours(**inputs)[0]).all()


def test_attention_dropout_in_training_is_applied_densely() -> None:
    ours, _ = layer_pair()
    inputs = layer_inputs([8, 6], [[0], [2]], 8)
    evaluated = ours(**inputs)[0]
    ours.train()
    with pytest.warns(UserWarning, match="attention_probs_dropout_prob"):
        trained = ours(**inputs)[0]
    keep = ~inputs["is_index_masked"]
    assert torch.isfinite(trained).all()
    assert not torch.allclose(trained[keep], evaluated[keep])


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
