"""``FlexEngine``: every pattern on PyTorch's FlexAttention, compiled once per shape; CUDA forward and backward, CPU
forward only (flex has no CPU backward: the dispatcher refuses CPU calls that need gradients, saying why)."""

from __future__ import annotations

import functools

import torch
from torch.nn.attention.flex_attention import flex_attention

from attnreg.execution.blocked.layout import cached, table_dtype
from attnreg.execution.blocked.sparse import token_mask
from attnreg.execution.call import AttentionCall, slot_count_reasons
from attnreg.execution.engine import Engine
from attnreg.execution.flex.layout import FlexLayout, build_layout
from attnreg.execution.flex.mods import BLOCK, Side, score_mod
from attnreg.execution.memo import remember
from attnreg.pattern.predicates import EMPTY, ScoreTerm, coverage_table

_FLOATS = frozenset({torch.float32, torch.bfloat16, torch.float16})
#: Effective FLOP/s of compiled flex over the visited blocks, and a fixed cost per call (the block tables' lookups,
#: a launch or two). CPU: measured on a shared 2-core machine, forward (window 256 each side + 1 global, 4096 tokens,
#: 12 heads x 64: 166 ms, against 65 ms for the blocked engine); CUDA: an H100-class estimate, fp32 at a fifth.
_CPU_RATE = 6.5e10
_CUDA_RATE = {torch.float16: 1.5e14, torch.bfloat16: 1.5e14, torch.float32: 3e13}
_OVERHEAD_S = {"cpu": 2e-3, "cuda": 1e-4}
#: Compiling a new shape on a CPU: seconds, counted in the estimate until that shape has run once (so the dispatcher
#: does not start a compile for a call another engine runs now; on CUDA the compile is amortised, as with any flex use).
_CPU_COMPILE_S = 5.0
#: The shapes compiled in this process, ``(q shape, dtype, pattern)`` (the latest :data:`_MEMO_LIMIT`).
_COMPILED: dict[tuple, bool] = {}
#: Entries each memo of this module keeps (:func:`attnreg.execution.memo.remember`).
_MEMO_LIMIT = 256
#: Backward: about 2.5 times the forward's work.
_GRAD_FACTOR = 3.5
#: Compiled graphs kept per compiled function: one per shape, dtype and set of parts (torch's default, 8, would fall
#: back to the unfused eager path after a few shapes).
_RECOMPILE_LIMIT = 64


def unavailable_reason() -> str | None:
    """Why flex cannot run in this process (torch.compile unsupported here), or ``None``."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile (dynamo) is not supported in this Python, and FlexAttention needs it"
    return None


#: Read once at import: dynamo cannot trace the question while compiling a user's model.
_UNAVAILABLE = unavailable_reason()


@functools.cache
def _compiled():
    """``flex_attention`` compiled with static shapes: one graph per shape, kept by torch.compile's own cache."""
    return torch.compile(flex_attention, dynamic=False)


def run_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mod, block_mask, scale: float) -> torch.Tensor:
    """Compiled flex attention; called as it is while a user's ``torch.compile`` traces (that compile fuses it)."""
    options = {"score_mod": mod, "block_mask": block_mask, "scale": scale}
    if torch.compiler.is_compiling():
        return flex_attention(q, k, v, **options)
    with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
        return _compiled()(q, k, v, **options)


def _token_table(call: AttentionCall) -> torch.Tensor | None:
    """``(heads, 2 * length - 1)`` fp32 bias of each offset ``j - i`` from ``1 - length`` to ``length - 1``: the
    learned table's and the score terms' (each a function of ``j - i``), or None without either."""
    length, device, table = call.length, call.device, None
    if call.bias_weight is not None:
        term = call.pattern.bias
        buckets = cached(("flex-buckets", term, length, str(device)), lambda: _offsets_of(term.bucket, length, device))
        table = table_dtype(call.bias_weight)[buckets].t()
    for term in call.pattern.score_terms:
        key = ("flex-term", term, length, call.num_heads, str(device))
        values = cached(key, lambda t=term: _term_table(t, length, call.num_heads, device))
        table = values if table is None else table + values
    return None if table is None else table.contiguous()


def _offsets_of(function, length: int, device: torch.device) -> torch.Tensor:
    return function(torch.arange(1 - length, length, device=device))


def _term_table(term: ScoreTerm, length: int, num_heads: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(heads, 2 * length - 1)``: ``term`` at query 0 and each offset (read as ``term(0, j - i)``)."""
    offsets = torch.arange(1 - length, length, device=device)
    return term.term(torch.zeros_like(offsets), offsets, num_heads).float()


def is_relative(term: ScoreTerm, length: int, heads: int) -> bool:
    """Whether ``term`` is a function of ``j - i`` alone at ``length``: checked on a few query rows, O(length)."""

    def check() -> bool:
        rows = torch.tensor(sorted({0, 1, length // 2, length - 1}))[:, None].clamp(max=length - 1)
        keys = torch.arange(length)[None, :]
        table = _term_table(term, length, heads)
        return torch.allclose(term.term(rows, keys, heads).float(), table[:, keys - rows + length - 1])

    return cached(("flex-relative", term, length, heads), check)


def _aggregated_table(call: AttentionCall) -> tuple[torch.Tensor | None, int]:
    """``(heads, offsets)`` bias of each ``g - block(i)`` (from ``-groups`` to ``count``) and the offset of 0."""
    if call.aggregated_bias_weight is None:
        return None, 0
    term = call.pattern.aggregated_bias
    groups = -(-call.length // call.pattern.aggregated_globals.global_block_size)
    key = ("flex-aggregated", term, groups, call.count, str(call.device))
    buckets = cached(key, lambda: term.bucket(torch.arange(-groups, call.count + 1, device=call.device)))
    return table_dtype(call.aggregated_bias_weight)[buckets].t().contiguous(), groups


def _keys(k: torch.Tensor, layout: FlexLayout, aggregated: torch.Tensor | None) -> torch.Tensor:
    """The token call's keys (or values): tokens, padding to whole blocks, aggregated keys, the global slots' keys."""
    pieces = [k]
    padding = layout.padded_keys - k.shape[2]
    if padding:
        pieces.append(k.new_zeros(k.shape[0], k.shape[1], padding, k.shape[3]))
    if aggregated is not None:
        pieces.append(aggregated)
    if layout.slots is not None:
        pieces.append(layout.slots.take(k))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)


def flex_attention_call(call: AttentionCall) -> torch.Tensor:
    """The output ``(batch, heads, length, head_dim)`` of ``call``; differentiable (CUDA) in every tensor input."""
    layout = call.per_batch(("flex", "layout"), lambda: build_layout(call))
    tensors = call.tensors()
    if not call.requires_grad:  # flex refuses CPU inputs that require grad, even under no_grad
        tensors = {name: tensor.detach() for name, tensor in tensors.items()}
    aggregated_k, aggregated_v = tensors.get("aggregated_k"), tensors.get("aggregated_v")
    token_table = _token_table(call)
    if token_table is not None and not call.requires_grad:
        token_table = token_table.detach()
    aggregated_table, offset = _aggregated_table(call)
    if aggregated_table is not None and not call.requires_grad:
        aggregated_table = aggregated_table.detach()

    def mod(side: Side):
        return score_mod(
            side,
            token_table=token_table,
            aggregated_table=aggregated_table,
            aggregated_offset=offset,
            softcap=call.pattern.softcap,
        )

    q, k, v = tensors["q"], tensors["k"], tensors["v"]
    keys, values = _keys(k, layout, aggregated_k), _keys(v, layout, aggregated_v)
    out = run_flex(q, keys, values, mod(layout.tokens), layout.token_mask, call.scale)
    if layout.slots is not None:
        gq, gk, gv = (tensors.get(f"global_{name}", plain) for name, plain in zip("qkv", (q, k, v), strict=True))
        if aggregated_k is not None:
            gk, gv = torch.cat([gk, aggregated_k], dim=2), torch.cat([gv, aggregated_v], dim=2)
        rows = run_flex(layout.slots.take(gq), gk, gv, mod(layout.rows), layout.row_mask, call.scale)
        out = layout.slots.put(rows, out)
    if layout.real is not None:
        out = torch.where(layout.real[:, None, :, None], out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out


#: Non-empty blocks of a mask part at a length, as Python ints: read while torch.compile traces, where counting the
#: coverage table would be a tensor read back (a graph break); the latest :data:`_MEMO_LIMIT`.
_BLOCKS_VISITED: dict[tuple, int] = {}


def _visited_blocks(call: AttentionCall) -> int:
    """Key blocks the token call visits, over all query blocks: counted in Python for a window, from the coverage
    table for a mask part (remembered; while tracing, before any eager call counted it, every block is assumed)."""
    length, blocks = call.length, -(-call.length // BLOCK)
    if call.pattern.mask is None:
        left, right = (length, length) if call.pattern.window is None else call.pattern.window.span(length)
        first = (max(0, q * BLOCK - left) // BLOCK for q in range(blocks))
        last = (min(length - 1, (q + 1) * BLOCK - 1 + right) // BLOCK for q in range(blocks))
        return sum(b - a + 1 for a, b in zip(first, last, strict=True))
    part = token_mask(call)
    key = (part, length)
    if key not in _BLOCKS_VISITED and torch.compiler.is_compiling():
        return blocks * blocks

    def count() -> int:
        return int((coverage_table(part, length, BLOCK) > EMPTY).sum())

    return remember(_BLOCKS_VISITED, key, count, _MEMO_LIMIT)


def visited_pairs(call: AttentionCall) -> int:
    """Query-key pairs flex computes: the pattern's non-empty blocks, the extra keys, the global rows (one global
    token as the typical case); from shapes alone."""
    length = call.length
    pairs = _visited_blocks(call) * BLOCK * BLOCK
    extras = call.count + (BLOCK if call.pattern.selected_globals is not None and call.global_mask is not None else 0)
    rows = BLOCK * (length + call.count) if extras > call.count else 0
    return pairs + length * extras + rows


class FlexEngine(Engine):
    """PyTorch FlexAttention: the pattern's block coverage as a ``BlockMask``, its biases as a ``score_mod``."""

    name = "flex"
    description = "torch FlexAttention, compiled per shape: block mask from the pattern, biases as score_mod"
    devices = frozenset({"cpu", "cuda"})
    dtypes = _FLOATS
    #: Flex has no CPU backward (torch raises for CPU inputs that require grad).
    gradient_devices = frozenset({"cuda"})

    def unsupported_reasons(self, call: AttentionCall) -> list[str]:
        reasons = [] if _UNAVAILABLE is None else [_UNAVAILABLE]
        if call.device.type == "cuda" and call.head_dim < 16:
            reasons.append(f"head_dim={call.head_dim}: FlexAttention's CUDA kernels need at least 16")
        for term in call.pattern.score_terms:
            if not is_relative(term, call.length, call.num_heads):
                reasons.append(f"score term {term.kind!r} is not a function of j - i alone (flex reads it by offset)")
        return reasons

    def untraceable_reasons(self, call: AttentionCall) -> list[str]:
        """Asked under torch.compile only: without ``max_globals`` the slot count is read from the data."""
        return slot_count_reasons(call)

    def estimated_cost(self, call: AttentionCall) -> float:
        device = "cuda" if call.device.type == "cuda" else "cpu"
        rate = _CPU_RATE if device == "cpu" else _CUDA_RATE.get(call.dtype, _CUDA_RATE[torch.float32])
        flops = 4 * call.batch * call.num_heads * call.head_dim * visited_pairs(call)
        factor = _GRAD_FACTOR if call.requires_grad else 1.0
        compiling = device == "cpu" and not torch.compiler.is_compiling() and _shape_key(call) not in _COMPILED
        return _OVERHEAD_S[device] + factor * flops / rate + (_CPU_COMPILE_S if compiling else 0.0)

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        out = flex_attention_call(call)
        remember(_COMPILED, _shape_key(call), lambda: True, _MEMO_LIMIT)
        return out


def _shape_key(call: AttentionCall) -> tuple:
    """What a compiled flex kernel is specialised on, near enough for the estimate: the shape, dtype and pattern."""
    return (tuple(call.q.shape), call.dtype, call.pattern)
