"""What the blocked kernel's forward and backward share: key blocks as views, chunks of blocks, their masks."""

from __future__ import annotations

import torch

#: Score elements (batch × heads × blocks × queries × keys) one chunk works on; bounds the working memory.
CHUNK_ELEMENTS = 1 << 20


def chunk_blocks(per_block: int) -> int:
    """How many blocks one chunk holds when each block is ``per_block`` score elements (at least one)."""
    return max(1, CHUNK_ELEMENTS // max(1, per_block))


def key_blocks(keys: torch.Tensor, num_blocks: int, size: int, step: int) -> torch.Tensor:
    """The ``(batch, heads, num_blocks, size, dim)`` keys of each query block, a view of ``keys`` (no copy).

    Block ``i`` sees ``keys[:, :, i * step : i * step + size]``; ``step == 0`` lets every block share the first
    ``size`` keys (stride-0 broadcast).
    """
    batch, heads, _, dim = keys.shape
    if step == 0:
        return keys[:, :, None, :size].expand(batch, heads, num_blocks, size, dim)
    return keys.unfold(2, size, step).transpose(-1, -2)[:, :, :num_blocks]


def additive_mask(bias: torch.Tensor | None, valid: torch.Tensor | None, blocks: slice) -> torch.Tensor | None:
    """The additive mask of the blocks in ``blocks`` (dimension -3): ``bias`` plus ``-inf`` where ``valid`` is False.

    ``bias``/``valid`` are broadcastable to ``(..., blocks, queries, keys)``; a size-1 block dimension is shared.
    """
    parts = []
    if bias is not None:
        parts.append(bias[..., blocks, :, :] if bias.shape[-3] > 1 else bias)
    if valid is not None:
        chunk = valid[..., blocks, :, :] if valid.shape[-3] > 1 else valid
        zero = torch.zeros((), device=chunk.device, dtype=torch.float32 if bias is None else bias.dtype)
        parts.append(zero.masked_fill(~chunk, float("-inf")).expand(chunk.shape))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def select(x: torch.Tensor | None, examples: slice, heads: slice | None = None) -> torch.Tensor | None:
    """``x``'s entries for ``examples`` (dimension 0) and ``heads`` (dimension 1); a size-1 dimension is broadcast."""
    if x is None:
        return None
    x = x[examples] if x.shape[0] > 1 else x
    if heads is not None and x.shape[1] > 1:
        x = x[:, heads]
    return x


def pieces(blocks: int, masked: tuple[bool, ...] | None, chunk: int, whole_unmasked: bool) -> list[tuple[slice, bool]]:
    """The block ranges one pass works on, each with whether it needs the key-validity mask.

    ``masked``: per block, whether any of its keys is invalid (``None``: assume every block is). Runs of masked
    blocks are chunked (their mask is materialised); a run of unmasked blocks is one piece if ``whole_unmasked``.
    """
    flags = (True,) * blocks if masked is None else masked
    result: list[tuple[slice, bool]] = []
    start = 0
    for end in range(1, blocks + 1):
        if end < blocks and flags[end] == flags[start]:
            continue
        step = end - start if (whole_unmasked and not flags[start]) else chunk
        result.extend((slice(first, min(first + step, end)), flags[start]) for first in range(start, end, step))
        start = end
    return result


def cap(scores: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Scaled scores through the soft cap ``softcap * tanh(score / softcap)`` (unchanged without one)."""
    return scores if softcap is None else torch.tanh(scores / softcap) * softcap


def products(a: torch.Tensor, b: torch.Tensor, shared: bool) -> torch.Tensor:
    """``a @ b`` per block: ``a`` ``(batch, heads, c, rows, x)``; ``b`` ``(batch, heads, c, x, y)``, or one
    ``(batch, heads, x, y)`` shared by every block (then a single matmul over all the chunk's rows)."""
    if not shared:
        return a @ b
    return (a.flatten(2, 3) @ b).view(*a.shape[:-1], b.shape[-1])
