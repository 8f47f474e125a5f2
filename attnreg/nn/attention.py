"""``PatternAttention``: self-attention under an attnreg pattern, a drop-in for ``torch.nn.MultiheadAttention``.

It keeps MHA's parameter names (``in_proj_weight``, ``in_proj_bias``, ``out_proj``) so an MHA state dict loads,
and adds the pattern's own parameters (bias tables, global projections, the aggregated-token norm).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from attnreg._validation import PatternError, require, require_int
from attnreg.execution.dropout import check_dropout_p
from attnreg.functional import attention, attention_weights
from attnreg.nn.masks import check_attn_mask, real_tokens
from attnreg.nn.projections import project_heads
from attnreg.pattern.spec import Pattern
from attnreg.pinning import pinned_backend


class PatternAttention(nn.Module):
    """Multi-head self-attention whose query-key structure is ``pattern``; forward and results as MHA's.

    ``forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False, global_mask=None)`` returns ``(output, weights or None)``.
    ``key`` and ``value`` must be ``query`` itself (self-attention). ``key_padding_mask`` is PyTorch's (True = pad);
    ``global_mask`` (True = global) marks selected global tokens. The output always comes from the fast engines.
    Dense weights are an opt-in, ``dense_weights=True``: then ``need_weights=True`` (MHA's default) computes them on
    the reference engine, O(length²) in time and memory (at 4,096 tokens about 50x slower than without). Without
    it the weights are ``None`` (a warning says so once per module when ``need_weights=True`` is passed).
    Padded query positions give ``out_proj``'s bias (their attention output is zero), where MHA gives a value.
    ``dropout`` drops attention probabilities in training mode only, as ``nn.Dropout`` and MHA do: eval mode runs
    exactly as ``dropout=0``; the weights returned in training are the dropped ones, as MHA returns them.
    """

    #: False so that ``nn.TransformerEncoderLayer``'s fused fast path, which would bypass the pattern, is not taken.
    _qkv_same_embed_dim = False

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        pattern: Pattern,
        *,
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = True,
        dense_weights: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        require(isinstance(dense_weights, bool), "dense_weights", dense_weights, "expected True or False")
        self.dense_weights = dense_weights
        self._said_no_weights = False
        require_int("embed_dim", embed_dim, minimum=1)
        require_int("num_heads", num_heads, minimum=1)
        require(embed_dim % num_heads == 0, "num_heads", num_heads, f"must divide embed_dim={embed_dim}")
        require(isinstance(pattern, Pattern), "pattern", pattern, "expected an attnreg.Pattern")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.pattern = pattern
        self.dropout = check_dropout_p("dropout", dropout)
        self.batch_first = batch_first
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim, **factory)) if bias else None
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        nn.init.xavier_uniform_(self.in_proj_weight)
        if bias:
            nn.init.zeros_(self.out_proj.bias)
        self._add_pattern_parameters(bias, factory)

    def _add_pattern_parameters(self, bias: bool, factory: dict) -> None:
        """The parameters the pattern's parts need; bias tables start at zero, global projections as the local ones."""
        pattern, heads = self.pattern, self.num_heads
        self.relative_attention_bias = None
        self.aggregated_attention_bias = None
        self.global_in_proj_weight = None
        self.global_in_proj_bias = None
        self.aggregated_norm = None
        if pattern.bias is not None:
            self.relative_attention_bias = nn.Parameter(torch.zeros(pattern.bias.num_buckets, heads, **factory))
        if pattern.aggregated_bias is not None:
            table = torch.zeros(pattern.aggregated_bias.num_buckets, heads, **factory)
            self.aggregated_attention_bias = nn.Parameter(table)
        if pattern.selected_globals is not None and pattern.selected_globals.own_projections:
            self.global_in_proj_weight = nn.Parameter(self.in_proj_weight.detach().clone())
            if bias:
                self.global_in_proj_bias = nn.Parameter(self.in_proj_bias.detach().clone())
        if pattern.aggregated_globals is not None:
            self.aggregated_norm = nn.RMSNorm(self.embed_dim, **factory)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, pattern={self.pattern!r}"

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
        global_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(output, weights)`` as ``nn.MultiheadAttention`` returns them; ``weights`` is ``None`` unless asked for."""
        self._check_inputs(query, key, value)
        x = query if self.batch_first else query.transpose(0, 1)
        batch, length, _ = x.shape
        check_attn_mask(attn_mask, is_causal, self.pattern, length)
        inputs = self._pattern_inputs(x, real_tokens(key_padding_mask, batch, length), global_mask)
        dropout_p = self.dropout if self.training else 0.0
        q, k, v = self._heads(x, self.in_proj_weight, self.in_proj_bias)
        weights = None
        if need_weights and self.dense_weights:
            pinned = pinned_backend()
            require(
                pinned is None,
                "need_weights",
                need_weights,
                f"False inside attnreg.backend({pinned!r}): with dense_weights=True the weights come from the dense "
                f"reference engine, and the block pins {', '.join(pinned or ())}",
            )
            out, weights = attention_weights(q, k, v, self.pattern, dropout_p=dropout_p, **inputs)
            weights = weights.mean(dim=1) if average_attn_weights else weights
        else:
            if need_weights:
                self._say_no_weights()
            out = attention(q, k, v, self.pattern, dropout_p=dropout_p, **inputs)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, self.embed_dim))
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def _say_no_weights(self) -> None:
        """Warn once that ``need_weights=True`` gave no weights (the fast engines have none to give)."""
        if self._said_no_weights or torch.compiler.is_compiling():
            return
        self._said_no_weights = True
        warnings.warn(
            "PatternAttention: need_weights=True returns weights=None (the output comes from the fast engines); "
            "build it with dense_weights=True (or attnreg.swap(..., dense_weights=True)) for the dense weights, "
            "O(length^2), or pass need_weights=False",
            stacklevel=4,
        )

    def _check_inputs(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        nested = isinstance(query, torch.Tensor) and query.is_nested
        require(not nested, "query", "a nested tensor", "pass a padded tensor and key_padding_mask")
        require(
            isinstance(query, torch.Tensor) and query.dim() == 3 and query.shape[-1] == self.embed_dim,
            "query.shape",
            tuple(query.shape) if isinstance(query, torch.Tensor) else query,
            f"expected {'(batch, length' if self.batch_first else '(length, batch'}, {self.embed_dim}) "
            "(unbatched and nested inputs are not supported)",
        )
        if key is not query or value is not query:
            raise PatternError(
                "key/value that are not the query tensor itself are not allowed: PatternAttention is self-attention "
                "(call it as attn(x, x, x)); cross-attention cannot take a pattern's query-key structure"
            )

    def _heads(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """``x`` projected by ``weight`` (one matmul) into ``(batch, heads, length, head_dim)`` parts."""
        return project_heads(x, weight, bias, heads=self.num_heads, head_dim=self.head_dim)

    def _pattern_inputs(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None, global_mask: torch.Tensor | None
    ) -> dict[str, object]:
        """The keyword inputs of :func:`attnreg.attention` that the pattern's parts need."""
        inputs: dict[str, object] = {"attention_mask": attention_mask, "global_mask": global_mask}
        if self.relative_attention_bias is not None:
            inputs["bias_weight"] = self.relative_attention_bias
        if self.aggregated_attention_bias is not None:
            inputs["aggregated_bias_weight"] = self.aggregated_attention_bias
        if self.global_in_proj_weight is not None and global_mask is not None:
            inputs["global_qkv"] = self._heads(x, self.global_in_proj_weight, self.global_in_proj_bias)
        if self.aggregated_norm is not None:
            inputs["aggregated_kv"] = self._aggregated_kv(x, attention_mask)
        return inputs

    def _aggregated_kv(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Aggregated tokens' keys and values ``(batch, heads, count, head_dim)``: block sums, normed, projected."""
        dim = x.shape[-1]
        tokens = self.aggregated_norm(self.pattern.aggregated_globals.aggregate(x, attention_mask))
        weight = self.in_proj_weight[dim:]
        bias = None if self.in_proj_bias is None else self.in_proj_bias[dim:]
        return self._heads(tokens, weight, bias)
