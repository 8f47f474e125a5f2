"""Projections to attention heads: several linear layers on one input as a single matmul.

One ``(length, in) @ (in, parts · heads · head_dim)`` product is faster than ``parts`` separate ones, forward and
backward (the input's gradient is one matmul instead of a sum of several). The per-part heads are views, no copies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def project_heads(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, heads: int, head_dim: int
) -> tuple[torch.Tensor, ...]:
    """``F.linear(x, weight, bias)`` on ``(batch, length, in)``, cut into ``weight.shape[0] // (heads · head_dim)``
    parts, each a ``(batch, heads, length, head_dim)`` view."""
    batch, length, _ = x.shape
    parts = weight.shape[0] // (heads * head_dim)
    packed = F.linear(x, weight, bias).view(batch, length, parts, heads, head_dim)
    return tuple(packed.permute(2, 0, 3, 1, 4).unbind(0))


def stacked(linears: Sequence[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weights and biases of ``linears`` stacked for :func:`project_heads` (differentiable: the gradients reach
    each layer's own parameters)."""
    weight = torch.cat([linear.weight for linear in linears])
    if all(linear.bias is None for linear in linears):
        return weight, None
    biases = [
        linear.weight.new_zeros(linear.out_features) if linear.bias is None else linear.bias for linear in linears
    ]
    return weight, torch.cat(biases)
