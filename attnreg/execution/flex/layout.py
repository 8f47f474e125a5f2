"""The per-batch structure of a flex call: block masks and key tables, built once per batch from the masks alone.

Keys of the token call are the tokens, then (when the pattern has any) the extra keys: the aggregated tokens and the
selected global tokens gathered into slots, so that a global key is seen through its slot and never twice. With extra
keys the token keys are padded to whole blocks, so that the pattern's block coverage lines up with flex's blocks. The
global rows run as a second, small call: their queries gathered, against every token key and the aggregated keys.
The block tables come from the pattern's coverage (O((n / block)²) numbers), never from n² pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.attention.flex_attention import BlockMask

from attnreg.execution.blocked.layout import Blocks, cached
from attnreg.execution.blocked.selected import Slots
from attnreg.execution.blocked.sparse import document_coverage, token_mask
from attnreg.execution.call import AttentionCall
from attnreg.execution.flex.mods import BLOCK, PartBits, Side, mask_mod
from attnreg.pattern.predicates import FULL, PARTIAL, coverage_table


@dataclass(frozen=True)
class FlexLayout:
    """One batch's flex structure: the token call's tables and block mask, the global rows' (``None`` without global
    tokens), the slots, the real tokens (``None``: no padding) and how far the token keys are padded."""

    tokens: Side
    token_mask: BlockMask
    rows: Side | None
    row_mask: BlockMask | None
    slots: Slots | None
    real: torch.Tensor | None
    padded_keys: int


def _blocks(count: int) -> int:
    return -(-count // BLOCK)


def _ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(num, indices)`` of flex's block table from ``(batch, query blocks, key blocks)`` bool: how many key blocks
    each query block visits and which, in key order."""
    num = blocks.sum(-1, dtype=torch.int32)
    indices = torch.sort((~blocks).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)
    return num[:, None].contiguous(), indices[:, None].contiguous()


def block_mask(coverage: torch.Tensor, queries: int, side: Side) -> BlockMask:
    """Flex's ``BlockMask`` from ``(batch, query blocks, key blocks)`` int8 coverage: partial blocks run ``side``'s
    ``mask_mod``, full ones do not, empty ones are skipped."""
    return BlockMask.from_kv_blocks(
        *_ordered(coverage == PARTIAL),
        *_ordered(coverage == FULL),
        BLOCK_SIZE=BLOCK,
        mask_mod=mask_mod(side, coverage.device),
        seq_lengths=(queries, side.keys),
    )


def part_bits(call: AttentionCall) -> PartBits:
    """The pattern's token predicate (window and mask part) on its partial blocks, from shapes alone (cached)."""
    part, length = token_mask(call), call.length

    def build() -> PartBits:
        coverage = coverage_table(part, length, BLOCK)
        partial = (coverage == PARTIAL).nonzero()
        slot = torch.where(coverage == FULL, 1, 0).to(torch.int32)
        slot[partial[:, 0], partial[:, 1]] = torch.arange(2, 2 + len(partial), dtype=torch.int32)
        offsets = torch.arange(BLOCK)
        i = (partial[:, 0, None] * BLOCK + offsets)[:, :, None]
        j = (partial[:, 1, None] * BLOCK + offsets)[:, None, :]
        inside = part.allowed(i, j, length) & (i < length) & (j < length)
        fixed = torch.stack([torch.zeros(BLOCK, BLOCK, dtype=torch.bool), torch.ones(BLOCK, BLOCK, dtype=torch.bool)])
        return PartBits(slot=slot, bits=torch.cat([fixed, inside]))

    found = cached(("flex-bits", part, length), build)
    return PartBits(found.slot.to(call.device), found.bits.to(call.device))


def _token_coverage(call: AttentionCall, key_ok: torch.Tensor | None, padded: int) -> torch.Tensor:
    """``(batch, query blocks, token key blocks)`` int8: the pattern's coverage, full blocks made partial where a key
    may not be seen (padding, global keys, the sequence's end) and cut by the documents' ranges."""
    part, length = token_mask(call), call.length
    coverage = cached(("flex-coverage", part, length), lambda: coverage_table(part, length, BLOCK))
    coverage = coverage.to(call.device)[None]
    blocks = coverage.shape[-1]
    clean = torch.ones(1, blocks, dtype=torch.bool, device=call.device)
    clean[:, -1] = length % BLOCK == 0  # the last block's missing keys
    if key_ok is not None:
        tokens = key_ok[:, : min(padded, length)]
        tokens = torch.cat([tokens, tokens.new_zeros(tokens.shape[0], blocks * BLOCK - tokens.shape[1])], dim=1)
        clean = tokens.view(tokens.shape[0], blocks, BLOCK).all(-1)
    coverage = torch.where((coverage == FULL) & ~clean[:, None, :], PARTIAL, coverage).to(torch.int8)
    if call.document_ids is not None:
        documents = document_coverage(call.document_ids, Blocks(length=length, size=BLOCK))
        coverage = torch.minimum(coverage, documents.to(call.device))
    return coverage


def _slots(call: AttentionCall, real: torch.Tensor) -> Slots | None:
    """The global tokens' slots, their count rounded up to a power of two (fewer shapes to compile), or ``None``."""
    if call.pattern.selected_globals is None or call.global_mask is None:
        return None
    rows = call.global_mask & real
    count = call.global_slots(rows.sum(dim=-1))
    if count == 0:
        return None
    count = min(1 << (count - 1).bit_length(), call.length)
    index, filled = call.pattern.selected_globals.slots(rows, count)
    return Slots(rows=rows, index=index, filled=filled)


def _aggregated(call: AttentionCall, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(valid, query_blocks)``: the aggregated keys each example's real queries see ``(batch, count)``, and the
    block each query's aggregated bias counts from ``(batch, length)``."""
    aggregated = call.pattern.aggregated_globals
    last = aggregated.block_ids(real).amax(dim=-1, keepdim=True)
    valid = torch.arange(call.count, device=call.device) <= last
    positions = torch.arange(call.length, device=call.device)
    return valid, torch.minimum(positions // aggregated.global_block_size, last)


def _gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return values.gather(1, index)


def build_layout(call: AttentionCall) -> FlexLayout:
    """This batch's :class:`FlexLayout`, from its masks alone (kept in the prepared mask for the next layer)."""
    length, device = call.length, call.device
    real = call.attention_mask
    everyone = torch.ones(call.batch, length, dtype=torch.bool, device=device) if real is None else real
    slots = _slots(call, everyone)
    count = call.count
    extras = count + (0 if slots is None else slots.count)
    padded = _blocks(length) * BLOCK if extras else length
    valid = query_blocks = None
    if count:
        valid, query_blocks = _aggregated(call, everyone)
    documents = call.document_ids
    band = None
    part = None
    if call.pattern.mask is not None:
        part = part_bits(call)
    elif call.pattern.window is not None:
        band = (call.pattern.window.left, call.pattern.window.right)

    # the token call: tokens (padded to whole blocks when extra keys follow), aggregated keys, global slots
    key_ok = key_positions = key_documents = None
    token_ok = everyone if slots is None else everyone & ~slots.rows
    if real is not None or slots is not None or extras:
        pieces = [token_ok, token_ok.new_zeros(call.batch, padded - length)]
        if count:
            pieces.append(valid)
        if slots is not None:
            pieces.append(slots.filled)
        key_ok = torch.cat(pieces, dim=1)
    if slots is not None:
        positions = torch.arange(padded, dtype=torch.long, device=device).expand(call.batch, padded)
        key_positions = torch.cat([positions, positions.new_zeros(call.batch, count), slots.index], dim=1)
    if documents is not None:
        filler = documents.new_full((call.batch, padded - length + count), -1)
        slot_documents = [] if slots is None else [_gather(documents, slots.index)]
        key_documents = torch.cat([documents, filler, *slot_documents], dim=1)
    keys = padded + extras
    coverage = _token_coverage(call, key_ok, padded)
    if extras:
        extra = torch.full((*coverage.shape[:2], _blocks(extras)), PARTIAL, dtype=torch.int8, device=device)
        coverage = torch.cat([coverage.expand(call.batch, -1, -1), extra], dim=-1)
    tokens = Side(
        length=length,
        tokens=padded,
        keys=keys,
        key_ok=key_ok,
        query_positions=None,
        key_positions=key_positions,
        query_documents=documents,
        key_documents=key_documents,
        aggregated=(padded, count) if count else None,
        query_blocks=query_blocks,
        band=band,
        part=part,
    )
    token_mask = block_mask(coverage, length, tokens)

    # the global rows: their queries against every real token key and the aggregated keys
    rows = row_mask = None
    if slots is not None:
        keys = length + count
        row_ok = everyone if not count else torch.cat([everyone, valid], dim=1)
        rows = Side(
            length=length,
            tokens=length,
            keys=keys,
            key_ok=row_ok,
            query_positions=slots.index,
            key_positions=None,
            query_documents=None if documents is None else _gather(documents, slots.index),
            key_documents=documents,
            aggregated=(length, count) if count else None,
            query_blocks=None if query_blocks is None else _gather(query_blocks, slots.index),
        )
        coverage = torch.full((call.batch, _blocks(slots.count), _blocks(keys)), PARTIAL, dtype=torch.int8)
        row_mask = block_mask(coverage.to(device), slots.count, rows)
    return FlexLayout(tokens, token_mask, rows, row_mask, slots, real, padded)
