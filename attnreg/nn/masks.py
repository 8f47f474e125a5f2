"""PyTorch's attention masks turned into attnreg's: ``key_padding_mask`` (True = pad) and a causal ``attn_mask``.

``nn.MultiheadAttention`` users pass masks in PyTorch's conventions; attnreg takes a ``(batch, length)`` mask of
real tokens and states causality in the pattern. What cannot be expressed that way is an error, never dropped.
"""

from __future__ import annotations

import torch

from attnreg._validation import PatternError, describe, require
from attnreg.pattern.spec import Pattern


def real_tokens(key_padding_mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor | None:
    """attnreg's ``attention_mask`` (True = real) from PyTorch's ``key_padding_mask`` (True or ``-inf`` = pad).

    A float mask (what ``nn.TransformerEncoder`` passes on) may hold only ``0`` and ``-inf``: other values are
    additive biases, which a pattern cannot take from a mask.
    """
    if key_padding_mask is None:
        return None
    require(
        isinstance(key_padding_mask, torch.Tensor) and tuple(key_padding_mask.shape) == (batch, length),
        "key_padding_mask.shape",
        tuple(key_padding_mask.shape) if isinstance(key_padding_mask, torch.Tensor) else key_padding_mask,
        f"expected (batch, length) = {(batch, length)}, True (or -inf) for padding",
    )
    if not key_padding_mask.is_floating_point():
        return ~key_padding_mask.bool()
    padded = torch.isneginf(key_padding_mask)
    if not torch.compiler.is_compiling():
        require(
            bool(((key_padding_mask == 0) | padded).all()),
            "key_padding_mask",
            "a float mask with values other than 0 and -inf",
            "a float key_padding_mask may only mark padding (-inf) and real tokens (0); additive biases are not "
            "supported by attnreg patterns",
        )
    return ~padded


def check_attn_mask(attn_mask: torch.Tensor | None, is_causal: bool, pattern: Pattern, length: int) -> None:
    """Accept ``attn_mask`` only when it says what the pattern already does: nothing, or causal with a causal pattern.

    Any other mask would have to be merged into the pattern; attnreg refuses rather than drop it.
    """
    causal_pattern = pattern.is_causal
    if attn_mask is None and not is_causal:
        return
    if not causal_pattern:
        raise PatternError(
            f"attn_mask={describe(attn_mask)} (is_causal={is_causal}) is not allowed: this pattern ({pattern!r}) "
            "is not causal, and an attention mask cannot be merged into it; put the structure in the pattern "
            "(e.g. Window(left, right=0) for a causal model) and pass attn_mask=None"
        )
    if attn_mask is None or torch.compiler.is_compiling():
        require(
            attn_mask is None or is_causal,
            "attn_mask",
            describe(attn_mask),
            "under torch.compile an attn_mask is only accepted with is_causal=True (it cannot be checked there)",
        )
        return
    require(
        tuple(attn_mask.shape) == (length, length),
        "attn_mask.shape",
        tuple(attn_mask.shape),
        f"expected the causal ({length}, {length}) mask; per-head 3-D masks cannot be merged into a pattern",
    )
    future = torch.ones(length, length, dtype=torch.bool, device=attn_mask.device).triu(1)
    blocked = attn_mask if attn_mask.dtype == torch.bool else torch.isneginf(attn_mask)
    allowed_values = attn_mask.dtype == torch.bool or bool(((attn_mask == 0) | blocked).all())
    require(
        allowed_values and bool((blocked == future).all()),
        "attn_mask",
        describe(attn_mask),
        "only the plain causal mask (what nn.Transformer.generate_square_subsequent_mask gives) is accepted, "
        "with a causal pattern; anything else must be expressed as the pattern",
    )
