"""The blocked kernel's forward with attention dropout: its own probabilities, keep flags kept as bits.

SDPA's fused CPU kernel has no dropout of its own worth taking (with ``dropout_p`` it leaves for the math kernel), so
this forward computes each chunk's probabilities itself, drops them, and stores the keep flags packed eight to a byte
for the backward: linear memory, and the backward needs no generator state.

Parts merged by log-sum-exp stay exact: a part drops its own normalised weights and returns the log-sum-exp of its
undropped scores, so the merge's weights turn each part's kept weights into the final ones (the output is linear in
them): ``exp(s - lse_part) * exp(lse_part - lse_all) = exp(s - lse_all)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnreg.execution import host
from attnreg.execution.blocked.chunks import additive_mask, cap, chunk_blocks, key_blocks, pieces, products, select
from attnreg.execution.dropout import AttentionDropout, draw_keep, pack_bits, packed_size


@dataclass(frozen=True)
class BlockDropout:
    """Dropout inside one blocked call: the rate, and where the keep flags come from.

    Drawn from the default generator, unless the call gives explicit dense flags (``given``, ``(batch, heads, length,
    keys)``): then ``rows`` ``(batch|1, blocks, queries)`` and ``cols`` ``(batch|1, blocks, queries|1, size)`` say
    which dense query and key each entry of the blocked layout is (entries past the sequence are masked anyway).
    """

    p: float
    scale: float
    given: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    cols: torch.Tensor | None = None

    @classmethod
    def of(
        cls, dropout: AttentionDropout | None, positions: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    ) -> BlockDropout | None:
        """The blocked form of a call's dropout (``None`` without), for a part whose ``(rows, cols)`` are
        ``positions()`` (asked only when the call gives explicit keep flags)."""
        if dropout is None:
            return None
        if dropout.keep is None:
            return cls(dropout.p, dropout.scale)
        return cls(dropout.p, dropout.scale, dropout.keep, *positions())

    def keep(self, shape: tuple[int, ...], examples: slice, heads: slice, part: slice, device: torch.device):
        """Keep flags ``shape`` = ``(b, h, c, queries, size)`` for ``examples``, ``heads`` and blocks ``part``."""
        if self.given is None:
            return draw_keep(shape, self.p, device)
        given = self.given[examples, heads]
        length, keys = given.shape[-2:]
        rows = select(self.rows, examples)[:, part].clamp(0, length - 1)
        cols = select(self.cols, examples)[:, part].clamp(0, keys - 1)
        index = (rows.unsqueeze(-1) * keys + cols).expand(shape[0], *shape[2:])
        index = index.reshape(shape[0], 1, -1).expand(shape[0], shape[1], -1)
        return given.flatten(2).gather(2, index).view(shape)


def units(q: torch.Tensor) -> list[tuple[slice, slice]]:
    """The ``(examples, heads)`` one pass works on: each example and head alone on the eager CPU (cache-sized chunks,
    unit-stride matrices for BLAS), all of them at once elsewhere (few kernel launches; a graph the compiler traces)."""
    batch, heads = q.shape[:2]
    if not host.eager_on_cpu(q):
        return [(slice(None), slice(None))]
    return [(slice(e, e + 1), slice(h, h + 1)) for e in range(batch) for h in range(heads)]


def dropped_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    valid: torch.Tensor | None,
    layout: tuple[int, int, float, tuple[bool, ...] | None, float | None],
    dropout: BlockDropout,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dropped output, undropped log-sum-exp and the packed keep flags ``(batch, heads, blocks, bytes)``.

    Shapes as :class:`~attnreg.execution.blocked.kernel.BlockedAttention`'s; ``layout`` is ``(size, step, scale,
    masked, softcap)``. Fully masked rows give output 0 and log-sum-exp 0.
    """
    size, step, scale, masked, softcap = layout
    batch, heads, blocks, queries, _ = q.shape
    compute = torch.promote_types(q.dtype, torch.float32)
    shared = step == 0
    out = q.new_empty((batch, heads, blocks, queries, v.shape[-1]))
    lse = q.new_empty((batch, heads, blocks, queries), dtype=compute)
    packed = q.new_empty((batch, heads, blocks, packed_size(queries * size)), dtype=torch.uint8)
    detached = None if bias is None else bias.detach()
    tiny = torch.finfo(compute).tiny
    for examples, hs in units(q):
        qu, ku, vu = (x[examples, hs].to(compute) for x in (q, k, v))
        kb, vb = key_blocks(ku, blocks, size, step), key_blocks(vu, blocks, size, step)
        chunk = chunk_blocks(qu.shape[0] * qu.shape[1] * queries * size)
        unit_bias, unit_valid = select(detached, examples, hs), select(valid, examples, hs)
        for part, needs_mask in pieces(blocks, masked, chunk, whole_unmasked=False):
            kc, vc = (ku[:, :, :size], vu[:, :, :size]) if shared else (kb[:, :, part], vb[:, :, part])
            scores = cap(products(qu[:, :, part], kc.transpose(-1, -2), shared).mul_(scale), softcap)
            mask = additive_mask(unit_bias, unit_valid if needs_mask else None, part)
            if mask is not None:
                scores += mask
            peak = scores.amax(dim=-1, keepdim=True)
            peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
            scores = scores.sub_(peak).exp_()
            total = scores.sum(dim=-1, keepdim=True)
            keep = dropout.keep(tuple(scores.shape), examples, hs, part, q.device)
            packed[examples, hs, part] = pack_bits(keep.flatten(-2))
            scores.mul_(keep.view(torch.uint8))  # multiplying by bytes skips a bool-to-float conversion
            chunk_out = products(scores, vc, shared) * (dropout.scale / total.clamp_min(tiny))
            out[examples, hs, part] = chunk_out.to(out.dtype)
            chunk_lse = (peak + total.log()).squeeze(-1)
            lse[examples, hs, part] = torch.where(torch.isfinite(chunk_lse), chunk_lse, torch.zeros_like(chunk_lse))
    return out, lse, packed
