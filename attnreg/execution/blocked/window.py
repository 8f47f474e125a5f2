"""The window part: each query block against the keys its queries' windows reach, a Toeplitz per-block bias."""

from __future__ import annotations

import math

import torch

from attnreg.execution import host
from attnreg.execution.blocked.dropped import BlockDropout
from attnreg.execution.blocked.kernel import blocked_attention
from attnreg.execution.blocked.layout import Blocks, cached, pad_length, table_dtype
from attnreg.execution.blocked.merge import Part
from attnreg.execution.call import AttentionCall
from attnreg.execution.window_reach import window_reach


def _block_structure(call: AttentionCall, blocks: Blocks, left: int, size: int) -> tuple[torch.Tensor, ...]:
    """``(outside, bucket)``: which ``(block, size)`` pairs fall outside the window, and their bias bucket."""
    device = call.device
    rel = torch.arange(size, device=device)[None, :] - left - torch.arange(blocks.size, device=device)[:, None]
    window = call.pattern.window
    outside = torch.zeros_like(rel, dtype=torch.bool) if window is None else ~window.contains(rel)
    bucket = rel if call.pattern.bias is None else call.pattern.bias.bucket(rel)
    return outside, bucket


def block_bias(call: AttentionCall, blocks: Blocks, left: int, size: int) -> torch.Tensor | None:
    """``(1, heads|1, 1, block, size)``: the relative-position bias of a block's keys plus ``-inf`` outside
    the window. The same for every block (relative positions depend only on the offsets inside the block)."""
    key = ("window", call.pattern.window, call.pattern.bias, blocks.size, left, size, str(call.device))
    outside, bucket = cached((*key, "structure"), lambda: _block_structure(call, blocks, left, size))
    if call.bias_weight is None:
        if call.pattern.window is None:
            return None
        mask = cached(
            (*key, "mask"), lambda: torch.zeros(outside.shape, device=call.device).masked_fill(outside, float("-inf"))
        )
        return mask[None, None, None]
    bias = table_dtype(call.bias_weight)[bucket].movedim(-1, 0)
    if call.pattern.window is not None:
        bias = bias.masked_fill(outside, float("-inf"))
    return bias[None, :, None]


def edge_blocks(blocks: Blocks, left: int, right: int) -> tuple[bool, ...]:
    """Per block, whether it has keys outside the sequence: the first and last few (the rest need no key mask)."""
    head = math.ceil(left / blocks.size)
    inside = (blocks.length - blocks.size - right) // blocks.size + 1 if blocks.length >= blocks.size + right else 0
    return tuple(index < head or index >= inside for index in range(blocks.count))


def masked_blocks(valid: torch.Tensor) -> tuple[bool, ...] | None:
    """Per block, whether any key of its window is invalid, from ``valid`` ``(batch, blocks, size)``; ``None``
    (every block masked) where the values cannot be read without a device sync (see :func:`host.host_readable`)."""
    if not host.host_readable(valid):
        return None
    return tuple((~valid).any(dim=-1).any(dim=0).tolist())


def window_size(blocks: Blocks, left: int, right: int) -> int:
    """Keys per query block: its queries' reach, rounded up to whole blocks (the gradient of each block's keys is
    then whole rows of one batched matmul; the few keys past the window are masked like any other outside it)."""
    return math.ceil((blocks.size + left + right) / blocks.size) * blocks.size


def window_part(call: AttentionCall, blocks: Blocks, keys_ok: torch.Tensor | None) -> Part:
    """Every query against the keys of its window that ``keys_ok`` ``(batch, length)`` allows (``None``: all)."""
    left, right = window_reach(call)
    size = window_size(blocks, left, right)
    right = size - blocks.size - left
    padded_keys = (blocks.count + math.ceil(size / blocks.size) - 1) * blocks.size
    after = padded_keys - left - call.length
    k = pad_length(call.k, left, after)
    v = pad_length(call.v, left, after)

    def key_mask() -> tuple[torch.Tensor, tuple[bool, ...] | None]:
        ok, known = keys_ok, None
        if ok is None:
            known = edge_blocks(blocks, left, right)
            ok = torch.ones(call.batch, call.length, dtype=torch.bool, device=call.device)
        valid = pad_length(ok, left, after, value=False).unfold(1, size, blocks.size)[:, : blocks.count]
        return valid, (known if known is not None else masked_blocks(valid))

    valid, masked = call.per_batch(("window", blocks.size, left, size), key_mask)

    def positions() -> tuple[torch.Tensor, torch.Tensor]:
        first = torch.arange(blocks.count, device=call.device)[:, None, None] * blocks.size - left
        return blocks.positions(call.device)[None], (first + torch.arange(size, device=call.device))[None]

    out, lse = blocked_attention(
        blocks.split(call.q),
        k,
        v,
        size=size,
        step=blocks.size,
        scale=call.scale,
        softcap=call.pattern.softcap,
        bias=block_bias(call, blocks, left, size),
        valid=valid[:, None, :, None],
        masked=masked,
        dropout=BlockDropout.of(call.dropout, positions),
    )
    return Part(blocks.join(out), blocks.join(lse))
