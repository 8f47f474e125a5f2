"""``attnreg.nn.project_heads`` and ``stacked``: several projections as one matmul, equal to each on its own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnreg.nn import project_heads, stacked


@pytest.mark.parametrize("biases", [(True, True, True), (False, False, False), (True, False, True)])
def test_one_matmul_equals_each_projection_forward_and_backward(biases: tuple[bool, ...]) -> None:
    torch.manual_seed(0)
    heads, head_dim = 2, 3
    linears = [nn.Linear(5, heads * head_dim, bias=bias) for bias in biases]
    x = torch.randn(2, 7, 5, requires_grad=True)
    parts = project_heads(x, *stacked(linears), heads=heads, head_dim=head_dim)
    assert len(parts) == 3
    expected = [linear(x).view(2, 7, heads, head_dim).transpose(1, 2) for linear in linears]
    for got, want in zip(parts, expected, strict=True):
        assert got.shape == (2, heads, 7, head_dim)
        torch.testing.assert_close(got, want)
    weights = [torch.randn_like(p) for p in parts]
    fused = torch.autograd.grad(
        sum((p * w).sum() for p, w in zip(parts, weights, strict=True)),
        [x, *(parameter for linear in linears for parameter in linear.parameters())],
    )
    separate = torch.autograd.grad(
        sum((e * w).sum() for e, w in zip(expected, weights, strict=True)),
        [x, *(parameter for linear in linears for parameter in linear.parameters())],
    )
    for got, want in zip(fused, separate, strict=True):
        torch.testing.assert_close(got, want)


def test_stacked_without_any_bias_gives_none() -> None:
    weight, bias = stacked([nn.Linear(4, 4, bias=False), nn.Linear(4, 2, bias=False)])
    assert weight.shape == (6, 4)
    assert bias is None
