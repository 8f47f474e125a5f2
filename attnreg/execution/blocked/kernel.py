"""Blocked softmax attention with a per-block additive bias, as one custom autograd function.

Why custom: SDPA's fused CPU kernel falls back to its slow math kernel when the mask requires grad (a learned
relative-position bias). Here the forward runs the fused kernel on a detached bias and keeps the log-sum-exp;
the backward recomputes the scores chunk by chunk and returns the bias gradient with those of q, k and v.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Score elements (batch × heads × blocks × queries × keys) one chunk works on; bounds the working memory.
CHUNK_ELEMENTS = 1 << 20


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


def _products(a: torch.Tensor, b: torch.Tensor, shared: bool) -> torch.Tensor:
    """``a @ b`` per block: ``a`` ``(batch, heads, c, rows, x)``; ``b`` ``(batch, heads, c, x, y)``, or one
    ``(batch, heads, x, y)`` shared by every block (then a single matmul over all the chunk's rows)."""
    if not shared:
        return a @ b
    return (a.flatten(2, 3) @ b).view(*a.shape[:-1], b.shape[-1])


def _mask_chunk(bias: torch.Tensor | None, valid: torch.Tensor | None, blocks: int) -> int:
    """How many blocks one chunk holds when only the additive mask (bias + validity) is materialised."""
    if bias is None or valid is None:
        return blocks  # one of them alone is passed as a view, nothing is materialised
    shapes = [bias.shape, valid.shape]
    per_block = 1
    for dim in (0, 1, 3, 4):
        per_block *= max(shape[dim] for shape in shapes)
    return max(1, CHUNK_ELEMENTS // per_block)


#: Fewer keys per block than this run on plain matmuls: the fused kernel's fixed cost per block then dominates
#: (one global key for 16k queries in 12 heads: 38 ms fused, a few ms as matmuls).
FLASH_MIN_KEYS = 16


def _flash_ok(q: torch.Tensor, keys: int) -> bool:
    """Whether SDPA's fused CPU kernel runs blocks of ``q`` against ``keys`` keys."""
    return (
        q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16, torch.float16) and keys >= FLASH_MIN_KEYS
    )


def _forward_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    shared: bool,
    flash: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and log-sum-exp of one chunk ``(batch, heads, c, queries, dim)``; fully masked rows give 0 and 0.

    ``k``/``v``: ``(batch, heads, c, keys, dim)`` views (stride 0 over blocks when ``shared``); ``flash``: on the
    fused kernel (see :func:`_flash_ok`), else on matmuls."""
    if flash:
        outs, lses = [], []
        for example in range(q.shape[0]):
            m = None
            if mask is not None:
                m = mask[example if mask.shape[0] > 1 else 0]
                if m.dtype != q.dtype and q.dtype == torch.float64:
                    m = m.to(q.dtype)
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q[example], k[example], v[example], attn_mask=m, scale=scale
            )
            outs.append(out)
            lses.append(lse.float())  # the fused kernel returns fp32 (fp64 is not routed here)
        if len(outs) == 1:
            return outs[0].unsqueeze(0), lses[0].unsqueeze(0)
        return torch.stack(outs), torch.stack(lses)
    compute = torch.promote_types(q.dtype, torch.float32)
    if shared:
        k, v = k[:, :, 0], v[:, :, 0]
    scores = _products(q.to(compute), k.to(compute).transpose(-1, -2), shared) * scale
    if mask is not None:
        scores = scores + mask
    lse = torch.logsumexp(scores, dim=-1)
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    out = _products(torch.exp(scores - lse.unsqueeze(-1)), v.to(compute), shared)
    return out.to(q.dtype), lse


def _pick(x: torch.Tensor | None, example: int, head: int) -> torch.Tensor | None:
    """One example's and head's ``(blocks|1, queries|1, keys)`` view of a 5-D tensor broadcast over both."""
    if x is None:
        return None
    return x[example if x.shape[0] > 1 else 0, head if x.shape[1] > 1 else 0]


@dataclass(frozen=True)
class _HeadOperands:
    """What one example's and head's backward reads: ``q`` ``(blocks, queries, dim)`` like ``grad_out``; ``lse``
    and ``delta`` ``(blocks, queries, 1)``; the padded ``k``/``v`` ``(keys, dim)``; the layout and the score scale."""

    q: torch.Tensor
    grad_out: torch.Tensor
    lse: torch.Tensor
    delta: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    size: int
    step: int
    scale: float


@dataclass(frozen=True)
class _HeadGrads:
    """Where one example's and head's gradients go: views of the full ``dq``/``dk``/``dv``, and the bias gradient."""

    dq: torch.Tensor
    dk: torch.Tensor
    dv: torch.Tensor
    dbias: torch.Tensor | None
    example: int
    head: int

    def add_bias(self, ds: torch.Tensor, part: slice) -> None:
        """Add the score gradient ``ds`` ``(c, queries, keys)`` of blocks ``part``, reduced to the bias's shape."""
        target = _pick(self.dbias, self.example, self.head)
        if target is None:
            return
        reduced = (ds if target.shape[1] > 1 else ds.sum(1, keepdim=True)).to(target.dtype)
        if target.shape[0] > 1:
            target[part] += reduced
        else:
            target += reduced.sum(0, keepdim=True)


def _backward_chunk(
    ops: _HeadOperands,
    grads: _HeadGrads,
    part: slice,
    mask: torch.Tensor | None,
    scratch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """The gradients of blocks ``part`` for one example and head, the scores recomputed from the log-sum-exp.

    Key and value gradients of overlapping key blocks are summed by the matmuls themselves (``baddbmm_`` into each
    block's rows), never materialised per block. ``scratch``: two ``(chunk, queries, keys)`` buffers that every chunk
    reuses; a fresh multi-megabyte tensor per chunk is returned to the OS and page-faulted in again each time.
    """
    q, grad_out, lse, delta = ops.q[part], ops.grad_out[part], ops.lse[part], ops.delta[part]
    count, queries, dim = q.shape
    if ops.step == 0:
        k, v = ops.k[: ops.size], ops.v[: ops.size]
        flat_q, flat_grad = q.reshape(-1, dim), grad_out.reshape(-1, grad_out.shape[-1])
        scores, ds = (buffer[:count].view(-1, ops.size) for buffer in scratch)
        torch.addmm(lse.reshape(-1, 1), flat_q, k.T, beta=-1, alpha=ops.scale, out=scores)
        torch.addmm(delta.reshape(-1, 1), flat_grad, v.T, beta=-1, out=ds)
        scores, ds = scores.view(count, queries, ops.size), ds.view(count, queries, ops.size)
    else:
        k = ops.k.unfold(0, ops.size, ops.step).transpose(-1, -2)[part]
        v = ops.v.unfold(0, ops.size, ops.step).transpose(-1, -2)[part]
        scores, ds = (buffer[:count] for buffer in scratch)
        torch.baddbmm(lse, q, k.transpose(-1, -2), beta=-1, alpha=ops.scale, out=scores)
        torch.baddbmm(delta, grad_out, v.transpose(-1, -2), beta=-1, out=ds)
    if mask is not None:
        scores += mask
    probs = scores.exp_()
    ds.mul_(probs)
    grads.add_bias(ds, part)
    if ops.step == 0:
        flat_ds, flat_probs = ds.view(-1, ops.size), probs.view(-1, ops.size)
        grads.dq[part].view(-1, dim).addmm_(flat_ds, k, beta=0, alpha=ops.scale)
        grads.dk[: ops.size].addmm_(flat_ds.T, flat_q, alpha=ops.scale)
        grads.dv[: ops.size].addmm_(flat_probs.T, flat_grad)
        return
    grads.dq[part].baddbmm_(ds, k, beta=0, alpha=ops.scale)
    for offset in range(0, ops.size, ops.step):
        width = min(ops.step, ops.size - offset)
        rows = slice(part.start * ops.step + offset, part.start * ops.step + offset + count * ops.step)
        keys = slice(offset, offset + width)
        grads.dk[rows].view(count, ops.step, dim)[:, :width].baddbmm_(
            ds[:, :, keys].transpose(-1, -2), q, alpha=ops.scale
        )
        grads.dv[rows].view(count, ops.step, -1)[:, :width].baddbmm_(probs[:, :, keys].transpose(-1, -2), grad_out)


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


def _few_masked(masked: tuple[bool, ...] | None, blocks: int) -> bool:
    """Whether at most an eighth of the blocks need the key mask, and some do not (then recomputing them is cheap)."""
    if masked is None:
        return False
    count = sum(masked)
    return 0 < count * 8 <= blocks


class BlockedAttention(torch.autograd.Function):
    """``softmax(q kᵀ · scale + bias + mask) v`` per query block, returning the output and the log-sum-exp.

    ``q``: ``(batch, heads, blocks, queries, dim)``; ``k``/``v``: padded ``(batch, heads, keys, dim)`` laid out by
    :func:`key_blocks` with ``size`` and ``step``; ``bias``: fp32 (fp64 for fp64 inputs), 5-D, broadcastable to the
    scores ``(batch, heads, blocks, queries, size)``; ``valid``: bool, 5-D, broadcastable likewise, read only for the
    blocks that ``masked`` (see :func:`pieces`) flags.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, valid, size, step, scale, masked):
        batch, heads, blocks, queries, _ = q.shape
        kb = key_blocks(k, blocks, size, step)
        vb = key_blocks(v, blocks, size, step)
        chunk = max(1, CHUNK_ELEMENTS // max(1, batch * heads * queries * size))
        flash = _flash_ok(q, size)
        # the fused kernel never materialises scores: only the mask bounds a forward chunk
        forward_chunk = _mask_chunk(bias, valid, blocks) if flash else chunk
        detached = None if bias is None else bias.detach()
        runs = pieces(blocks, masked, forward_chunk, whole_unmasked=flash)

        def run(part: slice, needs_mask: bool) -> tuple[torch.Tensor, torch.Tensor]:
            mask = additive_mask(detached, valid if needs_mask else None, part)
            return _forward_chunk(q[:, :, part], kb[:, :, part], vb[:, :, part], mask, scale, step == 0, flash)

        if flash and _few_masked(masked, blocks):
            # every block in one fused call without the key mask, then the few masked blocks again, in place: cheaper
            # than assembling the pieces' outputs into a new tensor
            out, lse = run(slice(0, blocks), False)
            for part, needs_mask in runs:
                if needs_mask:
                    out[:, :, part], lse[:, :, part] = run(part, True)
        else:
            outs, lses = zip(*(run(part, needs_mask) for part, needs_mask in runs), strict=True)
            out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
            lse = torch.cat(lses, dim=2) if len(lses) > 1 else lses[0]
        ctx.save_for_backward(q, k, v, bias, valid, out, lse)
        ctx.layout = (size, step, scale, masked)
        return out, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_lse):
        q, k, v, bias, valid, out, lse = ctx.saved_tensors
        size, step, scale, masked = ctx.layout
        batch, heads, blocks, queries, _ = q.shape
        compute = torch.promote_types(q.dtype, torch.float32)
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        # operands in whatever layout they come (per head, every matrix has unit column stride, as BLAS wants);
        # gradients contiguous, so that each block's rows are one batched matmul's output (a strided one is not)
        qc, go = q.to(compute), grad_out.to(compute)
        delta = (go * out.to(compute)).sum(-1, keepdim=True)
        if grad_lse is not None:
            delta = delta - grad_lse.unsqueeze(-1).to(compute)
        lse = lse.unsqueeze(-1).to(compute)
        kc, vc = k.to(compute), v.to(compute)
        # the fused folds write whole steps of rows: past the keys when size is not a multiple of step (the window
        # part rounds it up, so not there), the excess sliced off at the end
        rows = max(k.shape[2], 0 if step == 0 else (blocks - 1) * step + math.ceil(size / step) * step)
        dq = torch.empty(q.shape, dtype=compute, device=q.device)
        dk = torch.zeros((batch, heads, rows, k.shape[-1]), dtype=compute, device=q.device)
        dv = torch.zeros((batch, heads, rows, v.shape[-1]), dtype=compute, device=q.device)
        need_bias = bias is not None and ctx.needs_input_grad[3]
        dbias = torch.zeros(bias.shape, dtype=bias.dtype, device=q.device) if need_bias else None
        detached = None if bias is None else bias.detach()
        chunk = min(blocks, max(1, CHUNK_ELEMENTS // max(1, queries * size)))
        scratch = (
            q.new_empty((chunk, queries, size), dtype=compute),
            q.new_empty((chunk, queries, size), dtype=compute),
        )
        runs = pieces(blocks, masked, chunk, whole_unmasked=False)
        for example in range(batch):
            for head in range(heads):
                grads = _HeadGrads(dq[example, head], dk[example, head], dv[example, head], dbias, example, head)
                operands = _HeadOperands(
                    qc[example, head],
                    go[example, head],
                    lse[example, head],
                    delta[example, head],
                    kc[example, head],
                    vc[example, head],
                    size,
                    step,
                    scale,
                )
                for part, needs_mask in runs:
                    mask = additive_mask(
                        _pick(detached, example, head), _pick(valid, example, head) if needs_mask else None, part
                    )
                    _backward_chunk(operands, grads, part, mask, scratch)
        dk, dv = dk[:, :, : k.shape[2]], dv[:, :, : v.shape[2]]
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dbias, None, None, None, None, None


def blocked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    size: int,
    step: int,
    scale: float,
    bias: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    masked: tuple[bool, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run :class:`BlockedAttention`: output ``(batch, heads, blocks, queries, dim)`` and fp32 log-sum-exp.

    A row with no allowed key gives output 0 and log-sum-exp 0; callers that merge parts must mask it.
    """
    return BlockedAttention.apply(q, k, v, bias, valid, size, step, scale, masked)
