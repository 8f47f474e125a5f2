"""The drop-in layers against transformers' ``LongT5LocalAttention`` and ``LongT5TransientGlobalAttention``."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from attnreg_longt5 import LongT5LocalAttention, LongT5TransientGlobalAttention, SharedPositionBias
from attnreg_longt5.blocked import to_blocked
from longt5_helpers import KINDS, LOCAL_RADIUS, tiny_config
from transformers.models.longt5 import modeling_longt5

import attnreg
from attnreg.testing.dropout import inject_keep_flags, torch_dropout_keeps

BLOCK_LEN = LOCAL_RADIUS + 1
PAIRS = {
    "longt5-local": (modeling_longt5.LongT5LocalAttention, LongT5LocalAttention),
    "longt5-tglobal": (modeling_longt5.LongT5TransientGlobalAttention, LongT5TransientGlobalAttention),
}


def _layers(kind: str, first: bool, **config_fields) -> tuple[torch.nn.Module, torch.nn.Module]:
    """transformers' layer with random weights and attnreg's with the same ones, both in eval mode."""
    theirs_class, ours_class = PAIRS[kind]
    config = tiny_config(kind, **config_fields)
    theirs = theirs_class(config, has_relative_attention_bias=first).eval()
    with torch.no_grad():
        for parameter in theirs.parameters():
            parameter.normal_(0, 0.3)
    ours = ours_class(config, has_relative_attention_bias=first, layer_idx=0 if first else 1).eval()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _inputs(kind: str, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states, the ``(batch, length)`` mask, and the mask as each kind's stack passes it."""
    length = max(lengths)
    hidden = torch.randn(len(lengths), length, 32, generator=torch.Generator().manual_seed(length))
    mask = (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).float()
    given = (
        modeling_longt5._get_local_attention_mask(mask, BLOCK_LEN, hidden.device) if KINDS[kind] == "local" else mask
    )
    return hidden, mask, given


def _real_rows(blocked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Blocked weights with the rows of padded queries zeroed (transformers leaves garbage there)."""
    batch, blocks = blocked.shape[:2]
    rows = torch.nn.functional.pad(mask, (0, blocks * BLOCK_LEN - mask.shape[1])).view(batch, blocks, 1, BLOCK_LEN, 1)
    return blocked * rows


LENGTHS = [[3], [5], [23, 17, 4], [12, 12]]


@pytest.mark.parametrize("lengths", LENGTHS, ids=str)
@pytest.mark.parametrize("kind", list(PAIRS))
def test_first_and_next_layer_match_transformers(kind, lengths):
    first_theirs, first_ours = _layers(kind, first=True)
    next_theirs, next_ours = _layers(kind, first=False)
    hidden, mask, given = _inputs(kind, lengths)
    out_theirs, bias_theirs = first_theirs(hidden, mask=given)
    out_ours, bias_ours = first_ours(hidden, mask=given)
    real = mask.bool()
    torch.testing.assert_close(out_ours[real], out_theirs[real], rtol=1e-4, atol=1e-5)
    out_theirs = next_theirs(hidden, mask=given, position_bias=bias_theirs)[0]
    out_ours = next_ours(hidden, mask=given, position_bias=bias_ours)[0]
    torch.testing.assert_close(out_ours[real], out_theirs[real], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_position_bias_carries_the_first_layers_tables(kind):
    _, first = _layers(kind, first=True)
    _, later = _layers(kind, first=False)
    hidden, _, given = _inputs(kind, [9])
    shared = first(hidden, mask=given)[1]
    assert isinstance(shared, SharedPositionBias)
    assert shared.bias_weight is first.relative_attention_bias.weight
    if kind == "longt5-tglobal":
        assert shared.aggregated_bias_weight is first.global_relative_attention_bias.weight
    assert later(hidden, mask=given, position_bias=shared)[1] is shared


@pytest.mark.parametrize("lengths", [[3], [23, 17, 4]], ids=str)
@pytest.mark.parametrize("kind", list(PAIRS))
def test_output_attentions_match_transformers_blocked_weights(kind, lengths):
    theirs, ours = _layers(kind, first=True)
    hidden, mask, given = _inputs(kind, lengths)
    weights_theirs = theirs(hidden, mask=given, output_attentions=True)[2]
    output, _, weights_ours = ours(hidden, mask=given, output_attentions=True)
    assert weights_ours.shape == weights_theirs.shape
    torch.testing.assert_close(_real_rows(weights_ours, mask), _real_rows(weights_theirs, mask), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(output, ours(hidden, mask=given)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_gradients_flow_through_returned_attention_weights(kind):
    _, ours = _layers(kind, first=True)
    hidden, _, given = _inputs(kind, [11])
    output, _, weights = ours(hidden, mask=given, output_attentions=True)
    weights.retain_grad()
    output.sum().backward()
    assert weights.grad is not None and weights.grad.abs().sum() > 0


def test_local_layer_reads_the_blocked_mask_as_the_token_mask():
    _, ours = _layers("longt5-local", first=True)
    hidden, mask, blocked = _inputs("longt5-local", [23, 8])
    torch.testing.assert_close(ours(hidden, mask=blocked)[0], ours(hidden, mask=mask)[0], rtol=0, atol=0)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_attention_runs_through_attnreg_with_the_pinned_backend(kind, caplog):
    _, ours = _layers(kind, first=True)
    hidden, _, given = _inputs(kind, [7])
    for engine in ("reference", "blocked"):
        with attnreg.backend(engine), caplog.at_level(logging.DEBUG, logger="attnreg"):
            ours(hidden, mask=given)
        assert caplog.messages[-1].startswith(f"engine {engine!r} runs q 1x"), caplog.messages


@pytest.mark.parametrize("kind", list(PAIRS))
def test_a_transformers_position_bias_tensor_is_rejected(kind):
    theirs, ours = _layers(kind, first=True)
    hidden, _, given = _inputs(kind, [7])
    with pytest.raises(attnreg.PatternError, match="position_bias"):
        ours(hidden, mask=given, position_bias=theirs(hidden, mask=given)[1])


@pytest.mark.parametrize("kind", list(PAIRS))
def test_a_mask_of_the_wrong_shape_is_rejected(kind):
    _, ours = _layers(kind, first=True)
    hidden, _, _ = _inputs(kind, [7])
    with pytest.raises(attnreg.PatternError, match=r"mask\.shape"):
        ours(hidden, mask=torch.ones(1, 6))


# Attention dropout in training: config.dropout_rate on the probabilities, as transformers applies it after its softmax.

DROPOUT = 0.1
DROPOUT_LENGTHS = [23, 17, 4]  # padded; 23 is a multiple of neither the block (5) nor the global block (3)


def _training(kind: str, rate: float = DROPOUT) -> tuple[torch.nn.Module, torch.nn.Module]:
    """First layers (with the bias tables) of both libraries in train mode with attention dropout ``rate``."""
    theirs, ours = _layers(kind, first=True, dropout_rate=rate)
    return theirs.train(), ours.train()


def _seeded(layer: torch.nn.Module, seed: int, *args, **kwargs) -> tuple:
    torch.manual_seed(seed)
    return layer(*args, **kwargs)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_training_drops_attention_reproducibly_per_seed_and_without_a_warning(kind):
    _, ours = _training(kind)
    hidden, mask, given = _inputs(kind, DROPOUT_LENGTHS)
    real = mask.bool()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first, again, other = (_seeded(ours, seed, hidden, mask=given)[0] for seed in (0, 0, 1))
    assert torch.equal(first, again)
    assert not torch.allclose(first[real], other[real])
    assert not torch.allclose(first[real], ours.eval()(hidden, mask=given)[0][real])


@pytest.mark.parametrize("kind", list(PAIRS))
def test_eval_mode_equals_transformers_and_training_without_dropout(kind):
    theirs, ours = _training(kind)
    hidden, mask, given = _inputs(kind, DROPOUT_LENGTHS)
    real = mask.bool()
    evaluated = ours.eval()(hidden, mask=given)[0]
    torch.testing.assert_close(evaluated[real], theirs.eval()(hidden, mask=given)[0][real], rtol=1e-4, atol=1e-5)
    ours.train().dropout = 0.0
    assert torch.equal(ours(hidden, mask=given)[0], evaluated)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_dropout_is_unbiased_the_mean_over_draws_is_the_eval_output(kind):
    """Inverted dropout keeps the expectation: the mean of N independent draws is within a few standard errors of eval.

    The draws are N copies of the batch in one call (each example draws its own flags). The bound is three times the
    root of the summed per-element variance over N, the expected norm of an unbiased mean's error; a missing
    ``1 / (1 - p)`` would put the mean off by ``p`` of the output, several times that bound.
    """
    draws = 200
    _, ours = _training(kind)
    hidden, mask, given = _inputs(kind, DROPOUT_LENGTHS)
    real = mask.bool()
    with torch.no_grad():
        copies = _seeded(ours, 0, _copies(hidden, draws), mask=_copies(given, draws))[0]
        expected = ours.eval()(hidden, mask=given)[0][real]
    samples = copies.unflatten(0, (draws, -1))[:, real]
    standard_error = (samples.var(dim=0).sum() / draws).sqrt()
    assert (samples.mean(dim=0) - expected).norm() <= 3 * standard_error


def _copies(tensor: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` copies of a batch, one after the other along the batch dimension."""
    return tensor.repeat(count, *[1] * (tensor.dim() - 1))


@pytest.mark.parametrize("output_attentions", [False, True], ids=["fast-path", "output_attentions"])
@pytest.mark.parametrize("kind", list(PAIRS))
def test_training_equals_transformers_dropping_the_same_weights(kind, output_attentions, monkeypatch):
    """attnreg drops with flags given in its dense layout; transformers with the same flags in its blocked layout."""
    theirs, ours = _training(kind)
    hidden, mask, given = _inputs(kind, DROPOUT_LENGTHS)
    flags = inject_keep_flags(monkeypatch, DROPOUT)
    got = ours(hidden, mask=given, output_attentions=output_attentions)
    torch_dropout_keeps(monkeypatch, DROPOUT, [to_blocked(flags[0].float(), BLOCK_LEN)])
    expected = theirs(hidden, mask=given, output_attentions=output_attentions)
    real = mask.bool()
    assert not flags[0].all()
    torch.testing.assert_close(got[0][real], expected[0][real], rtol=1e-4, atol=1e-5)
    if output_attentions:
        torch.testing.assert_close(_real_rows(got[2], mask), _real_rows(expected[2], mask), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_training_with_dropout_gives_every_parameter_a_finite_gradient(kind):
    _, ours = _training(kind)
    hidden, mask, given = _inputs(kind, DROPOUT_LENGTHS)
    hidden.requires_grad_()
    out = _seeded(ours, 0, hidden, mask=given)[0]
    out[mask.bool()].pow(2).sum().backward()
    for name, parameter in [("hidden_states", hidden), *ours.named_parameters()]:
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", list(PAIRS))
def test_bf16_training_with_dropout_is_finite_forward_and_backward(kind):
    _, ours = _training(kind)
    ours.to(torch.bfloat16)
    hidden, _, given = _inputs(kind, DROPOUT_LENGTHS)
    hidden = hidden.to(torch.bfloat16).requires_grad_()
    out = _seeded(ours, 0, hidden, mask=given)[0]
    out.float().pow(2).sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(hidden.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters())


@pytest.mark.parametrize("kind", list(PAIRS))
def test_the_pinned_blocked_engine_trains_with_dropout(kind):
    _, ours = _training(kind)
    hidden, mask, given = _inputs(kind, DROPOUT_LENGTHS)
    hidden.requires_grad_()
    with attnreg.backend("blocked"):
        first, other = (_seeded(ours, seed, hidden, mask=given)[0] for seed in (0, 1))
    real = mask.bool()
    assert not torch.allclose(first[real], other[real])
    first[real].pow(2).sum().backward()
    assert torch.isfinite(first).all() and torch.isfinite(hidden.grad).all()
