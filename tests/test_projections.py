"""``attnreg.nn.project_heads`` and ``stacked``: several projections as one matmul, equal to each on its own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnreg import PatternError
from attnreg.nn import project_heads, project_linears, stacked
from attnreg.nn.projections import fusable


@pytest.mark.parametrize("biases", [(True, True, True), (False, False, False), (True, False, True)])
def test_one_matmul_equals_each_projection_forward_and_backward(biases: tuple[bool, ...]) -> None:
    torch.manual_seed(0)
    heads, head_dim = 2, 3
    linears = [nn.Linear(5, heads * head_dim, bias=bias) for bias in biases]
    x = torch.randn(2, 7, 5, requires_grad=True)
    parts = project_heads(x, *stacked(linears), num_heads=heads, head_dim=head_dim)
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


class _Scaled(nn.Linear):
    """A subclass computing more than its weight (as LoRA or a quantised layer does): it must be called."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_modules_that_are_not_plain_linears_or_have_hooks_are_called_as_they_are() -> None:
    torch.manual_seed(0)
    plain, scaled, hooked = nn.Linear(5, 6), _Scaled(5, 6), nn.Linear(5, 6)
    hooked.register_forward_hook(lambda module, args, out: out + 1)
    x = torch.randn(2, 7, 5)
    assert fusable(plain) and not fusable(scaled) and not fusable(hooked)
    parts = project_linears(x, [plain, scaled, hooked], num_heads=2, head_dim=3)
    for got, module in zip(parts, [plain, scaled, hooked], strict=True):
        torch.testing.assert_close(got, module(x).view(2, 7, 2, 3).transpose(1, 2))
    fused = project_linears(x, [plain, plain], num_heads=2, head_dim=3)
    torch.testing.assert_close(fused[1], plain(x).view(2, 7, 2, 3).transpose(1, 2))


def test_a_weight_that_is_not_whole_heads_is_an_error_naming_it() -> None:
    with pytest.raises(PatternError, match=r"weight.shape=\(7, 5\).*heads=2, head_dim=3"):
        project_heads(torch.randn(1, 4, 5), torch.randn(7, 5), None, num_heads=2, head_dim=3)
