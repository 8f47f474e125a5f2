"""Component builders of the generic models: embeddings, norm, feed-forward, cross-attention, layers and their
default factories.

Why components: a model for any registered pattern is these parts stacked; the pattern only decides what the
self-attention (:class:`attnreg.nn.PatternAttention`, which adds the pattern's own parameters) sees. Layers take
their attention and feed-forward modules (torchtune's component builders); :func:`encoder_layer` and
:func:`decoder_layer` build the defaults.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnreg._validation import require
from attnreg.execution.dropout import check_dropout_p
from attnreg.nn import PatternAttention
from attnreg.pattern.parts import Window
from attnreg.pattern.spec import Pattern

#: The decoder's self-attention: each position sees itself and every position before it.
CAUSAL = Pattern(window=Window.causal(None))

NORMS = ("layer", "rms")


def norm(kind: str, d_model: int) -> nn.Module:
    """A ``LayerNorm`` (``"layer"``) or ``RMSNorm`` (``"rms"``) over ``d_model`` features."""
    require(kind in NORMS, "norm", kind, f"expected one of {', '.join(NORMS)}")
    return nn.LayerNorm(d_model) if kind == "layer" else nn.RMSNorm(d_model)


class Embeddings(nn.Module):
    """Token embeddings plus learned absolute positions, then dropout; longer inputs than ``max_length`` fail."""

    def __init__(self, vocab_size: int, d_model: int, max_length: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d_model)
        self.positions = nn.Embedding(max_length, d_model)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        require(
            isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 and not input_ids.is_floating_point(),
            "input_ids",
            tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else input_ids,
            "expected a (batch, length) integer tensor",
        )
        length = input_ids.shape[1]
        limit = self.positions.num_embeddings
        require(1 <= length <= limit, "input_ids.shape[1]", length, f"expected 1 to max_length={limit} tokens")
        positions = torch.arange(length, device=input_ids.device)
        return self.dropout(self.tokens(input_ids) + self.positions(positions))


class FeedForward(nn.Module):
    """``Linear -> GELU -> dropout -> Linear``."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.inner = nn.Linear(d_model, d_ff)
        self.outer = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.outer(self.dropout(F.gelu(self.inner(hidden))))


class CrossAttention(nn.Module):
    """Multi-head attention from decoder positions to every real encoder position (dense: no pattern applies).

    ``dropout`` drops attention probabilities in training mode only, as :class:`PatternAttention` does.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = check_dropout_p("dropout", dropout)
        self.query = nn.Linear(d_model, d_model)
        self.key_value = nn.Linear(d_model, 2 * d_model)
        self.output = nn.Linear(d_model, d_model)

    def forward(self, hidden: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, d_model = hidden.shape
        head_dim = d_model // self.num_heads
        q = self.query(hidden).view(batch, length, self.num_heads, head_dim).transpose(1, 2)
        k, v = self.key_value(memory).view(batch, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        mask = None
        empty = None
        if memory_mask is not None:
            real = memory_mask.bool()
            empty = ~real.any(dim=-1)
            mask = (real | empty[:, None])[:, None, None, :]  # an all-padding memory attends anywhere, then zeroed
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        if empty is not None:
            out = out.masked_fill(empty[:, None, None, None], 0.0)
        return self.output(out.transpose(1, 2).reshape(batch, length, d_model))


class PreNormEncoderLayer(nn.Module):
    """Pre-norm layer of given modules: ``x + attention(norm(x))``, then ``x + feed_forward(norm(x))``.

    Why injected (torchtune's layers): any attention with :class:`PatternAttention`'s call, ``attention(x,
    attention_mask, global_mask) -> output`` (masks: True = real token, True = global), and any feed-forward fit.
    ``dropout`` applies to both residual branches; :func:`encoder_layer` builds the default one.
    """

    def __init__(
        self,
        attention: nn.Module,
        feed_forward: nn.Module,
        *,
        attention_norm: nn.Module,
        feed_forward_norm: nn.Module,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.attention_norm, self.attention = attention_norm, attention
        self.feed_forward_norm, self.feed_forward = feed_forward_norm, feed_forward
        self.dropout = nn.Dropout(check_dropout_p("dropout", dropout))

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attended = self.attention(self.attention_norm(hidden), attention_mask, global_attention_mask)
        hidden = hidden + self.dropout(attended)
        return hidden + self.dropout(self.feed_forward(self.feed_forward_norm(hidden)))


class PreNormDecoderLayer(nn.Module):
    """Pre-norm layer of given modules: self-attention, cross-attention to the encoder, feed-forward; each residual.

    ``self_attention(x, attention_mask) -> output`` as :class:`PatternAttention`'s call (True = real token);
    ``cross_attention(x, memory, memory_mask) -> output`` as :class:`CrossAttention`'s. ``dropout`` applies to the
    residual branches; :func:`decoder_layer` builds the default one.
    """

    def __init__(
        self,
        self_attention: nn.Module,
        cross_attention: nn.Module,
        feed_forward: nn.Module,
        *,
        self_attention_norm: nn.Module,
        cross_attention_norm: nn.Module,
        feed_forward_norm: nn.Module,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.self_attention_norm, self.self_attention = self_attention_norm, self_attention
        self.cross_attention_norm, self.cross_attention = cross_attention_norm, cross_attention
        self.feed_forward_norm, self.feed_forward = feed_forward_norm, feed_forward
        self.dropout = nn.Dropout(check_dropout_p("dropout", dropout))

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        hidden = hidden + self.dropout(self.self_attention(self.self_attention_norm(hidden), attention_mask))
        crossed = self.cross_attention(self.cross_attention_norm(hidden), memory, memory_mask)
        hidden = hidden + self.dropout(crossed)
        return hidden + self.dropout(self.feed_forward(self.feed_forward_norm(hidden)))


def encoder_layer(
    d_model: int, num_heads: int, d_ff: int, pattern: Pattern, *, dropout: float = 0.0, norm_kind: str = "layer"
) -> PreNormEncoderLayer:
    """The generic encoder's layer: :class:`PatternAttention` under ``pattern`` and a :class:`FeedForward`.

    ``dropout`` applies everywhere, the attention probabilities included, as in ``nn.TransformerEncoderLayer``.
    """
    return PreNormEncoderLayer(
        PatternAttention(d_model, num_heads, pattern, dropout=dropout),
        FeedForward(d_model, d_ff, dropout),
        attention_norm=norm(norm_kind, d_model),
        feed_forward_norm=norm(norm_kind, d_model),
        dropout=dropout,
    )


def decoder_layer(
    d_model: int, num_heads: int, d_ff: int, *, dropout: float = 0.0, norm_kind: str = "layer"
) -> PreNormDecoderLayer:
    """The generic decoder's layer: causal :class:`PatternAttention`, :class:`CrossAttention`, :class:`FeedForward`.

    ``dropout`` applies everywhere, both attentions' probabilities included, as in ``nn.TransformerDecoderLayer``.
    """
    return PreNormDecoderLayer(
        PatternAttention(d_model, num_heads, CAUSAL, dropout=dropout),
        CrossAttention(d_model, num_heads, dropout),
        FeedForward(d_model, d_ff, dropout),
        self_attention_norm=norm(norm_kind, d_model),
        cross_attention_norm=norm(norm_kind, d_model),
        feed_forward_norm=norm(norm_kind, d_model),
        dropout=dropout,
    )
