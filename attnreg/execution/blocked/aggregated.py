"""Aggregated (transient) global keys (LongT5 TGlobal): every query against the block tokens.

Queries of one global block share their bias row (``g - block(i)``), so queries are grouped by global block
and the bias is ``(batch, heads, groups, 1, count)`` broadcast over the group's queries, never ``(heads, n, count)``.
"""

from __future__ import annotations

import torch

from attnreg.execution.blocked.dropped import BlockDropout
from attnreg.execution.blocked.kernel import blocked_attention
from attnreg.execution.blocked.layout import Blocks, cached, table_dtype
from attnreg.execution.blocked.merge import Part
from attnreg.execution.call import AttentionCall


def last_block(call: AttentionCall, real: torch.Tensor) -> torch.Tensor:
    """``(batch, 1)``: each example's last aggregated token a query may see (its last full block), -1 if none."""
    return call.pattern.aggregated_globals.block_ids(real).amax(dim=-1, keepdim=True)


def _bias(call: AttentionCall, query_block: torch.Tensor) -> torch.Tensor | None:
    """``(batch, heads, *rest, count)`` bias of ``g - query_block`` for ``(batch, *rest)`` query blocks."""
    if call.aggregated_bias_weight is None:
        return None
    count, term = call.count, call.pattern.aggregated_bias
    groups = -(-call.length // call.pattern.aggregated_globals.global_block_size)
    # every g - block lies in [-(groups - 1), count] (a block is at least -1): bucket that range once
    offset = groups

    def build() -> torch.Tensor:
        return term.bucket(torch.arange(-offset, count + 1, device=call.device))

    buckets = cached(("aggregated", term, offset, count, str(call.device)), build)
    rel = torch.arange(count, device=call.device) - query_block.unsqueeze(-1)
    values = table_dtype(call.aggregated_bias_weight)[buckets[rel + offset]]
    return values.movedim(-1, 1)


def _attend(
    call: AttentionCall, q: torch.Tensor, bias: torch.Tensor | None, last: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q`` blocks against the aggregated keys; keys past ``last`` are masked (into the bias when there is one).

    ``rows``: the queries' positions ``(batch|1, blocks, queries)``, for explicit dropout keep flags."""
    valid = (torch.arange(call.count, device=call.device) <= last)[:, None, None, None, :]
    if bias is not None:
        bias, valid = bias.masked_fill(~valid, float("-inf")), None
    return blocked_attention(
        q,
        call.aggregated_k,
        call.aggregated_v,
        size=call.count,
        step=0,
        scale=call.scale,
        softcap=call.pattern.softcap,
        bias=bias,
        valid=valid,
        dropout=BlockDropout.of(
            call.dropout, lambda: (rows, call.length + torch.arange(call.count, device=call.device)[None, None, None])
        ),
    )


def aggregated_part(call: AttentionCall, real: torch.Tensor) -> Part:
    """Every query against the aggregated keys up to its example's last full block."""
    groups = Blocks(length=call.length, size=min(call.pattern.aggregated_globals.global_block_size, call.length))
    last = call.per_batch(("aggregated", "last"), lambda: last_block(call, real))
    group_block = torch.minimum(torch.arange(groups.count, device=call.device), last)  # (batch, groups)
    bias = _bias(call, group_block)
    rows = groups.positions(call.device)[None]
    out, lse = _attend(call, groups.split(call.q), None if bias is None else bias.unsqueeze(-2), last, rows)
    return Part(groups.join(out), groups.join(lse), (last >= 0)[:, :, None])


def aggregated_slot_part(call: AttentionCall, real: torch.Tensor, q: torch.Tensor, positions: torch.Tensor) -> Part:
    """Queries ``q`` ``(batch, heads, slots, dim)`` at ``positions`` ``(batch, slots)`` against the aggregated keys."""
    last = call.per_batch(("aggregated", "last"), lambda: last_block(call, real))
    query_block = torch.minimum(positions // call.pattern.aggregated_globals.global_block_size, last)
    bias = _bias(call, query_block)
    out, lse = _attend(call, q[:, :, None], None if bias is None else bias[:, :, None], last, positions[:, None])
    return Part(out[:, :, 0], lse[:, :, 0], (last >= 0)[:, :, None])
