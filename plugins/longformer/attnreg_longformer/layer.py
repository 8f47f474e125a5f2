"""``LongformerSelfAttention``: a drop-in for transformers' layer of that name that runs on attnreg's engines.

Same constructor ``(config, layer_id)``, parameters, forward arguments and return values; any sequence
length (no multiple of the window needed); padded rows are zeros and never NaN in any precision.
"""

from __future__ import annotations

import torch
from torch import nn

import attnreg
from attnreg.execution import host
from attnreg.nn import SharedBatch, project_linears
from attnreg.validation import require
from attnreg_longformer.masks import layer_masks
from attnreg_longformer.pattern import layer_pattern
from attnreg_longformer.probs import transformers_probs


class LongformerSelfAttention(nn.Module):
    """Sliding-window + symmetric global self-attention with transformers' Longformer interface.

    Global rows use ``query_global``/``key_global``/``value_global`` over every real token; the global projections
    are skipped when the encoder says no example has a global token (``is_global_attn=False``).
    """

    #: A bound on global tokens per example: with it, nothing is read back from the device (see attnreg.attention).
    attnreg_max_globals: int | None = None

    def __init__(self, config, layer_id: int) -> None:
        super().__init__()
        require(
            config.hidden_size % config.num_attention_heads == 0,
            "config.hidden_size",
            config.hidden_size,
            f"expected a multiple of config.num_attention_heads={config.num_attention_heads}",
        )
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.embed_dim = config.hidden_size
        self.query = nn.Linear(config.hidden_size, self.embed_dim)
        self.key = nn.Linear(config.hidden_size, self.embed_dim)
        self.value = nn.Linear(config.hidden_size, self.embed_dim)
        self.query_global = nn.Linear(config.hidden_size, self.embed_dim)
        self.key_global = nn.Linear(config.hidden_size, self.embed_dim)
        self.value_global = nn.Linear(config.hidden_size, self.embed_dim)
        self.dropout = config.attention_probs_dropout_prob
        self.layer_id = layer_id
        self.pattern = layer_pattern(config.attention_window, layer_id)
        self.one_sided_attn_window_size = self.pattern.window.left
        self.config = config
        #: The batch's prepared masks; a built model gives all its layers one (see attnreg.nn.SharedBatch).
        self.attnreg_batch = SharedBatch()

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        is_index_masked: torch.Tensor | None = None,
        is_index_global_attn: torch.Tensor | None = None,
        is_global_attn: bool | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """``(output,)``, plus local and (with global tokens) global probabilities with ``output_attentions``.

        ``attention_mask`` is transformers' layer mask ``(batch, length)``: negative padding, 0 local, positive global.
        In training the local and global probabilities are dropped with ``attention_probs_dropout_prob``, as
        transformers does, on the engine the dispatcher picks; returned probabilities are then the dropped ones.
        """
        require(
            isinstance(hidden_states, torch.Tensor)
            and hidden_states.dim() == 3
            and hidden_states.shape[-1] == self.embed_dim,
            "hidden_states.shape",
            tuple(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else hidden_states,
            f"expected (batch, length, {self.embed_dim})",
        )
        batch, length, _ = hidden_states.shape
        masks = layer_masks((batch, length), attention_mask, is_index_masked, is_index_global_attn, is_global_attn)
        global_qkv = None
        if masks.global_mask is None:
            q, k, v = self._project(hidden_states, (self.query, self.key, self.value))
        else:
            linears = (self.query, self.key, self.value, self.key_global, self.value_global)
            q, k, v, global_k, global_v = self._project(hidden_states, linears)
            global_qkv = (self._global_queries(hidden_states, masks.global_mask), global_k, global_v)
        batch_masks = {"attention_mask": masks.real, "global_mask": masks.global_mask}
        if masks.global_mask is not None:
            batch_masks["max_globals"] = self.attnreg_max_globals
        source = is_index_masked if is_index_masked is not None else attention_mask
        prepared = self.attnreg_batch.prepare(source, self.pattern, length, **batch_masks)
        inputs = {"global_qkv": global_qkv, "dropout_p": self.dropout if self.training else 0.0}

        if not output_attentions:
            out = attnreg.attention(q, k, v, prepared, **inputs)
            return (self._merge_heads(out),)

        out, weights = attnreg.attention_weights(q, k, v, prepared, **inputs)
        local, global_ = transformers_probs(weights, masks.global_mask, self.one_sided_attn_window_size)
        outputs = (self._merge_heads(out), local)
        if masks.global_mask is not None and (is_global_attn or bool(masks.global_mask.any())):
            outputs += (global_,)
        return outputs

    def _project(self, hidden_states: torch.Tensor, linears: tuple[nn.Module, ...]) -> tuple[torch.Tensor, ...]:
        """``linears`` on ``hidden_states`` (one matmul when they are plain ``nn.Linear``), each ``(batch, heads,
        length, head_dim)``."""
        return project_linears(hidden_states, linears, num_heads=self.num_heads, head_dim=self.head_dim)

    def _global_queries(self, hidden_states: torch.Tensor, global_mask: torch.Tensor) -> torch.Tensor:
        """``query_global`` of the global rows ``(batch, heads, length, head_dim)``; other rows are never read.

        Only the global rows are projected (as transformers does) when their number is bounded by
        ``attnreg_max_globals`` or can be read without a device sync; otherwise every row, with no read.
        """
        batch, length, _ = hidden_states.shape
        count = self.attnreg_max_globals
        if count is None and host.host_readable(global_mask):
            count = int(global_mask.sum(dim=-1).max())
        if count is None:
            (queries,) = self._project(hidden_states, (self.query_global,))
            return queries
        count = min(count, length)
        order, filled = self.pattern.selected_globals.slots(global_mask, count)
        index = order[..., None].expand(batch, count, self.embed_dim)
        rows = self.query_global(hidden_states.gather(1, index)) * filled[..., None]
        queries = rows.new_zeros(batch, length, self.embed_dim).scatter(1, index, rows)
        return queries.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge_heads(self, out: torch.Tensor) -> torch.Tensor:
        batch, _, length, _ = out.shape
        return out.transpose(1, 2).reshape(batch, length, self.embed_dim)
