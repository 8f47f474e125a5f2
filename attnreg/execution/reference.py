"""The reference engine: materialise the pattern densely and run plain softmax attention. Exact, O(n²), for tests."""

from __future__ import annotations

import torch

from attnreg.execution.call import AttentionCall
from attnreg.execution.dropout import draw_keep
from attnreg.execution.engine import Engine


def softmax_rows(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over the allowed entries of each row; a row with nothing allowed gives zeros, never NaN."""
    scores = scores.masked_fill(~allowed, float("-inf"))
    peak = scores.amax(dim=-1, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    weights = torch.exp(scores - peak)
    return weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)


def reference_weights(call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention weights ``(batch, heads, length, length + count)`` and the output, both from the dense layout.

    With dropout, the weights are the dropped ones (kept weights scaled by ``1 / (1 - p)``) the output comes from.
    """
    layout = call.materialize()
    compute = torch.promote_types(call.dtype, torch.float32)  # softmax in fp32 (fp64 stays fp64)
    bias = None
    if call.bias_weight is not None or call.aggregated_bias_weight is not None or call.pattern.score_terms:
        bias = layout.bias(call.bias_weight, call.aggregated_bias_weight, call.num_heads).to(compute)
    allowed = layout.allowed[:, None]

    def softmax(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        scores = (q.to(compute) @ k.to(compute).transpose(-1, -2)) * call.scale
        if call.pattern.softcap is not None:
            scores = torch.tanh(scores / call.pattern.softcap) * call.pattern.softcap
        if bias is not None:
            scores = scores + bias
        return softmax_rows(scores, allowed)

    k, v = call.with_aggregated(call.k, call.v)
    weights = softmax(call.q, k)
    rows = global_v = None
    if call.has_global_projections:
        rows = layout.global_rows[:, None, :, None]
        global_k, global_v = call.with_aggregated(call.global_k, call.global_v)
        weights = torch.where(rows, softmax(call.global_q, global_k), weights)
    if call.dropout is not None:
        keep = call.dropout.keep
        if keep is None:
            keep = draw_keep(tuple(weights.shape), call.dropout.p, call.device)
        weights = weights * keep * call.dropout.scale
    out = weighted_values(weights, v.to(compute))
    if rows is not None:
        out = torch.where(rows, weighted_values(weights, global_v.to(compute)), out)
    return weights, out.to(call.dtype)


def weighted_values(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``weights @ values``, where a non-finite value reaches only the rows that give it weight: a key a query does
    not see (weight 0) never makes its output NaN (``0 * nan`` would); a row that sees one is NaN."""
    finite = torch.isfinite(values).all(dim=-1)
    out = weights @ torch.where(finite[..., None], values, torch.zeros((), dtype=values.dtype, device=values.device))
    poisoned = ((weights != 0) & ~finite[..., None, :]).any(dim=-1, keepdim=True)
    return out.masked_fill(poisoned, float("nan"))


def reference_attention(call: AttentionCall) -> torch.Tensor:
    """The exact output ``(batch, heads, length, head_dim)`` of ``call``, forward and backward."""
    return reference_weights(call)[1]


class ReferenceEngine(Engine):
    """Dense materialisation: always correct, quadratic in time and memory."""

    name = "reference"
    description = "dense materialised mask and bias, O(n^2); the ground truth"
    last_resort = True
    supports_dropout = True
    supports_dropout_mask = True
    quadratic_memory = True

    def unsupported_reasons(self, call: AttentionCall) -> list[str]:
        return []

    def estimated_cost(self, call: AttentionCall) -> float:
        keys = call.length + call.count
        passes = 2 if call.has_global_projections else 1
        # Unfused matmuls plus several elementwise passes over the (n x n) scores: ~5 GFLOP/s effective on CPU.
        work = passes * call.batch * call.num_heads * call.length * keys * (4 * call.head_dim + 40)
        return work / (5e9 if call.device.type == "cpu" else 5e11)

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        return reference_attention(call)
