"""The drop-in layers against transformers' ``LongT5LocalAttention`` and ``LongT5TransientGlobalAttention``."""

from __future__ import annotations

import pytest
import torch
from attnreg_longt5 import LongT5LocalAttention, LongT5TransientGlobalAttention, SharedPositionBias
from longt5_helpers import KINDS, LOCAL_RADIUS, tiny_config
from transformers.models.longt5 import modeling_longt5

import attnreg

BLOCK_LEN = LOCAL_RADIUS + 1
PAIRS = {
    "longt5-local": (modeling_longt5.LongT5LocalAttention, LongT5LocalAttention),
    "longt5-tglobal": (modeling_longt5.LongT5TransientGlobalAttention, LongT5TransientGlobalAttention),
}


def _layers(kind: str, first: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    theirs_class, ours_class = PAIRS[kind]
    config = tiny_config(kind)
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
def test_attention_runs_through_attnreg_with_the_pinned_backend(kind):
    _, ours = _layers(kind, first=True)
    hidden, _, given = _inputs(kind, [7])
    ours.attnreg_backend = "reference"
    ours(hidden, mask=given)
    ours.attnreg_backend = "no-such-engine"
    with pytest.raises(Exception, match="no-such-engine"):
        ours(hidden, mask=given)


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
