"""Blocked softmax attention with a per-block additive bias, as one custom autograd function.

Why custom: SDPA's fused CPU kernel falls back to its slow math kernel when the mask requires grad (a learned
relative-position bias). Here the forward runs the fused kernel on a detached bias and keeps the log-sum-exp;
the backward recomputes the scores chunk by chunk and returns the bias gradient with those of q, k and v.
"""

from __future__ import annotations

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
    """The fp32 additive mask of the blocks in ``blocks``: ``bias`` plus ``-inf`` where ``valid`` is False."""
    parts = []
    if bias is not None:
        parts.append(bias[:, :, blocks] if bias.shape[2] > 1 else bias)
    if valid is not None:
        chunk = valid[:, :, blocks] if valid.shape[2] > 1 else valid
        zero = torch.zeros((), device=chunk.device, dtype=torch.float32 if bias is None else bias.dtype)
        parts.append(zero.masked_fill(~chunk, float("-inf")).expand(chunk.shape))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def chunk_size(shape: tuple[int, ...]) -> int:
    """How many query blocks one chunk holds, from ``(batch, heads, blocks, queries, keys)``."""
    batch, heads, _, queries, keys = shape
    return max(1, CHUNK_ELEMENTS // max(1, batch * heads * queries * keys))


def _products(a: torch.Tensor, b: torch.Tensor, shared: bool) -> torch.Tensor:
    """``a @ b`` per block: ``a`` ``(batch, heads, c, rows, x)``; ``b`` ``(batch, heads, c, x, y)``, or one
    ``(batch, heads, x, y)`` shared by every block (then a single matmul over all the chunk's rows)."""
    if not shared:
        return a @ b
    return (a.flatten(2, 3) @ b).view(*a.shape[:-1], b.shape[-1])


def _shifted_products(a: torch.Tensor, b: torch.Tensor, shift: torch.Tensor, shared: bool) -> torch.Tensor:
    """``a @ b - shift`` as :func:`_products` does ``a @ b``, the subtraction fused into the matmul.

    ``shift``: ``(batch, heads, c, rows, 1)``; one pass over the ``rows × y`` result instead of two.
    """
    batch, heads = a.shape[:2]
    rows = a.shape[2] * a.shape[3] if shared else a.shape[3]
    lead = batch * heads if shared else batch * heads * a.shape[2]
    a3 = a.reshape(lead, rows, a.shape[-1])
    b3 = b.reshape(lead, *b.shape[-2:])
    out = torch.baddbmm(shift.reshape(lead, rows, 1), a3, b3, beta=-1)
    return out.view(*a.shape[:-1], b.shape[-1])


def _key_grad(a: torch.Tensor, b: torch.Tensor, shared: bool) -> torch.Tensor:
    """``aᵀ @ b`` per block (``(batch, heads, c, keys, dim)``), or summed over the chunk's blocks when shared."""
    if not shared:
        return a.transpose(-1, -2) @ b
    return a.flatten(2, 3).transpose(-1, -2) @ b.flatten(2, 3)


def _mask_chunk(bias: torch.Tensor | None, valid: torch.Tensor | None, blocks: int) -> int:
    """How many blocks one chunk holds when only the additive mask (bias + validity) is materialised."""
    if bias is None or valid is None:
        return blocks  # one of them alone is passed as a view, nothing is materialised
    shapes = [bias.shape, valid.shape]
    per_block = 1
    for dim in (0, 1, 3, 4):
        per_block *= max(shape[dim] for shape in shapes)
    return max(1, CHUNK_ELEMENTS // per_block)


def _flash_ok(q: torch.Tensor) -> bool:
    return q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16, torch.float16)


def _forward_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float, shared: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and log-sum-exp of one chunk ``(batch, heads, c, queries, dim)``; fully masked rows give 0 and 0.

    ``k``/``v``: ``(batch, heads, c, keys, dim)`` views (stride 0 over blocks when ``shared``)."""
    if _flash_ok(q):
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


def _fold(target: torch.Tensor, grad: torch.Tensor, first: int, step: int) -> None:
    """Add per-block key gradients ``(batch, heads, c, size, dim)`` of blocks ``first...`` into ``target`` in place."""
    batch, heads, count, size, dim = grad.shape
    for piece in range(0, size, step):
        width = min(step, size - piece)
        start = first * step + piece
        region = target[:, :, start : start + count * step].view(batch, heads, count, step, dim)
        region[:, :, :, :width] += grad[:, :, :, piece : piece + width]


def _reduce_to(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a broadcast gradient back to ``shape`` (same number of dimensions)."""
    dims = [d for d, (g, s) in enumerate(zip(grad.shape, shape, strict=True)) if s == 1 and g != 1]
    return grad.sum(dim=dims, keepdim=True) if dims else grad


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


class BlockedAttention(torch.autograd.Function):
    """``softmax(q kᵀ · scale + bias + mask) v`` per query block, returning the output and the log-sum-exp.

    ``q``: ``(batch, heads, blocks, queries, dim)``; ``k``/``v``: padded ``(batch, heads, keys, dim)`` laid out by
    :func:`key_blocks` with ``size`` and ``step``; ``bias``: fp32, 5-D, broadcastable to the scores
    ``(batch, heads, blocks, queries, size)``; ``valid``: bool, 5-D, broadcastable likewise, read only for the
    blocks that ``masked`` (see :func:`pieces`) flags.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, valid, size, step, scale, masked):
        batch, heads, blocks, queries, _ = q.shape
        kb = key_blocks(k, blocks, size, step)
        vb = key_blocks(v, blocks, size, step)
        chunk = chunk_size((batch, heads, blocks, queries, size))
        flash = _flash_ok(q)
        # the fused kernel never materialises scores: only the mask bounds a forward chunk
        forward_chunk = _mask_chunk(bias, valid, blocks) if flash else chunk
        outs, lses = [], []
        for part, needs_mask in pieces(blocks, masked, forward_chunk, whole_unmasked=flash):
            mask = additive_mask(None if bias is None else bias.detach(), valid if needs_mask else None, part)
            out, lse = _forward_chunk(q[:, :, part], kb[:, :, part], vb[:, :, part], mask, scale, step == 0)
            outs.append(out)
            lses.append(lse)
        out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
        lse = torch.cat(lses, dim=2) if len(lses) > 1 else lses[0]
        ctx.save_for_backward(q, k, v, bias, valid, out, lse)
        ctx.layout = (size, step, scale, chunk, masked)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, bias, valid, out, lse = ctx.saved_tensors
        size, step, scale, chunk, masked = ctx.layout
        blocks = q.shape[2]
        compute = torch.promote_types(q.dtype, torch.float32)
        kb = key_blocks(k, blocks, size, step)
        vb = key_blocks(v, blocks, size, step)
        dq = torch.empty(q.shape, dtype=compute, device=q.device)
        dk = torch.zeros(k.shape, dtype=compute, device=k.device)
        dv = torch.zeros(v.shape, dtype=compute, device=v.device)
        need_bias = bias is not None and ctx.needs_input_grad[3]
        dbias = torch.zeros(bias.shape, dtype=bias.dtype, device=q.device) if need_bias else None
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        shared = step == 0
        delta = (grad_out.to(compute) * out.to(compute)).sum(-1, keepdim=True)
        if grad_lse is not None:
            delta = delta - grad_lse.unsqueeze(-1).to(compute)
        lse = lse.unsqueeze(-1).to(compute)
        for part, needs_mask in pieces(blocks, masked, chunk, whole_unmasked=False):
            first = part.start
            if shared:
                kc, vc = k[:, :, :size].to(compute), v[:, :, :size].to(compute)
            else:
                kc, vc = kb[:, :, part].to(compute).contiguous(), vb[:, :, part].to(compute)
            qc = q[:, :, part].to(compute)
            qs = qc * scale
            scores = _shifted_products(qs, kc.transpose(-1, -2), lse[:, :, part], shared)
            mask = additive_mask(None if bias is None else bias.detach(), valid if needs_mask else None, part)
            if mask is not None:
                scores += mask
            probs = scores.exp_()
            grad_c = grad_out[:, :, part].to(compute)
            grad_scores = _shifted_products(grad_c, vc.transpose(-1, -2), delta[:, :, part], shared).mul_(probs)
            dq[:, :, part] = _products(grad_scores, kc, shared).mul_(scale)
            key_grad = _key_grad(grad_scores, qc, shared).mul_(scale)
            value_grad = _key_grad(probs, grad_c, shared)
            if shared:
                dk[:, :, :size] += key_grad
                dv[:, :, :size] += value_grad
            else:
                _fold(dk, key_grad, first, step)
                _fold(dv, value_grad, first, step)
            if need_bias:
                shape = (*bias.shape[:2], grad_scores.shape[2], *bias.shape[3:])
                reduced = _reduce_to(grad_scores.to(bias.dtype), shape)
                if bias.shape[2] > 1:
                    dbias[:, :, part] += reduced
                else:
                    dbias += reduced.sum(2, keepdim=True)
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
