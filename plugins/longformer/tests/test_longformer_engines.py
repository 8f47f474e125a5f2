"""Every registered engine runs the Longformer layer and model as transformers does: outputs and gradients.

Engines that refuse the call on this machine (xformers without CUDA) are skipped with their reason.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from attnreg_longformer import LongformerSelfAttention
from longformer_helpers import layer_inputs, make_batch
from transformers.models.longformer import modeling_longformer

import attnreg

ENGINES = sorted(engine.name for engine in attnreg.get_registry().engines())
WINDOW = 16  # one-sided 8: several blocks at the lengths below


#: Engines that may refuse on this machine (no CUDA, no xformers), and what each may say: any other refusal fails.
MAY_REFUSE = {"xformers": "", "flex": "computes gradients on cuda only"}


@pytest.fixture
def engine(request) -> str:
    """The engine under test, pinned by ``attnreg.backend`` for the whole test."""
    with attnreg.backend(request.param):
        yield request.param


def skip_if_expected(engine: str, error: Exception) -> None:
    """Skip where the engine cannot run here by design; re-raise a refusal from an engine that must run."""
    if engine not in MAY_REFUSE or MAY_REFUSE[engine] not in str(error):
        raise error
    pytest.skip(str(error))


def skip_unless_runs(engine: str, layer: LongformerSelfAttention, inputs: dict) -> None:
    """Skip (saying why) where the engine may not run this layer with gradients here; the tests that use it train."""
    try:
        layer(**inputs)
    except attnreg.BackendUnavailableError as error:
        skip_if_expected(engine, error)


def layer_pair() -> tuple[LongformerSelfAttention, torch.nn.Module]:
    config = transformers.LongformerConfig(
        hidden_size=32, num_attention_heads=4, attention_window=[WINDOW], attention_probs_dropout_prob=0.0
    )
    torch.manual_seed(0)
    theirs = modeling_longformer.LongformerSelfAttention(config, layer_id=0).eval()
    ours = LongformerSelfAttention(config, layer_id=0).eval()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


# at most 77 real tokens: attnreg runs 77 positions, transformers the same padded to 80 (a multiple of the window)
CASES = {
    "window-only": ([77, 77], [[], []]),
    "padding-and-globals": ([77, 53, 19], [[0, 76], [3, 4, 40], []]),
    "global-inside-windows": ([77, 77], [[30, 33, 36], [8]]),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_layer_outputs_and_gradients_equal_transformers(engine: str, case: str) -> None:
    lengths, globals_ = CASES[case]
    ours, theirs = layer_pair()
    inputs = layer_inputs(lengths, globals_, 80, hidden_size=32, seed=2)
    skip_unless_runs(engine, ours, _cut(inputs, 77))
    keep = ~inputs["is_index_masked"]
    results = []
    for layer, length in ((ours, 77), (theirs, 80)):
        hidden = inputs["hidden_states"][:, :length].clone().requires_grad_()
        out = layer(**{**_cut(inputs, length), "hidden_states": hidden})[0][:, :77]
        (out * keep[:, :77, None]).pow(2).sum().backward()
        grads = {name: p.grad for name, p in layer.named_parameters()}
        results.append((out[keep[:, :77]], hidden.grad[:, :77][keep[:, :77]], grads))
    (out, hidden_grad, grads), (expected, expected_hidden_grad, expected_grads) = results
    assert (out - expected).abs().max() <= 1e-5
    torch.testing.assert_close(hidden_grad, expected_hidden_grad, atol=1e-5, rtol=1e-4)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def _cut(inputs: dict, length: int) -> dict:
    """The encoder's arguments for the first ``length`` positions."""
    return {key: value if key == "is_global_attn" else value[:, :length] for key, value in inputs.items()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_layer_half_precision_is_finite_and_close(engine: str, dtype: torch.dtype) -> None:
    ours, _ = layer_pair()
    inputs = layer_inputs([77, 53, 19], [[0, 76], [3, 4, 40], []], 80, hidden_size=32, seed=2)
    skip_unless_runs(engine, ours, inputs)
    expected = ours(**inputs)[0]
    ours.to(dtype)
    hidden = inputs["hidden_states"].to(dtype).requires_grad_()
    half_inputs = {**inputs, "hidden_states": hidden, "attention_mask": inputs["attention_mask"].to(dtype)}
    try:
        out = ours(**half_inputs)[0]
    except attnreg.BackendUnavailableError as error:
        skip_if_expected(engine, error)
    out.float().pow(2).sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(hidden.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters())
    keep = ~inputs["is_index_masked"]
    assert (out.float() - expected)[keep].abs().max() < 0.05


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_model_equals_transformers(checkpoint, engine: str) -> None:
    path = checkpoint("LongformerModel", attention_window=[8, 16])
    theirs = transformers.LongformerModel.from_pretrained(path).eval()
    ours = attnreg.build("longformer", pretrained=str(path)).eval()
    batch = make_batch([45, 30, 9], [[0, 44], [7, 8, 20], []])
    with torch.no_grad():
        try:
            got = ours(**batch).last_hidden_state
        except attnreg.BackendUnavailableError as error:
            skip_if_expected(engine, error)
        expected = theirs(**batch).last_hidden_state
    keep = batch["attention_mask"].bool()
    assert (got - expected)[keep].abs().max() <= 1e-4
