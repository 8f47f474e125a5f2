"""The backward of the blocked kernel: scores recomputed chunk by chunk from the saved log-sum-exp.

Two strategies with one result. Eager on the CPU, a loop over examples and heads whose matmuls sum the overlapping key
blocks' gradients in place, with buffers reused across chunks (the fastest there). Elsewhere (an accelerator, or while
compiling or tracing, where such loops mean many kernel launches or an unrolled graph of in-place updates), chunks
of blocks across all examples and heads at once, out of place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attnreg.execution import host
from attnreg.execution.blocked.chunks import additive_mask, chunk_blocks, key_blocks, pieces, products, select
from attnreg.execution.dropout import unpack_bits


@dataclass(frozen=True)
class BackwardInputs:
    """What the forward saved and the layout it ran with, plus the incoming gradients (``grad_lse`` may be None).

    With dropout, ``keep`` holds the packed keep flags ``(batch, heads, blocks, bytes)`` and ``keep_scale`` what a kept
    weight was multiplied by; both are None without. ``softcap``: the scores' soft cap, or None.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    bias: torch.Tensor | None
    valid: torch.Tensor | None
    out: torch.Tensor
    lse: torch.Tensor
    grad_out: torch.Tensor
    grad_lse: torch.Tensor | None
    size: int
    step: int
    scale: float
    masked: tuple[bool, ...] | None
    keep: torch.Tensor | None = None
    keep_scale: float | None = None
    softcap: float | None = None

    def grad_out_in(self, compute: torch.dtype) -> torch.Tensor:
        """The output gradient in ``compute``, times the keep scale with dropout (every use is on kept weights)."""
        grad = self.grad_out.to(compute)
        return grad if self.keep_scale is None else grad * self.keep_scale

    def keep_flags(self, examples: slice | int, heads: slice | int, part: slice) -> torch.Tensor | None:
        """The unpacked keep flags of blocks ``part`` for ``examples`` and ``heads``, shaped as their scores."""
        if self.keep is None:
            return None
        queries = self.q.shape[3]
        flags = unpack_bits(self.keep[examples, heads, part], queries * self.size)
        return flags.unflatten(-1, (queries, self.size))


@dataclass
class _Gradients:
    """``dq``, ``dk``, ``dv`` in the compute dtype (``dk``/``dv`` with ``rows`` rows) and ``dbias`` (or None)."""

    dq: torch.Tensor
    dk: torch.Tensor
    dv: torch.Tensor
    dbias: torch.Tensor | None


def blocked_backward(inputs: BackwardInputs, need_bias: bool) -> tuple[torch.Tensor, ...]:
    """``(dq, dk, dv, dbias)`` in the inputs' dtypes (``dbias`` None unless ``need_bias``)."""
    q, k, v = inputs.q, inputs.k, inputs.v
    batch, heads, blocks = q.shape[:3]
    compute = torch.promote_types(q.dtype, torch.float32)
    delta = (inputs.grad_out.to(compute) * inputs.out.to(compute)).sum(-1, keepdim=True)
    if inputs.grad_lse is not None:
        delta = delta - inputs.grad_lse.unsqueeze(-1).to(compute)
    # the key-gradient folds write whole steps of rows: past the keys when size is not a multiple of step (the
    # window part rounds it up, so not there), the excess sliced off at the end
    rows = (
        k.shape[2]
        if inputs.step == 0
        else (blocks - 1) * inputs.step + math.ceil(inputs.size / inputs.step) * inputs.step
    )
    rows = max(rows, k.shape[2])
    grads = _Gradients(
        dq=torch.empty(q.shape, dtype=compute, device=q.device),
        dk=torch.zeros((batch, heads, rows, k.shape[-1]), dtype=compute, device=q.device),
        dv=torch.zeros((batch, heads, rows, v.shape[-1]), dtype=compute, device=q.device),
        dbias=torch.zeros(inputs.bias.shape, dtype=inputs.bias.dtype, device=q.device) if need_bias else None,
    )
    lse = inputs.lse.unsqueeze(-1).to(compute)
    if host.eager_on_cpu(q):
        _per_head(inputs, grads, lse, delta, compute)
    else:
        _batched(inputs, grads, lse, delta, compute)
    dk, dv = grads.dk[:, :, : k.shape[2]], grads.dv[:, :, : v.shape[2]]
    return grads.dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), grads.dbias


def _per_head(
    inputs: BackwardInputs, grads: _Gradients, lse: torch.Tensor, delta: torch.Tensor, compute: torch.dtype
) -> None:
    """Eager CPU: per example and head, operands in the layout they come (per head, every matrix has unit column
    stride, as BLAS wants), gradients contiguous so that each block's key rows are one batched matmul's output."""
    q, k, v, size, step = inputs.q, inputs.k, inputs.v, inputs.size, inputs.step
    batch, heads, blocks, queries, _ = q.shape
    qc, go = q.to(compute), inputs.grad_out_in(compute)
    kb, vb = key_blocks(k.to(compute), blocks, size, step), key_blocks(v.to(compute), blocks, size, step)
    detached = None if inputs.bias is None else inputs.bias.detach()
    chunk = min(blocks, chunk_blocks(queries * size))
    buffers = 2 if inputs.softcap is None else 3  # the soft cap keeps its tanh for the chain rule
    scratch = tuple(q.new_empty((chunk, queries, size), dtype=compute) for _ in range(buffers))
    runs = pieces(blocks, inputs.masked, chunk, whole_unmasked=False)
    for example in range(batch):
        for head in range(heads):
            targets = _HeadGrads(
                grads.dq[example, head],
                grads.dk[example, head],
                grads.dv[example, head],
                _pick(grads.dbias, example, head, keep_dims=True),
            )
            operands = _HeadOperands(
                qc[example, head],
                go[example, head],
                lse[example, head],
                delta[example, head],
                kb[example, head],
                vb[example, head],
                size,
                step,
                inputs.scale,
                inputs.softcap,
            )
            for part, needs_mask in runs:
                valid = _pick(inputs.valid, example, head) if needs_mask else None
                mask = additive_mask(_pick(detached, example, head), valid, part)
                _backward_chunk(operands, targets, part, mask, inputs.keep_flags(example, head, part), scratch)


def _batched(
    inputs: BackwardInputs, grads: _Gradients, lse: torch.Tensor, delta: torch.Tensor, compute: torch.dtype
) -> None:
    """Off the eager CPU: chunks of blocks across every example and head, with out-of-place matmuls."""
    q, size, step, scale = inputs.q, inputs.size, inputs.step, inputs.scale
    batch, heads, blocks, queries, _ = q.shape
    shared = step == 0
    k, v = inputs.k.to(compute), inputs.v.to(compute)
    kb, vb = key_blocks(k, blocks, size, step), key_blocks(v, blocks, size, step)
    grad_out = inputs.grad_out_in(compute)
    detached = None if inputs.bias is None else inputs.bias.detach()
    chunk = chunk_blocks(batch * heads * queries * size)
    for part, needs_mask in pieces(blocks, inputs.masked, chunk, whole_unmasked=False):
        kc, vc = (k[:, :, :size], v[:, :, :size]) if shared else (kb[:, :, part], vb[:, :, part])
        qc, go = q[:, :, part].to(compute), grad_out[:, :, part]
        raw = products(qc, kc.transpose(-1, -2), shared) * scale
        tanh = None if inputs.softcap is None else torch.tanh(raw / inputs.softcap)
        scores = (raw if tanh is None else tanh * inputs.softcap) - lse[:, :, part]
        mask = additive_mask(detached, inputs.valid if needs_mask else None, part)
        if mask is not None:
            scores = scores + mask
        probs = scores.exp()
        grad_probs = products(go, vc.transpose(-1, -2), shared)
        keep = inputs.keep_flags(slice(None), slice(None), part)
        if keep is not None:
            keep = keep.view(torch.uint8)
            grad_probs, probs_kept = grad_probs * keep, probs * keep
        ds = (grad_probs - delta[:, :, part]) * probs
        if keep is not None:
            probs = probs_kept
        if grads.dbias is not None:
            _add_bias(grads.dbias, ds, part)
        if tanh is not None:
            ds = ds * (1 - tanh * tanh)  # through the soft cap to the raw scores
        grads.dq[:, :, part] = products(ds, kc, shared) * scale
        key_grad, value_grad = _key_products(ds, qc, shared) * scale, _key_products(probs, go, shared)
        if shared:
            grads.dk[:, :, :size] += key_grad
            grads.dv[:, :, :size] += value_grad
        else:
            _fold(grads.dk, key_grad, part.start, step)
            _fold(grads.dv, value_grad, part.start, step)


def _key_products(a: torch.Tensor, b: torch.Tensor, shared: bool) -> torch.Tensor:
    """``aᵀ @ b`` per block (``(batch, heads, c, keys, dim)``), or summed over the chunk's blocks when shared."""
    if not shared:
        return a.transpose(-1, -2) @ b
    return a.flatten(2, 3).transpose(-1, -2) @ b.flatten(2, 3)


def _fold(target: torch.Tensor, grad: torch.Tensor, first: int, step: int) -> None:
    """Add per-block key gradients ``(batch, heads, c, size, dim)`` of blocks ``first...`` into ``target``'s rows."""
    batch, heads, count, size, dim = grad.shape
    for offset in range(0, size, step):
        width = min(step, size - offset)
        start = first * step + offset
        region = target[:, :, start : start + count * step].view(batch, heads, count, step, dim)
        region[:, :, :, :width] += grad[:, :, :, offset : offset + width]


def _add_bias(dbias: torch.Tensor, ds: torch.Tensor, part: slice) -> None:
    """Add the score gradient ``ds`` ``(batch, heads, c, queries, keys)`` of blocks ``part``, summed over what the
    bias broadcasts."""
    dims = [d for d in (0, 1, 3) if dbias.shape[d] == 1 and ds.shape[d] != 1]
    reduced = (ds.sum(dim=dims, keepdim=True) if dims else ds).to(dbias.dtype)
    if dbias.shape[2] > 1:
        dbias[:, :, part] += reduced
    else:
        dbias += reduced.sum(2, keepdim=True)


def _pick(x: torch.Tensor | None, example: int, head: int, keep_dims: bool = False) -> torch.Tensor | None:
    """One example's and head's ``(blocks|1, queries|1, keys)`` view of a 5-D tensor broadcast over both (with
    ``keep_dims``, still 5-D: ``(1, 1, blocks|1, queries|1, keys)``)."""
    picked = select(x, slice(example, example + 1), slice(head, head + 1))
    return picked if picked is None or keep_dims else picked[0, 0]


@dataclass(frozen=True)
class _HeadOperands:
    """What one example's and head's backward reads: ``q`` ``(blocks, queries, dim)`` like ``grad_out``; ``lse``
    and ``delta`` ``(blocks, queries, 1)``; ``k``/``v``: each block's keys ``(blocks, size, dim)`` (see
    :func:`key_blocks`; with ``step == 0`` a stride-0 view of the shared keys); the layout, the score scale and the
    soft cap (or None)."""

    q: torch.Tensor
    grad_out: torch.Tensor
    lse: torch.Tensor
    delta: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    size: int
    step: int
    scale: float
    softcap: float | None


@dataclass(frozen=True)
class _HeadGrads:
    """Where one example's and head's gradients go: views of the full ``dq``/``dk``/``dv``, and of the bias
    gradient (5-D, see :func:`_pick`), or None."""

    dq: torch.Tensor
    dk: torch.Tensor
    dv: torch.Tensor
    dbias: torch.Tensor | None


def _backward_chunk(
    ops: _HeadOperands,
    grads: _HeadGrads,
    part: slice,
    mask: torch.Tensor | None,
    keep: torch.Tensor | None,
    scratch: tuple[torch.Tensor, ...],
) -> None:
    """The gradients of blocks ``part`` for one example and head, the scores recomputed from the log-sum-exp.

    With dropout, ``keep`` ``(count, queries, keys)`` are the blocks' keep flags (``grad_out`` comes scaled): the
    probability gradient and the value gradient see only kept weights, the softmax's own gradient all of them.

    Key and value gradients of overlapping key blocks are summed by the matmuls themselves (``baddbmm_`` into each
    block's rows), never materialised per block. ``scratch``: two ``(chunk, queries, keys)`` buffers (three with a soft
    cap, which keeps its tanh) that every chunk reuses; a fresh multi-megabyte tensor per chunk is returned to the OS
    and page-faulted in again each time.
    """
    q, grad_out, lse, delta = ops.q[part], ops.grad_out[part], ops.lse[part], ops.delta[part]
    count, queries, dim = q.shape
    # with a soft cap the log-sum-exp is subtracted after the cap, not in the matmul
    lse_beta = -1 if ops.softcap is None else 0
    if ops.step == 0:
        k, v = ops.k[0], ops.v[0]  # every block shares the same keys
        flat_q, flat_grad = q.reshape(-1, dim), grad_out.reshape(-1, grad_out.shape[-1])
        scores, ds = (buffer[:count].view(-1, ops.size) for buffer in scratch[:2])
        torch.addmm(lse.reshape(-1, 1), flat_q, k.T, beta=lse_beta, alpha=ops.scale, out=scores)
        torch.addmm(delta.reshape(-1, 1), flat_grad, v.T, beta=-1 if keep is None else 0, out=ds)
        scores, ds = scores.view(count, queries, ops.size), ds.view(count, queries, ops.size)
    else:
        k, v = ops.k[part], ops.v[part]
        scores, ds = (buffer[:count] for buffer in scratch[:2])
        torch.baddbmm(lse, q, k.transpose(-1, -2), beta=lse_beta, alpha=ops.scale, out=scores)
        torch.baddbmm(delta, grad_out, v.transpose(-1, -2), beta=-1 if keep is None else 0, out=ds)
    tanh = None
    if ops.softcap is not None:
        tanh = torch.tanh(scores.div_(ops.softcap), out=scratch[2][:count].view(scores.shape))
        torch.mul(tanh, ops.softcap, out=scores).sub_(lse)
    if keep is not None:
        keep = keep.view(torch.uint8)  # multiplying by bytes skips a bool-to-float conversion
        ds.mul_(keep).sub_(delta)
    if mask is not None:
        scores += mask
    probs = scores.exp_()
    ds.mul_(probs)
    if keep is not None:
        probs.mul_(keep)
    if grads.dbias is not None:
        _add_bias(grads.dbias, ds[None, None], part)
    if tanh is not None:
        ds.mul_(tanh.square_().neg_().add_(1))  # through the soft cap to the raw scores
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
