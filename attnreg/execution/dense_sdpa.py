"""The dense SDPA engine: the mask and bias materialised as one 4-D tensor for ``scaled_dot_product_attention``.

Why: plain dense attention is what short sequences should run on (one fused kernel beats any blocking below a
few hundred tokens) and what the benchmarks compare the sparse engines against. O(n²) in time and memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnreg.execution.call import AttentionCall
from attnreg.execution.engine import Engine
from attnreg.pattern.dense import DenseLayout
from attnreg.pattern.parts import RelativePositionBias

#: Effective throughput of SDPA's fused kernels (FLOP/s), and of building the dense mask and bias (elements/s),
#: measured on a shared 2-core CPU (the bias costs a lookup, a copy and a masked fill per element).
_FLOPS = {"cpu": 80e9, "cuda": 2e13}
_MASK_ELEMENTS = {"cpu": 4e8, "cuda": 1e11}
_BIAS_ELEMENTS = {"cpu": 3e8, "cuda": 5e10}
_GRAD_FACTOR = 3.0
#: Materialising the layout: a few dozen small kernels (each a launch on CUDA).
_OVERHEAD_S = {"cpu": 40e-6, "cuda": 2e-4}


def toeplitz_bias(term: RelativePositionBias, weight: torch.Tensor, length: int) -> torch.Tensor:
    """The ``(heads, length, length)`` bias of ``j - i``, looked up once per distinct offset (O(length) buckets).

    Row ``i`` is the table of offsets ``-i .. length-1-i``: windows of one ``(heads, 2*length-1)`` table, rows reversed.
    """
    offsets = torch.arange(1 - length, length, device=weight.device)
    table = term.lookup(weight.float(), offsets)
    return table.unfold(1, length, 1).flip(1)


def dense_mask(call: AttentionCall, layout: DenseLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """The SDPA mask ``(batch, 1 or heads, length, length + count)`` and the ``(batch, 1, length, 1)`` empty rows.

    A row with no allowed key (a padded query) is given its own key so SDPA stays finite; the caller zeroes it.
    The mask is bool without a bias, and the bias with ``-inf`` outside the pattern (in the inputs' dtype) with one.
    """
    allowed = layout.allowed
    empty = ~allowed.any(dim=-1, keepdim=True)
    rows = torch.arange(call.length, device=call.device)
    cols = torch.arange(allowed.shape[-1], device=call.device)
    allowed = (allowed | (empty & (rows[:, None] == cols[None, :])))[:, None]
    if call.bias_weight is None and call.aggregated_bias_weight is None and not call.pattern.score_terms:
        return allowed, empty[:, None]
    n, pattern = call.length, call.pattern
    bias = torch.zeros(allowed.shape[0], call.num_heads, n, n + call.count, dtype=call.dtype, device=call.device)
    if call.bias_weight is not None:
        bias[..., :n] = toeplitz_bias(pattern.bias, call.bias_weight, n)
    if call.aggregated_bias_weight is not None:
        looked_up = pattern.aggregated_bias.lookup(
            call.aggregated_bias_weight.float(), layout.aggregated_relative_position
        )
        bias[..., n:] = looked_up.movedim(0, 1)
    for term in pattern.score_terms:
        bias[..., :n] += term.term(rows[:, None], rows[None, :], call.num_heads).to(call.dtype)
    return bias.masked_fill(~allowed, float("-inf")), empty[:, None]


def dense_sdpa_attention(call: AttentionCall) -> torch.Tensor:
    """The output ``(batch, heads, length, head_dim)`` of ``call`` by dense SDPA (a second call for global rows)."""
    layout = call.materialize()
    mask, empty = dense_mask(call, layout)
    k, v = call.with_aggregated(call.k, call.v)
    options = {"attn_mask": mask, "dropout_p": 0.0 if call.dropout is None else call.dropout.p, "scale": call.scale}
    out = F.scaled_dot_product_attention(call.q, k, v, **options)
    if call.has_global_projections:
        gk, gv = call.with_aggregated(call.global_k, call.global_v)
        global_out = F.scaled_dot_product_attention(call.global_q, gk, gv, **options)
        out = torch.where(layout.global_rows[:, None, :, None], global_out, out)
    return out.masked_fill(empty, 0.0)


class DenseSdpaEngine(Engine):
    """Plain dense ``scaled_dot_product_attention`` with the materialised mask: exact, fast on short sequences."""

    name = "dense-sdpa"
    description = "dense 4-D mask + bias into torch's scaled_dot_product_attention; O(n^2), best for short inputs"
    #: SDPA's own ``dropout_p`` (its own draws: explicit keep flags are refused).
    supports_dropout = True
    quadratic_memory = True

    def unsupported_reasons(self, call: AttentionCall) -> list[str]:
        if call.pattern.softcap is not None:
            return ["softcap transforms the scores, which scaled_dot_product_attention cannot do"]
        return []

    def estimated_cost(self, call: AttentionCall) -> float:
        device = "cuda" if call.device.type == "cuda" else "cpu"
        keys = call.length + call.count
        passes = 2 if call.has_global_projections else 1
        flops = passes * 4 * call.batch * call.num_heads * call.length * keys * call.head_dim
        tables = (call.bias_weight, call.aggregated_bias_weight)
        has_bias = any(t is not None for t in tables) or bool(call.pattern.score_terms)
        mask_elements = call.batch * call.length * keys
        seconds = flops / _FLOPS[device] + mask_elements / _MASK_ELEMENTS[device]
        if has_bias:
            seconds += call.num_heads * mask_elements / _BIAS_ELEMENTS[device]
        if call.requires_grad:
            # A mask that requires grad (a learned bias) sends SDPA to its math kernel, forward and backward.
            seconds *= _GRAD_FACTOR * (2.0 if has_bias else 1.0)
        return seconds + _OVERHEAD_S[device]

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        return dense_sdpa_attention(call)
