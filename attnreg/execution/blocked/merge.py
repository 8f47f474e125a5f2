"""Merging attention parts computed apart (window, global keys, aggregated keys) by their log-sum-exp."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Part:
    """One part's output ``(batch, heads, length, dim)``, fp32 log-sum-exp ``(batch, heads, length)``, and
    ``has_keys`` (broadcastable bool, or ``None`` for always): rows without any allowed key contribute nothing."""

    out: torch.Tensor
    lse: torch.Tensor
    has_keys: torch.Tensor | None = None


def merge(parts: list[Part]) -> torch.Tensor:
    """The softmax over the union of the parts' keys, from each part's softmax and log-sum-exp.

    Computed in fp32 (fp64 stays fp64). Rows where no part has a key give zeros, never NaN.
    """
    compute = torch.promote_types(parts[0].out.dtype, torch.float32)
    if len(parts) == 1:
        return parts[0].out.to(compute)
    lses = []
    for part in parts:
        lse = part.lse
        if part.has_keys is not None:
            lse = lse.masked_fill(~part.has_keys, float("-inf"))
        lses.append(lse)
    stacked = torch.stack(lses).to(compute)
    peak = stacked.detach().amax(dim=0)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    weights = torch.exp(stacked - peak)
    weights = weights / weights.sum(dim=0).clamp_min(torch.finfo(weights.dtype).tiny)
    merged = parts[0].out.to(compute) * weights[0].unsqueeze(-1)
    for weight, part in zip(weights[1:].unbind(0), parts[1:], strict=True):
        merged = torch.addcmul(merged, part.out.to(compute), weight.unsqueeze(-1))
    return merged
