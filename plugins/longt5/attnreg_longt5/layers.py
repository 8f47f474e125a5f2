"""Drop-in replacements for transformers' ``LongT5LocalAttention`` and ``LongT5TransientGlobalAttention``.

Same constructor, parameters, forward signature and return values; the attention itself is ``attnreg.attention``
(the dispatcher picks the engine; ``with attnreg.backend(...)`` pins one). The ``position_bias`` a layer returns is a
:class:`SharedPositionBias` holding the first layer's ``(num_buckets, heads)`` tables, so later layers reuse them
without a tensor that grows with the sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.models.longt5 import modeling_longt5

import attnreg
from attnreg.nn import SharedBatch, project_linears
from attnreg.validation import require
from attnreg_longt5.blocked import from_blocked, to_blocked
from attnreg_longt5.patterns import local_params, longt5_local, longt5_tglobal


@dataclass(frozen=True)
class SharedPositionBias:
    """The relative-position tables of a stack's first layer, passed on to the later layers as ``position_bias``.

    LongT5 computes its bias once per stack. Carrying the learned tables rather than a blocked bias tensor keeps it
    independent of the length and lets every layer's engine add the bias inside its own kernel.
    """

    bias_weight: torch.Tensor
    aggregated_bias_weight: torch.Tensor | None = None

    def to(self, *args: Any, **kwargs: Any) -> SharedPositionBias:
        """The same tables moved like ``Tensor.to`` (for device-placement hooks that move every argument)."""
        aggregated = self.aggregated_bias_weight
        return SharedPositionBias(
            self.bias_weight.to(*args, **kwargs), None if aggregated is None else aggregated.to(*args, **kwargs)
        )


def token_mask(mask: torch.Tensor | None, hidden_states: torch.Tensor, block_len: int) -> torch.Tensor | None:
    """The ``(batch, length)`` bool mask (True = real token) from what a LongT5 attention layer receives.

    transformers passes a ``(batch, length)`` 0/1 mask to Transient-Global layers and the blocked
    ``(batch, 1, blocks, block_len, 3 * block_len)`` local mask to local layers; a token's own entry in its block is
    its padding flag.
    """
    if mask is None:
        return None
    batch, length = hidden_states.shape[:2]
    blocks = -(-length // block_len)
    require(isinstance(mask, torch.Tensor), "mask", type(mask).__name__, "expected a tensor or None")
    if mask.dim() == 5:
        require(
            tuple(mask.shape) == (batch, 1, blocks, block_len, 3 * block_len),
            "mask.shape",
            tuple(mask.shape),
            f"expected (batch, length) = {(batch, length)} or the blocked local mask "
            f"{(batch, 1, blocks, block_len, 3 * block_len)}",
        )
        own = torch.arange(block_len, device=mask.device)
        mask = mask[:, 0, :, own, own + block_len].reshape(batch, blocks * block_len)[:, :length]
    require(
        mask.dim() == 2 and tuple(mask.shape) == (batch, length),
        "mask.shape",
        tuple(mask.shape),
        f"expected (batch, length) = {(batch, length)} (1 for real tokens, 0 for padding)",
    )
    return mask.to(hidden_states.device) != 0


class _AttnregLongT5Attention:
    """What both drop-in layers share: projections to heads, the shared bias, the call into attnreg."""

    pattern: attnreg.Pattern

    def _init_attnreg(self, layer_idx: int | None, pattern: attnreg.Pattern) -> None:
        self.layer_idx = layer_idx
        self.pattern = pattern
        #: The batch's prepared masks; a built model gives all its layers one (see attnreg.nn.SharedBatch).
        self.attnreg_batch = SharedBatch()

    def forward(
        self,
        hidden_states: torch.Tensor,
        mask: torch.Tensor | None = None,
        position_bias: SharedPositionBias | None = None,
        output_attentions: bool = False,
    ) -> tuple:
        """``(output, position_bias)``, plus the ``(batch, blocks, heads, block_len, 3 * block_len + count)``
        weights on request (``count`` aggregated keys for TGlobal, none for local)."""
        real = token_mask(mask, hidden_states, self.block_len)
        length = hidden_states.shape[1]
        prepared = self.attnreg_batch.prepare(mask, self.pattern, length, attention_mask=real)
        shared = self._shared_bias(position_bias, hidden_states)
        aggregated_kv = self._aggregated_kv(hidden_states, real)
        output, weights = self._attend(hidden_states, prepared, shared, aggregated_kv, output_attentions)
        return (output, shared, weights) if output_attentions else (output, shared)

    def _aggregated_kv(
        self, hidden_states: torch.Tensor, real: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Keys and values of the aggregated tokens; none for a pattern without them."""
        return None

    def _project(self, states: torch.Tensor, linears: tuple[torch.nn.Module, ...]) -> tuple[torch.Tensor, ...]:
        """``linears`` on ``states`` (one matmul when they are plain ``nn.Linear``), each ``(batch, heads, length,
        d_kv)``."""
        return project_linears(states, linears, num_heads=self.n_heads, head_dim=self.key_value_proj_dim)

    def _shared_bias(self, position_bias: Any, like: torch.Tensor) -> SharedPositionBias:
        """The tables to use: the ones passed in, this layer's own, or zeros (a layer without a bias table)."""
        if position_bias is not None:
            require(
                isinstance(position_bias, SharedPositionBias),
                "position_bias",
                type(position_bias).__name__,
                "expected None or the SharedPositionBias an attnreg_longt5 layer returned; tensors from "
                "transformers' own LongT5 layers cannot be mixed with attnreg layers",
            )
            return position_bias
        if self.has_relative_attention_bias:
            aggregated = getattr(self, "global_relative_attention_bias", None)
            return SharedPositionBias(
                self.relative_attention_bias.weight, None if aggregated is None else aggregated.weight
            )
        zeros = like.new_zeros(self.relative_attention_num_buckets, self.n_heads)
        return SharedPositionBias(zeros, zeros if self.pattern.aggregated_globals is not None else None)

    def _attend(
        self,
        hidden_states: torch.Tensor,
        prepared: attnreg.PreparedMask,
        shared: SharedPositionBias,
        aggregated_kv: tuple[torch.Tensor, torch.Tensor] | None,
        output_attentions: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layer's output ``(batch, length, d_model)`` and, on request, the blocked attention weights.

        In training the attention probabilities are dropped with ``config.dropout_rate``, as transformers does after
        its softmax; the returned weights are then the dropped ones the output was computed from.
        """
        q, k, v = self._project(hidden_states, (self.q, self.k, self.v))
        inputs: dict[str, Any] = {
            "bias_weight": shared.bias_weight,
            "dropout_p": self.dropout if self.training else 0.0,
        }
        if aggregated_kv is not None:
            inputs.update(aggregated_kv=aggregated_kv, aggregated_bias_weight=shared.aggregated_bias_weight)
        blocked = None
        if output_attentions:
            _, weights = attnreg.attention_weights(q, k, v, prepared, **inputs)
            blocked = to_blocked(weights, self.block_len)
            values = v if aggregated_kv is None else torch.cat([v, aggregated_kv[1]], dim=2)
            out = from_blocked(blocked, q.shape[2]) @ values  # the output flows through the returned weights
        else:
            out = attnreg.attention(q, k, v, prepared, **inputs)
        out = out.transpose(1, 2).reshape(hidden_states.shape[0], -1, self.inner_dim)
        return self.o(out), blocked


class LongT5LocalAttention(_AttnregLongT5Attention, modeling_longt5.LongT5LocalAttention):
    """LongT5 local self-attention (``|i - j| <= local_radius``) run by attnreg; a drop-in for transformers' layer."""

    def __init__(self, config: Any, has_relative_attention_bias: bool = False, layer_idx: int | None = None) -> None:
        super().__init__(config, has_relative_attention_bias=has_relative_attention_bias)
        self._init_attnreg(layer_idx, longt5_local(**local_params(config)))


class LongT5TransientGlobalAttention(_AttnregLongT5Attention, modeling_longt5.LongT5TransientGlobalAttention):
    """LongT5 Transient-Global self-attention run by attnreg; a drop-in for transformers' layer.

    Aggregated tokens are block sums of the hidden states through ``global_input_layer_norm`` and this layer's
    key/value projections.
    """

    def __init__(self, config: Any, has_relative_attention_bias: bool = False, layer_idx: int | None = None) -> None:
        super().__init__(config, has_relative_attention_bias=has_relative_attention_bias)
        self._init_attnreg(
            layer_idx, longt5_tglobal(global_block_size=config.global_block_size, **local_params(config))
        )

    def _aggregated_kv(
        self, hidden_states: torch.Tensor, real: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the aggregated tokens: block sums, the global norm, this layer's k/v projections."""
        aggregated = self.global_input_layer_norm(self.pattern.aggregated_globals.aggregate(hidden_states, real))
        return self._project(aggregated, (self.k, self.v))
