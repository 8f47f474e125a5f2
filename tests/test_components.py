"""The generic models' layers take their modules (torchtune's style); the default factories build the usual ones.

A module injected into a layer is the one that runs, and it is handed the model's own ``attention_mask``
(True = real token), never an inverted copy.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnreg
from attnreg import Pattern, PatternAttention, Window
from attnreg.models.components import (
    CAUSAL,
    CrossAttention,
    FeedForward,
    PreNormDecoderLayer,
    PreNormEncoderLayer,
    decoder_layer,
    encoder_layer,
)

D_MODEL, HEADS, D_FF, LENGTH, BATCH = 16, 4, 32, 9, 2


class Recording(nn.Module):
    """An attention stand-in that records the masks it is called with and returns its input doubled."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor | None, ...]] = []

    def forward(self, x: torch.Tensor, *masks: torch.Tensor | None) -> torch.Tensor:
        self.calls.append(masks)
        return 2 * x


def _hidden() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    real = torch.ones(BATCH, LENGTH, dtype=torch.bool)
    real[1, -2:] = False
    return torch.randn(BATCH, LENGTH, D_MODEL), real


def test_an_injected_attention_is_the_one_the_encoder_layer_runs_with_the_mask_as_given():
    attention = Recording()
    layer = PreNormEncoderLayer(attention, nn.Identity(), attention_norm=nn.Identity(), feed_forward_norm=nn.Identity())
    x, real = _hidden()
    global_mask = torch.zeros_like(real)
    out = layer(x, real, global_mask)
    assert len(attention.calls) == 1
    assert attention.calls[0][0] is real and attention.calls[0][1] is global_mask
    torch.testing.assert_close(out, 6 * x)  # x + 2x, then + the identity feed-forward


def test_an_injected_feed_forward_and_norms_are_the_ones_the_encoder_layer_runs():
    feed_forward, attention_norm, feed_forward_norm = nn.Linear(D_MODEL, D_MODEL), nn.LayerNorm(D_MODEL), nn.Tanh()
    layer = PreNormEncoderLayer(
        Recording(), feed_forward, attention_norm=attention_norm, feed_forward_norm=feed_forward_norm
    )
    x, _ = _hidden()
    hidden = x + 2 * attention_norm(x)
    torch.testing.assert_close(layer(x), hidden + feed_forward(feed_forward_norm(hidden)))


def test_injected_modules_are_the_ones_the_decoder_layer_runs_with_the_masks_as_given():
    self_attention = Recording()
    crossed = []

    class Cross(nn.Module):
        def forward(self, hidden, memory, memory_mask):
            crossed.append((memory, memory_mask))
            return torch.zeros_like(hidden)

    norms = {name: nn.Identity() for name in ("self_attention_norm", "cross_attention_norm", "feed_forward_norm")}
    layer = PreNormDecoderLayer(self_attention, Cross(), nn.Identity(), **norms)
    x, real = _hidden()
    memory, memory_mask = torch.randn(BATCH, 5, D_MODEL), torch.ones(BATCH, 5, dtype=torch.bool)
    out = layer(x, real, memory, memory_mask)
    assert self_attention.calls == [(real,)] and crossed[0][0] is memory and crossed[0][1] is memory_mask
    torch.testing.assert_close(out, 6 * x)


def test_the_default_encoder_layer_is_pattern_attention_and_a_feed_forward_under_the_usual_keys():
    pattern = Pattern(window=Window(2, 2))
    layer = encoder_layer(D_MODEL, HEADS, D_FF, pattern, dropout=0.1, norm_kind="rms")
    assert isinstance(layer.attention, PatternAttention) and layer.attention.pattern == pattern
    assert isinstance(layer.feed_forward, FeedForward) and isinstance(layer.attention_norm, nn.RMSNorm)
    assert layer.attention.dropout == 0.1 and layer.dropout.p == 0.1
    assert list(layer.state_dict()) == [
        "attention_norm.weight",
        "attention.in_proj_weight",
        "attention.in_proj_bias",
        "attention.out_proj.weight",
        "attention.out_proj.bias",
        "feed_forward_norm.weight",
        "feed_forward.inner.weight",
        "feed_forward.inner.bias",
        "feed_forward.outer.weight",
        "feed_forward.outer.bias",
    ]


def test_the_default_decoder_layer_is_causal_attention_cross_attention_and_a_feed_forward():
    layer = decoder_layer(D_MODEL, HEADS, D_FF, dropout=0.2)
    assert isinstance(layer.self_attention, PatternAttention) and layer.self_attention.pattern == CAUSAL
    assert isinstance(layer.cross_attention, CrossAttention) and isinstance(layer.feed_forward, FeedForward)
    assert {layer.self_attention.dropout, layer.cross_attention.dropout, layer.dropout.p} == {0.2}
    prefixes = [key.split(".")[0] for key in layer.state_dict()]
    assert list(dict.fromkeys(prefixes)) == [
        "self_attention_norm",
        "self_attention",
        "cross_attention_norm",
        "cross_attention",
        "feed_forward_norm",
        "feed_forward",
    ]


@pytest.mark.parametrize("builder", ["encoder", "encoder-decoder"])
def test_built_models_hand_their_attention_mask_to_every_self_attention_uninverted(builder):
    sizes = {"vocab_size": 10, "d_model": D_MODEL, "n_layers": 2, "num_heads": HEADS, "d_ff": D_FF, "max_length": 16}
    model = attnreg.build(builder, pattern=Pattern(window=Window(1, 1)), **sizes).eval()
    seen = []
    for module in model.modules():
        if isinstance(module, PatternAttention):
            module.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    ids = torch.randint(1, 10, (BATCH, LENGTH))
    mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    mask[1, -2:] = 0
    decoder = {"decoder_input_ids": ids, "decoder_attention_mask": mask} if builder == "encoder-decoder" else {}
    with torch.no_grad():
        model(ids, attention_mask=mask, **decoder)
    assert len(seen) == (4 if builder == "encoder-decoder" else 2)
    assert all(given is mask for given in seen)


def test_a_bad_residual_dropout_is_refused_naming_it():
    with pytest.raises(attnreg.PatternError, match=r"dropout=1\.5 is not allowed"):
        PreNormEncoderLayer(
            nn.Identity(), nn.Identity(), attention_norm=nn.Identity(), feed_forward_norm=nn.Identity(), dropout=1.5
        )
