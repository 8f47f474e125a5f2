"""Aggregated (transient) global keys (LongT5 TGlobal): every query against the block tokens.

Queries of one global block share their bias row (``g - block(i)``), so queries are grouped by global block
and the bias is ``(batch, heads, groups, 1, count)`` broadcast over the group's queries, never ``(heads, n, count)``.
"""

from __future__ import annotations

import torch

from attnreg.execution.blocked.kernel import blocked_attention
from attnreg.execution.blocked.layout import Blocks, table_dtype
from attnreg.execution.blocked.merge import Part
from attnreg.execution.call import AttentionCall


def aggregated_part(call: AttentionCall, real: torch.Tensor) -> Part:
    """Every real query against the aggregated keys up to its example's last full block."""
    aggregated = call.pattern.aggregated_globals
    count = call.count
    groups = Blocks(length=call.length, size=min(aggregated.global_block_size, call.length))
    last = aggregated.block_ids(real).amax(dim=-1, keepdim=True)  # (batch, 1): the last full block, -1 if none
    slots = torch.arange(count, device=call.device)
    valid = slots <= last
    bias = None
    if call.aggregated_bias_weight is not None:
        group_block = torch.minimum(torch.arange(groups.count, device=call.device), last)  # (batch, groups)
        rel = slots[None, None, :] - group_block[:, :, None]
        table = table_dtype(call.aggregated_bias_weight)
        bias = call.pattern.aggregated_bias.lookup(table, rel).movedim(0, 1)[:, :, :, None]
    out, lse = blocked_attention(
        groups.split(call.q),
        call.aggregated_k,
        call.aggregated_v,
        size=count,
        step=0,
        scale=call.scale,
        bias=bias,
        valid=valid[:, None, None, None, :],
    )
    return Part(groups.join(out), groups.join(lse), (last >= 0)[:, :, None])
