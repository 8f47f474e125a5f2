"""Blocked softmax attention with a per-block additive bias, as one custom autograd function.

Why custom: SDPA's fused CPU kernel falls back to its slow math kernel when the mask requires grad (a learned
relative-position bias). Here the forward runs the fused kernel on a detached bias and keeps the log-sum-exp;
the backward recomputes the scores chunk by chunk and returns the bias gradient with those of q, k and v.
"""

from __future__ import annotations

import torch

from attnreg.execution.blocked.backward import BackwardInputs, blocked_backward
from attnreg.execution.blocked.chunks import additive_mask, cap, chunk_blocks, key_blocks, pieces, products
from attnreg.execution.blocked.dropped import BlockDropout, dropped_forward


def _mask_chunk(bias: torch.Tensor | None, valid: torch.Tensor | None, blocks: int) -> int:
    """How many blocks one chunk holds when only the additive mask (bias + validity) is materialised."""
    if bias is None or valid is None:
        return blocks  # one of them alone is passed as a view, nothing is materialised
    shapes = [bias.shape, valid.shape]
    per_block = 1
    for dim in (0, 1, 3, 4):
        per_block *= max(shape[dim] for shape in shapes)
    return chunk_blocks(per_block)


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
    softcap: float | None = None,
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
    scores = cap(products(q.to(compute), k.to(compute).transpose(-1, -2), shared) * scale, softcap)
    if mask is not None:
        scores = scores + mask
    lse = torch.logsumexp(scores, dim=-1)
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    out = products(torch.exp(scores - lse.unsqueeze(-1)), v.to(compute), shared)
    return out.to(q.dtype), lse


def _few_masked(masked: tuple[bool, ...] | None, blocks: int) -> bool:
    """Whether at most an eighth of the blocks need the key mask, and some do not (then recomputing them is cheap)."""
    if masked is None:
        return False
    count = sum(masked)
    return 0 < count * 8 <= blocks


class BlockedAttention(torch.autograd.Function):
    """``softmax(cap(q kᵀ · scale) + bias + mask) v`` per query block, returning the output and the log-sum-exp.

    ``q``: ``(batch, heads, blocks, queries, dim)``; ``k``/``v``: padded ``(batch, heads, keys, dim)`` laid out by
    :func:`key_blocks` with ``size`` and ``step``; ``bias``: fp32 (fp64 for fp64 inputs), 5-D, broadcastable to the
    scores ``(batch, heads, blocks, queries, size)``; ``valid``: bool, 5-D, broadcastable likewise, read only for the
    blocks that ``masked`` (see :func:`pieces`) flags; ``dropout``: a :class:`BlockDropout` or ``None``.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, valid, size, step, scale, masked, dropout, softcap):
        ctx.layout = (size, step, scale, masked, None if dropout is None else dropout.scale, softcap)
        if dropout is not None:
            out, lse, keep = dropped_forward(q, k, v, bias, valid, (size, step, scale, masked, softcap), dropout)
            ctx.save_for_backward(q, k, v, bias, valid, out, lse, keep)
            return out, lse
        batch, heads, blocks, queries, _ = q.shape
        kb = key_blocks(k, blocks, size, step)
        vb = key_blocks(v, blocks, size, step)
        chunk = chunk_blocks(batch * heads * queries * size)
        flash = softcap is None and _flash_ok(q, size)  # the fused kernel cannot transform scores
        # the fused kernel never materialises scores: only the mask bounds a forward chunk
        forward_chunk = _mask_chunk(bias, valid, blocks) if flash else chunk
        detached = None if bias is None else bias.detach()
        runs = pieces(blocks, masked, forward_chunk, whole_unmasked=flash)

        def run(part: slice, needs_mask: bool) -> tuple[torch.Tensor, torch.Tensor]:
            mask = additive_mask(detached, valid if needs_mask else None, part)
            qc, kc, vc = q[:, :, part], kb[:, :, part], vb[:, :, part]
            return _forward_chunk(qc, kc, vc, mask, scale, step == 0, flash, softcap)

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
        ctx.save_for_backward(q, k, v, bias, valid, out, lse, None)
        return out, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_lse):
        q, k, v, bias, valid, out, lse, keep = ctx.saved_tensors
        size, step, scale, masked, keep_scale, softcap = ctx.layout
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        need_bias = bias is not None and ctx.needs_input_grad[3]
        inputs = BackwardInputs(
            q, k, v, bias, valid, out, lse, grad_out, grad_lse, size, step, scale, masked, keep, keep_scale, softcap
        )
        return (*blocked_backward(inputs, need_bias), None, None, None, None, None, None, None)


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
    dropout: BlockDropout | None = None,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run :class:`BlockedAttention`: output ``(batch, heads, blocks, queries, dim)`` and fp32 log-sum-exp.

    A row with no allowed key gives output 0 and log-sum-exp 0; callers that merge parts must mask it. With
    ``dropout`` the output is dropped (its normaliser is this call's own) and the log-sum-exp is not. With
    ``softcap`` the scaled scores become ``softcap * tanh(score / softcap)`` before the bias and mask.
    """
    return BlockedAttention.apply(q, k, v, bias, valid, size, step, scale, masked, dropout, softcap)
