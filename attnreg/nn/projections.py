"""Projections to attention heads: several linear layers on one input as a single matmul.

One ``(length, in) @ (in, parts · heads · head_dim)`` product is faster than ``parts`` separate ones, forward and
backward (the input's gradient is one matmul instead of a sum of several). The per-part heads are views, no copies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attnreg._deprecation import renamed_keywords
from attnreg._validation import require


@renamed_keywords(heads="num_heads")
def project_heads(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, num_heads: int, head_dim: int
) -> tuple[torch.Tensor, ...]:
    """``F.linear(x, weight, bias)`` on ``(batch, length, in)``, cut into ``weight.shape[0] // (num_heads ·
    head_dim)`` parts, each a ``(batch, num_heads, length, head_dim)`` view."""
    require(
        weight.dim() == 2 and weight.shape[0] % (num_heads * head_dim) == 0,
        "weight.shape",
        tuple(weight.shape),
        f"expected (parts * num_heads * head_dim, in) with num_heads={num_heads}, head_dim={head_dim}",
    )
    batch, length, _ = x.shape
    parts = weight.shape[0] // (num_heads * head_dim)
    packed = F.linear(x, weight, bias).view(batch, length, parts, num_heads, head_dim)
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


def fusable(module: nn.Module) -> bool:
    """Whether ``module`` is a plain ``nn.Linear`` whose weights may be read instead of calling it: not a subclass
    (LoRA, quantised layers compute more than ``weight``), and no hooks (they would be skipped)."""
    hooks = (module._forward_hooks, module._forward_pre_hooks, nn.modules.module._global_forward_hooks)
    return type(module) is nn.Linear and not any(hooks) and not nn.modules.module._global_forward_pre_hooks


@renamed_keywords(heads="num_heads")
def project_linears(
    x: torch.Tensor, linears: Sequence[nn.Module], *, num_heads: int, head_dim: int
) -> tuple[torch.Tensor, ...]:
    """Each of ``linears`` on ``x`` ``(batch, length, in)`` as ``(batch, num_heads, length, head_dim)`` views: one
    matmul when all are plain ``nn.Linear`` (see :func:`fusable`), else each module called as it is."""
    if all(fusable(linear) for linear in linears):
        return project_heads(x, *stacked(linears), num_heads=num_heads, head_dim=head_dim)
    batch, length, _ = x.shape
    return tuple(linear(x).view(batch, length, num_heads, head_dim).transpose(1, 2) for linear in linears)
