"""Convert dense attention weights to and from transformers' LongT5 blocked layout.

transformers returns LongT5 encoder attentions as ``(batch, blocks, heads, block_len, 3 * block_len + count)``: each
block of ``block_len = local_radius + 1`` queries against the previous, own and next key blocks, then the aggregated
keys. One index table maps every blocked entry to its dense key column (or to an always-zero column).
"""

from __future__ import annotations

import torch


def blocked_columns(length: int, block_len: int, count: int, device: torch.device) -> torch.Tensor:
    """``(blocks, block_len, 3 * block_len + count)`` dense key column of every blocked entry.

    Token keys are columns ``0..length-1``, aggregated keys ``length..length+count-1``; entries that name no key
    (outside the sequence) point at the extra zero column ``length + count``.
    """
    blocks = -(-length // block_len)
    block = torch.arange(blocks, device=device)[:, None, None]
    slot = torch.arange(3 * block_len, device=device)[None, None, :]
    key = (block - 1) * block_len + slot
    key = torch.where((key >= 0) & (key < length), key, torch.full_like(key, length + count))
    aggregated = torch.arange(length, length + count, device=device)[None, None, :]
    columns = torch.cat([key, aggregated.expand(blocks, 1, count)], dim=-1)
    return columns.expand(blocks, block_len, 3 * block_len + count)


def to_blocked(weights: torch.Tensor, block_len: int) -> torch.Tensor:
    """Dense ``(batch, heads, length, length + count)`` weights as ``(batch, blocks, heads, block_len, 3b + count)``."""
    batch, heads, length, keys = weights.shape
    columns = blocked_columns(length, block_len, keys - length, weights.device)
    blocks = columns.shape[0]
    padded = torch.nn.functional.pad(weights, (0, 1, 0, blocks * block_len - length))
    padded = padded.view(batch, heads, blocks, block_len, keys + 1)
    blocked = padded.gather(-1, columns.expand(batch, heads, *columns.shape))
    return blocked.transpose(1, 2)


def from_blocked(blocked: torch.Tensor, length: int) -> torch.Tensor:
    """The inverse of :func:`to_blocked`: dense ``(batch, heads, length, length + count)`` weights."""
    batch, blocks, heads, block_len, width = blocked.shape
    count = width - 3 * block_len
    columns = blocked_columns(length, block_len, count, blocked.device)
    dense = blocked.new_zeros(batch, heads, blocks, block_len, length + count + 1)
    dense = dense.scatter(-1, columns.expand(batch, heads, *columns.shape), blocked.transpose(1, 2))
    return dense.view(batch, heads, blocks * block_len, -1)[:, :, :length, : length + count]
