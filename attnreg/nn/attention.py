"""``PatternAttention``: self-attention under an attnreg pattern, in attnreg's conventions.

Its native call is ``attn(x, attention_mask=None, global_mask=None)`` with attnreg's masks (True = real token, True =
global) and returns the output alone. ``nn.MultiheadAttention``'s call is the adapter's,
:class:`attnreg.nn.MultiheadPatternAttention`. The parameter names are MHA's (``in_proj_weight``, ``in_proj_bias``,
``out_proj``) so an MHA state dict loads, plus the pattern's own (bias tables, global projections, aggregated norm).
"""

from __future__ import annotations

import torch
from torch import nn

from attnreg._validation import require, require_int
from attnreg.execution.dropout import check_dropout_p
from attnreg.functional import attention, attention_weights
from attnreg.nn.projections import project_heads
from attnreg.pattern.spec import Pattern


class PatternAttention(nn.Module):
    """Multi-head self-attention whose query-key structure is ``pattern``: ``attn(x, attention_mask, global_mask)``.

    ``x`` is ``(batch, length, embed_dim)``; ``attention_mask`` ``(batch, length)`` is True (or 1) for real tokens,
    ``global_mask`` True for selected global tokens; the result is ``(batch, length, embed_dim)``, from the fast
    engines. Padded query positions give ``out_proj``'s bias (their attention output is zero). ``dropout`` drops
    attention probabilities in training mode only, as ``nn.Dropout`` does: eval mode runs exactly as ``dropout=0``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        pattern: Pattern,
        *,
        bias: bool = True,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
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
        self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, global_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The attention output ``(batch, length, embed_dim)`` of ``x`` under the pattern and the batch's masks."""
        self._check_input(x, "x", "(batch, length")
        require(
            attention_mask is None
            or (isinstance(attention_mask, torch.Tensor) and tuple(attention_mask.shape) == tuple(x.shape[:2])),
            "attention_mask.shape",
            tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else attention_mask,
            f"expected (batch, length) = {tuple(x.shape[:2])}, True for real tokens (nn.MultiheadAttention's call, "
            "(query, key, value, key_padding_mask=...), is attnreg.nn.MultiheadPatternAttention's)",
        )
        return self._attend(x, attention_mask, global_mask)[0]

    def _check_input(self, x: torch.Tensor, name: str, layout: str) -> None:
        """``x`` is a padded 3-D tensor of ``embed_dim`` features (``layout`` names its first two axes)."""
        nested = isinstance(x, torch.Tensor) and x.is_nested
        require(not nested, name, "a nested tensor", "pass a padded tensor and a mask of its real tokens")
        require(
            isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[-1] == self.embed_dim,
            f"{name}.shape",
            tuple(x.shape) if isinstance(x, torch.Tensor) else x,
            f"expected {layout}, {self.embed_dim}) (unbatched and nested inputs are not supported)",
        )

    def _attend(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None,
        global_mask: torch.Tensor | None,
        *,
        dense_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(output, None)`` from the fast engines, or with ``dense_weights`` ``(output, per-head weights)`` from the
        reference engine, O(length²); ``x`` is ``(batch, length, embed_dim)``."""
        batch, length, _ = x.shape
        inputs = self._pattern_inputs(x, attention_mask, global_mask)
        dropout_p = self.dropout if self.training else 0.0
        q, k, v = self._heads(x, self.in_proj_weight, self.in_proj_bias)
        weights = None
        if dense_weights:
            out, weights = attention_weights(q, k, v, self.pattern, dropout_p=dropout_p, **inputs)
        else:
            out = attention(q, k, v, self.pattern, dropout_p=dropout_p, **inputs)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, self.embed_dim)), weights

    def _heads(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """``x`` projected by ``weight`` (one matmul) into ``(batch, heads, length, head_dim)`` parts."""
        return project_heads(x, weight, bias, num_heads=self.num_heads, head_dim=self.head_dim)

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
