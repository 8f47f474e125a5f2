"""Layer benchmark cases: attnreg's LongT5 encoder self-attention and transformers' on the same weights.

The size of ``google/long-t5-*-base``'s sibling used across the project (d_model 512, 8 heads of 64, radius 127,
global blocks of 16); the first layer, which owns the bias tables; attention dropout off so both run the same maths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import LongT5Config
from transformers.models.longt5 import modeling_longt5

from attnreg_longt5.layers import LongT5LocalAttention, LongT5TransientGlobalAttention

BENCH_CONFIG = {"d_model": 512, "num_heads": 8, "d_kv": 64, "local_radius": 127, "global_block_size": 16}

_CLASSES = {
    "longt5-local": ("local", modeling_longt5.LongT5LocalAttention, LongT5LocalAttention),
    "longt5-tglobal": (
        "transient-global",
        modeling_longt5.LongT5TransientGlobalAttention,
        LongT5TransientGlobalAttention,
    ),
}


def make_layer_cases(
    name: str, length: int, *, batch: int, device: str | torch.device, dtype: torch.dtype
) -> dict[str, tuple[torch.nn.Module, dict[str, Any]]]:
    """``{"attnreg": ..., "transformers": ...}``: one layer each, same weights, each fed the mask its stack gives it.

    The local layers get transformers' blocked local mask, the Transient-Global ones the ``(batch, length)`` mask.
    """
    attention_type, theirs_class, ours_class = _CLASSES[name]
    config = LongT5Config(**BENCH_CONFIG, encoder_attention_type=attention_type, dropout_rate=0.0)
    theirs = theirs_class(config, has_relative_attention_bias=True).to(device=device, dtype=dtype).eval()
    ours = ours_class(config, has_relative_attention_bias=True).to(device=device, dtype=dtype).eval()
    ours.load_state_dict(theirs.state_dict())
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(batch, length, config.d_model, generator=generator).to(device=device, dtype=dtype)
    mask = torch.ones(batch, length, device=device)
    if attention_type == "local":
        mask = modeling_longt5._get_local_attention_mask(mask, config.local_radius + 1, hidden.device)

    def kwargs() -> dict[str, Any]:
        return {"hidden_states": hidden.detach().requires_grad_(), "mask": mask}

    return {"attnreg": (ours, kwargs()), "transformers": (theirs, kwargs())}


def cases_for(name: str) -> Callable[..., dict[str, tuple[torch.nn.Module, dict[str, Any]]]]:
    """The ``make_cases`` registered for ``name``."""

    def make_cases(
        length: int, *, batch: int, device: str | torch.device, dtype: torch.dtype
    ) -> dict[str, tuple[torch.nn.Module, dict[str, Any]]]:
        return make_layer_cases(name, length, batch=batch, device=device, dtype=dtype)

    make_cases.__doc__ = f"{name} encoder self-attention layer, d_model 512, 8 heads, radius 127, global blocks 16."
    return make_cases
