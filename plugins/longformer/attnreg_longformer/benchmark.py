"""Layer benchmark cases: attnreg's Longformer layer and transformers' on the same weights (hidden 768, 12 heads).

Window 512 as ``longformer-base-4096``; attention dropout off so that forward + backward runs the same maths
on both sides.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LongformerConfig
from transformers.models.longformer import modeling_longformer

from attnreg_longformer.layer import LongformerSelfAttention

HIDDEN, HEADS, WINDOW = 768, 12, 512


def make_layer_cases(
    length: int, *, batch: int, device: str | torch.device, dtype: torch.dtype, num_globals: int
) -> dict[str, tuple[torch.nn.Module, dict[str, Any]]]:
    """``{"attnreg": ..., "transformers": ...}`` with ``num_globals`` global tokens at the start of each example.

    transformers' layer needs a multiple of the window: its input is padded up to one (padding masked), as
    ``LongformerModel`` does; attnreg's takes ``length`` as is.
    """
    config = LongformerConfig(
        hidden_size=HIDDEN, num_attention_heads=HEADS, attention_window=[WINDOW], attention_probs_dropout_prob=0.0
    )
    theirs = modeling_longformer.LongformerSelfAttention(config, layer_id=0).to(device=device, dtype=dtype).eval()
    ours = LongformerSelfAttention(config, layer_id=0).to(device=device, dtype=dtype).eval()
    ours.load_state_dict(theirs.state_dict())
    generator = torch.Generator().manual_seed(0)
    padded = -(-length // WINDOW) * WINDOW
    hidden = torch.randn(batch, padded, HIDDEN, generator=generator).to(device=device, dtype=dtype)
    return {
        "attnreg": (ours, _kwargs(hidden[:, :length], num_globals)),
        "transformers": (theirs, _kwargs(hidden, num_globals, real=length)),
    }


def _kwargs(hidden: torch.Tensor, num_globals: int, real: int | None = None) -> dict[str, Any]:
    batch, length, _ = hidden.shape
    mask = torch.zeros(batch, length, dtype=hidden.dtype, device=hidden.device)
    mask[:, :num_globals] = torch.finfo(hidden.dtype).max
    if real is not None:
        mask[:, real:] = torch.finfo(hidden.dtype).min
    return {
        "hidden_states": hidden.detach().requires_grad_(hidden.is_floating_point()),
        "attention_mask": mask,
        "is_index_masked": mask < 0,
        "is_index_global_attn": mask > 0,
        "is_global_attn": num_globals > 0,
    }


def with_one_global(length: int, *, batch: int, device: str | torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Longformer layer, window 512, one global token per example (a classification token)."""
    return make_layer_cases(length, batch=batch, device=device, dtype=dtype, num_globals=1)


def without_globals(length: int, *, batch: int, device: str | torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Longformer layer, window 512, no global token (sliding window only)."""
    return make_layer_cases(length, batch=batch, device=device, dtype=dtype, num_globals=0)
