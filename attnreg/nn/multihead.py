"""``MultiheadPatternAttention``: :class:`PatternAttention` called as ``torch.nn.MultiheadAttention`` (``swap``'s).

Why an adapter: MHA's call (``query, key, value``, PyTorch's masks, ``(output, weights)``) is what
``nn.TransformerEncoderLayer`` and users' models make; the pattern's own call stays in attnreg's conventions. It is a
subclass, so the parameters keep their names and MHA's state dicts load as they do into :class:`PatternAttention`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from attnreg._validation import PatternError, require
from attnreg.nn.attention import PatternAttention
from attnreg.nn.masks import check_attn_mask, real_tokens
from attnreg.pattern.spec import Pattern
from attnreg.pinning import pinned_backend


class MultiheadPatternAttention(PatternAttention):
    """:class:`PatternAttention` with ``nn.MultiheadAttention``'s forward arguments and results, a drop-in for it.

    ``forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False, global_mask=None)`` returns ``(output, weights or None)``.
    ``key`` and ``value`` must be ``query`` itself (self-attention). ``key_padding_mask`` is PyTorch's (True or
    ``-inf`` = pad); ``attn_mask``/``is_causal`` are accepted only where the pattern is causal already. The output
    always comes from the fast engines. Dense weights are an opt-in, ``dense_weights=True``: then ``need_weights=True``
    (MHA's default) computes them on the reference engine, O(length²) in time and memory (at 4,096 tokens about 50x
    slower than without); inside ``attnreg.backend(...)`` that is an error. Without it the weights are ``None`` (a
    warning says so once per module). In training the weights returned are the dropped ones, as MHA returns them.
    """

    #: False so that ``nn.TransformerEncoderLayer``'s fused fast path, which would bypass the pattern, is not taken.
    _qkv_same_embed_dim = False

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        pattern: Pattern,
        *,
        batch_first: bool = True,
        dense_weights: bool = False,
        **options: Any,
    ) -> None:
        """``options`` are :class:`PatternAttention`'s: ``bias``, ``dropout``, ``device``, ``dtype``."""
        require(isinstance(batch_first, bool), "batch_first", batch_first, "expected True or False")
        require(isinstance(dense_weights, bool), "dense_weights", dense_weights, "expected True or False")
        super().__init__(embed_dim, num_heads, pattern, **options)
        self.batch_first = batch_first
        self.dense_weights = dense_weights
        self._said_no_weights = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, batch_first={self.batch_first}, dense_weights={self.dense_weights}"

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
        self._check_input(query, "query", "(batch, length" if self.batch_first else "(length, batch")
        if key is not query or value is not query:
            raise PatternError(
                "key/value that are not the query tensor itself are not allowed: MultiheadPatternAttention is "
                "self-attention (call it as attn(x, x, x)); cross-attention cannot take a pattern's query-key structure"
            )
        x = query if self.batch_first else query.transpose(0, 1)
        batch, length, _ = x.shape
        check_attn_mask(attn_mask, is_causal, self.pattern, length)
        attention_mask = real_tokens(key_padding_mask, batch, length)
        dense = need_weights and self._dense_weights_allowed()
        out, weights = self._attend(x, attention_mask, global_mask, dense_weights=dense)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def _dense_weights_allowed(self) -> bool:
        """Whether ``need_weights=True`` computes dense weights: with the opt-in, and never under a pinned engine."""
        if not self.dense_weights:
            self._say_no_weights()
            return False
        pinned = pinned_backend()
        require(
            pinned is None,
            "need_weights",
            True,
            f"False inside attnreg.backend({pinned!r}): with dense_weights=True the weights come from the dense "
            f"reference engine, and the block pins {', '.join(pinned or ())}",
        )
        return True

    def _say_no_weights(self) -> None:
        """Warn once that ``need_weights=True`` gave no weights (the fast engines have none to give)."""
        if self._said_no_weights or torch.compiler.is_compiling():
            return
        self._said_no_weights = True
        warnings.warn(
            "MultiheadPatternAttention: need_weights=True returns weights=None (the output comes from the fast "
            "engines); build it with dense_weights=True (or attnreg.swap(..., dense_weights=True)) for the dense "
            "weights, O(length^2), or pass need_weights=False",
            stacklevel=6,
        )
