"""Reading transformers' Longformer layer inputs as attnreg masks, without a host sync.

``LongformerModel`` hands each layer an extended float mask: negative for padding, zero for local tokens,
positive for global tokens, plus the derived ``is_index_masked`` / ``is_index_global_attn`` / ``is_global_attn``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnreg.validation import require


@dataclass(frozen=True)
class LayerMasks:
    """Attnreg masks, ``(batch, length)``: ``real`` tokens (``None``: all), ``global_mask`` (``None``: no globals)."""

    real: torch.Tensor | None
    global_mask: torch.Tensor | None


def layer_masks(
    shape: tuple[int, int],
    attention_mask: torch.Tensor | None = None,
    is_index_masked: torch.Tensor | None = None,
    is_index_global_attn: torch.Tensor | None = None,
    is_global_attn: bool | None = None,
) -> LayerMasks:
    """The attnreg masks for transformers' layer arguments; the explicit ``is_index_*`` win over ``attention_mask``.

    ``is_global_attn=False`` (the encoder's batch-wide flag) drops the global mask, so no global work is done.
    """
    for name, mask in (
        ("attention_mask", attention_mask),
        ("is_index_masked", is_index_masked),
        ("is_index_global_attn", is_index_global_attn),
    ):
        if mask is not None:
            require(
                isinstance(mask, torch.Tensor) and tuple(mask.shape) == shape,
                f"{name}.shape",
                tuple(mask.shape) if isinstance(mask, torch.Tensor) else mask,
                f"expected (batch, length) = {shape}: negative for padding, 0 local, positive global",
            )
    if is_index_masked is None and attention_mask is not None:
        is_index_masked = attention_mask < 0
    if is_index_global_attn is None and attention_mask is not None:
        is_index_global_attn = attention_mask > 0
    real = None if is_index_masked is None else ~is_index_masked.bool()
    global_mask = None if is_global_attn is False or is_index_global_attn is None else is_index_global_attn.bool()
    return LayerMasks(real=real, global_mask=global_mask)
