"""The token part of patterns with a mask part or documents: each query block against its non-empty key blocks.

The key blocks a query block visits come from the mask's block coverage (and, where the ids can be read without a
device sync, the documents' ranges): empty blocks are never touched, so the cost follows the allowed pairs. Their
keys are gathered into one run per query block for the blocked kernel; the predicate (with padding and documents)
is its key mask, applied only to the query blocks that reach a partially allowed block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnreg.execution import host
from attnreg.execution.blocked.dropped import BlockDropout
from attnreg.execution.blocked.kernel import blocked_attention
from attnreg.execution.blocked.layout import Blocks, cached, pad_length, table_dtype
from attnreg.execution.blocked.merge import Part
from attnreg.execution.call import AttentionCall
from attnreg.pattern.predicates import EMPTY, FULL, AllOf, Band, MaskPart, coverage_table

#: Pairs the layout evaluates at once while it finds the keys each query block uses: it runs once per batch, so a
#: small budget costs little time and keeps its scratch (int64 positions, several bool masks) well under the kernel's.
_LAYOUT_PAIRS = 1 << 16


def uses_sparse(call: AttentionCall) -> bool:
    """Whether the call's token keys go through this path (a mask part, score terms or documents)."""
    return call.pattern.mask is not None or bool(call.pattern.score_terms) or call.document_ids is not None


def token_mask(call: AttentionCall) -> MaskPart:
    """The pattern's window and mask part as one mask part (every key when it has neither)."""
    window, mask = call.pattern.window, call.pattern.mask
    band = Band(None, None) if window is None else Band(window.left, window.right)
    return band if mask is None else (mask if window is None else AllOf((band, mask)))


def _pattern_coverage(call: AttentionCall, blocks: Blocks) -> torch.Tensor:
    """``(query blocks, key blocks)`` int8 coverage of the pattern's token part, on the CPU (from shapes alone)."""
    part = token_mask(call)
    return cached(("sparse", part, call.length, blocks.size), lambda: coverage_table(part, call.length, blocks.size))


def visited_pairs(call: AttentionCall, blocks: Blocks) -> int:
    """Query-key pairs in the key blocks the pattern's coverage makes the queries visit (documents not counted):
    the work the block-sparse path does, for the dispatcher's estimate."""
    return int((_pattern_coverage(call, blocks) > EMPTY).sum()) * blocks.size * blocks.size


def document_coverage(documents: torch.Tensor, blocks: Blocks) -> torch.Tensor:
    """``(batch, blocks, blocks)`` int8: EMPTY where two blocks' document ranges are disjoint (no pair can share a
    document), FULL where both hold one and the same document, else PARTIAL."""
    ids = pad_length(documents, 0, blocks.padded - blocks.length, value=-1).view(documents.shape[0], blocks.count, -1)
    padded = ids < 0
    low = torch.where(padded, torch.iinfo(torch.int64).max, ids).amin(-1)
    high = ids.amax(-1)
    disjoint = (high[:, :, None] < low[:, None, :]) | (high[:, None, :] < low[:, :, None])
    single = low == high
    same = single[:, :, None] & single[:, None, :] & (low[:, :, None] == low[:, None, :])
    return torch.where(disjoint, EMPTY, torch.where(same, FULL, 1)).to(torch.int8)


def _coverage(call: AttentionCall, blocks: Blocks) -> torch.Tensor:
    """``(batch|1, query blocks, key blocks)`` int8 coverage of the pattern's token part (and of the documents, where
    their ids can be read without a device sync; elsewhere every block they touch counts as partial), on the CPU."""
    coverage = _pattern_coverage(call, blocks)[None]
    if call.document_ids is not None and host.host_readable(call.document_ids):
        coverage = torch.minimum(coverage, document_coverage(call.document_ids.cpu(), blocks))
    elif call.document_ids is not None:
        coverage = torch.minimum(coverage, torch.ones_like(coverage))
    return coverage


def _groups(visited: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """Query blocks grouped by how many key blocks they visit, rounded up to a power of two: ``(query blocks,
    width)`` per group. One wide row (a global block) then widens only its own group: the keys gathered stay within
    twice the visited blocks."""
    widths = visited.sum(-1).amax(0).clamp(min=1)
    rounded = 2 ** torch.ceil(torch.log2(widths.double())).long()
    return [
        ((rounded == width).nonzero().flatten(), min(int(width), visited.shape[-1]))
        for width in torch.unique(rounded).tolist()
    ]


def _visits(coverage: torch.Tensor, width: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """``(index, present, full)``, each ``(batch|1, query blocks, width)``: the first ``width`` key blocks each query
    block visits, in key order, whether the slot holds one, and whether all its pairs are allowed."""
    visited = coverage > EMPTY
    order = torch.sort((~visited).to(torch.int8), dim=-1, stable=True).indices[..., :width]
    present = visited.gather(-1, order)
    full = (coverage.gather(-1, order) == FULL) & present
    return order.to(device), present.to(device), full.to(device)


@dataclass(frozen=True)
class _Group:
    """Query blocks ``rows`` laid out for the kernel: the dense query and key positions ``queries`` ``(rows, block)``
    and ``keys`` ``(batch|1, rows, size)``, the allowed pairs ``(batch|1, rows, block, size)``, and which query
    blocks need that mask (``None``: all)."""

    rows: torch.Tensor
    queries: torch.Tensor
    keys: torch.Tensor
    allowed: torch.Tensor
    masked: tuple[bool, ...] | None


def _allowed(
    call: AttentionCall,
    blocks: Blocks,
    keys_ok: torch.Tensor | None,
    rows: torch.Tensor,
    keys: torch.Tensor,
    present: torch.Tensor,
    full: torch.Tensor,
) -> torch.Tensor:
    """``(batch|1, rows, block, keys)``: which of ``keys`` ``(batch|1, rows, keys)`` (positions; ``present`` where a
    slot holds one, ``full`` where the pattern allows it to the whole block) each query of blocks ``rows`` sees."""
    device = call.device
    i, j = blocks.positions(device)[rows][None, :, :, None], keys[:, :, None, :]
    allowed = present[:, :, None, :] & (j < call.length)
    allowed = allowed & (full[:, :, None, :] | token_mask(call).allowed(i, j, call.length))
    clamped = j.clamp(max=call.length - 1)

    def at_keys(values: torch.Tensor) -> torch.Tensor:
        """``(batch, length)`` values at each example's keys, shaped as ``j`` with the batch."""
        shape = (values.shape[0], *clamped.shape[1:])
        return values.gather(1, clamped.expand(shape).flatten(1)).view(shape)

    if keys_ok is not None:
        allowed = allowed & at_keys(keys_ok)
    if call.document_ids is not None:
        documents = call.document_ids
        padded = pad_length(documents, 0, blocks.padded - blocks.length).view(-1, blocks.count, blocks.size)
        allowed = allowed & (padded[:, rows, :, None] == at_keys(documents))
    return allowed


def _used_keys(call, blocks, keys_ok, rows, keys, present, full) -> tuple[torch.Tensor, ...]:
    """``keys``, ``present`` and ``full`` cut to the keys some query of each block sees: the token-level union of its
    blocks' allowed pairs, worked out a few query blocks at a time (never the whole group's pairs at once)."""
    step = max(1, _LAYOUT_PAIRS // (blocks.size * keys.shape[-1]))
    used = torch.cat(
        [
            _allowed(
                call,
                blocks,
                keys_ok,
                rows[first : first + step],
                *(x[:, first : first + step] for x in (keys, present, full)),
            ).any(dim=2)
            for first in range(0, len(rows), step)
        ],
        dim=1,
    )
    count = max(int(used.sum(-1).max()), 1)
    order = torch.sort((~used).to(torch.int8), dim=-1, stable=True).indices[..., :count]
    keys, full = (x.expand(used.shape[0], *x.shape[1:]) for x in (keys, full))  # documents or padding: per example
    return keys.gather(-1, order), used.gather(-1, order), full.gather(-1, order)


def _layout(call: AttentionCall, blocks: Blocks, keys_ok: torch.Tensor | None) -> list[_Group]:
    """The groups of query blocks and what each may see: built from this batch's masks alone, once per batch.

    Where the masks can be read without a device sync, each query block keeps only the keys some of its queries see
    (a scattered part such as strided columns then costs its allowed pairs, not its visited blocks); elsewhere it
    keeps its visited blocks whole."""
    coverage = _coverage(call, blocks)
    device = call.device
    found = []
    for rows, width in _groups(coverage > EMPTY):
        index, present, full = _visits(coverage[:, rows], width, device)
        rows = rows.to(device)
        keys = (index[..., None] * blocks.size + torch.arange(blocks.size, device=device)).flatten(-2)
        present, full = (x.repeat_interleave(blocks.size, dim=-1) for x in (present, full))
        if host.host_readable(keys):
            keys, present, full = _used_keys(call, blocks, keys_ok, rows, keys, present, full)
        allowed = _allowed(call, blocks, keys_ok, rows, keys, present, full)
        masked = tuple((~allowed).flatten(2).any(-1).any(0).tolist()) if host.host_readable(allowed) else None
        found.append(_Group(rows, blocks.positions(device)[rows], keys, allowed, masked))
    return found


def _take(x: torch.Tensor, keys: torch.Tensor, length: int) -> torch.Tensor:
    """``(batch, heads, rows * keys, dim)``: the rows of ``x`` ``(batch, heads, length, dim)`` at ``keys``
    ``(batch|1, rows, keys)`` (positions past the sequence read its last row; they are masked)."""
    flat = keys.clamp(max=length - 1).flatten(1)
    if flat.shape[0] == 1:
        return x.index_select(2, flat[0])
    batch = torch.arange(x.shape[0], device=x.device)[:, None]
    return x[batch, :, flat].permute(0, 2, 1, 3)


def sparse_part(call: AttentionCall, blocks: Blocks, keys_ok: torch.Tensor | None) -> Part:
    """Every query against the token keys the pattern allows it (mask part, window, documents), that ``keys_ok``
    ``(batch, length)`` allows (``None``: all), with the pattern's bias table and score terms."""
    groups = call.per_batch(("sparse", blocks.size), lambda: _layout(call, blocks, keys_ok))
    q = blocks.split(call.q)
    if len(groups) == 1:
        out, lse = _attend(call, blocks, q, groups[0])
    else:
        out = q.new_empty((*q.shape[:-1], call.v.shape[-1]))
        lse = q.new_empty(q.shape[:-1], dtype=torch.promote_types(q.dtype, torch.float32))
        for group in groups:
            part_out, part_lse = _attend(call, blocks, q[:, :, group.rows], group)
            out = out.index_copy(2, group.rows, part_out)
            lse = lse.index_copy(2, group.rows, part_lse.to(lse.dtype))
    return Part(blocks.join(out), blocks.join(lse))


def _attend(call: AttentionCall, blocks: Blocks, q: torch.Tensor, group: _Group) -> tuple[torch.Tensor, torch.Tensor]:
    """The group's query blocks ``q`` ``(batch, heads, rows, block, dim)`` against their visited key blocks: the
    kernel's output and log-sum-exp for those blocks."""
    i, j = group.queries[None, :, :, None], group.keys[:, :, None, :]

    def positions() -> tuple[torch.Tensor, torch.Tensor]:
        return group.queries[None], group.keys[:, :, None, :]

    size = group.keys.shape[-1]
    return blocked_attention(
        q,
        _take(call.k, group.keys, call.length),
        _take(call.v, group.keys, call.length),
        size=size,
        step=size,
        scale=call.scale,
        softcap=call.pattern.softcap,
        bias=_bias(call, i, j),
        valid=group.allowed[:, None],
        masked=group.masked,
        dropout=BlockDropout.of(call.dropout, positions),
    )


def _bias(call: AttentionCall, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor | None:
    """``(batch|1, heads, query blocks, block, size)`` fp32: the bias table's and the score terms' values, or None."""
    bias = None
    if call.bias_weight is not None:
        bias = call.pattern.bias.lookup(table_dtype(call.bias_weight), j - i).movedim(0, 1)
    for term in call.pattern.score_terms:
        values = term.term(i, j, call.num_heads).movedim(0, 1)
        bias = values if bias is None else bias + values
    return bias
