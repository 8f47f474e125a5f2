"""What the xformers engine passes to xformers, built in plain torch: query/key layouts, tensor biases, mask parameters.

Why apart from the xformers calls: everything here runs on any device, so the tests check on CPU that the biases and
masks handed to the kernels, spelled out densely by :func:`densify`, equal the reference's ``pattern.materialize``.

Layout: a kernel call runs ``groups`` query blocks of ``rows`` queries per example; query ``(g, r)`` is position
``query_positions[g, r]`` and its keys are the columns ``key_columns[g]`` of the keys "tokens then aggregated
tokens" (columns ``0..n-1`` are tokens, ``n + g`` aggregated token ``g``). A tensor bias is ``-inf`` outside the
pattern; its storage is padded to 8 elements in the last dimension (xformers' alignment rule) and sliced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnreg.execution.call import AttentionCall
from attnreg.execution.window_reach import window_reach

#: xformers reads tensor biases whose strides are multiples of 16 bytes: pad the last dimension to 8 elements.
BIAS_ALIGNMENT = 8
#: Queries per group of the tensor-bias window call (the ``rows`` of :func:`block_layout`), for the xformers
#: engine only; the blocked engine's query block is :data:`attnreg.execution.blocked.layout.QUERY_BLOCK`.
XFORMERS_QUERY_BLOCK = 128


@dataclass(frozen=True)
class LocalMask:
    """A square window mask, the parameters of xformers' ``LocalAttentionFromBottomRightMask``.

    Query ``q`` sees key ``k`` iff ``q - window_left <= k + s <= q + window_right`` with ``s = queries - keys``.
    """

    window_left: int
    window_right: int

    def materialize(self, num_queries: int, num_keys: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The ``(num_queries, num_keys)`` float mask: 0 where a query sees a key, ``-inf`` elsewhere."""
        shift = num_queries - num_keys
        q = torch.arange(num_queries, device=device)[:, None]
        k = torch.arange(num_keys, device=device)[None, :]
        inside = (q - self.window_left <= k + shift) & (k + shift <= q + self.window_right)
        return torch.zeros(num_queries, num_keys, device=device).masked_fill(~inside, float("-inf"))


@dataclass(frozen=True)
class KernelCall:
    """One call into xformers: its queries, its keys, and its bias (a tensor) or structural mask.

    - ``projections``: ``"tokens"`` (q/k/v) or ``"global"`` (the global rows' own projections, if the call has them);
    - ``query_positions``: ``(1 or batch, groups, rows)`` int64 positions, clamped into the sequence;
    - ``live``: ``(batch, groups, rows)`` bool, the queries whose result this call gives (others are discarded);
    - ``key_columns``: ``(1 or batch, groups, keys)`` int64 columns of the "tokens then aggregated" keys;
    - ``bias``: ``(batch * groups, heads, rows, keys)`` in the inputs' dtype, ``-inf`` outside the pattern; or ``None``;
    - ``mask``: a :class:`LocalMask` over the whole sequence (then ``groups == 1`` and ``bias`` is ``None``).
    """

    name: str
    projections: str
    query_positions: torch.Tensor
    live: torch.Tensor
    key_columns: torch.Tensor
    bias: torch.Tensor | None = None
    mask: LocalMask | None = None

    @property
    def groups(self) -> int:
        return self.live.shape[1]

    @property
    def rows(self) -> int:
        return self.live.shape[2]

    @property
    def keys(self) -> int:
        return self.key_columns.shape[-1]

    def dense_bias(self) -> torch.Tensor:
        """The bias ``(batch * groups, heads or 1, rows, keys)`` this call applies, the mask spelled out if need be."""
        if self.mask is None:
            return self.bias
        return self.mask.materialize(self.rows, self.keys, self.key_columns.device)[None, None]


@dataclass(frozen=True)
class KernelShape:
    """What xformers' operators judge a :class:`KernelCall` by, known before any tensor is built: ``batch`` (examples
    times query groups), ``queries`` and ``keys`` per example, the structural ``mask`` or else a tensor bias, and
    whether that bias needs a gradient."""

    name: str
    batch: int
    queries: int
    keys: int
    mask: LocalMask | None
    trainable_bias: bool


@dataclass(frozen=True)
class Plan:
    """The calls of one attention: ``tokens`` answers every non-global query over its window and extra keys.

    ``global_rows`` (if any) recomputes the selected global queries over every key; ``row_slots`` ``(batch, length)``
    gives each such query's row in it. ``real`` is the ``(batch, length)`` key padding; padded queries give zeros.
    """

    tokens: KernelCall
    global_rows: KernelCall | None
    row_slots: torch.Tensor | None
    global_mask: torch.Tensor
    real: torch.Tensor

    @property
    def calls(self) -> tuple[KernelCall, ...]:
        return (self.tokens,) if self.global_rows is None else (self.tokens, self.global_rows)


@dataclass(frozen=True)
class _Keys:
    """A run of keys for a query layout: which query sees which key, the bias (fp32, heads first), the key columns."""

    allowed: torch.Tensor  # (batch, groups, rows, keys)
    bias: torch.Tensor | None  # (heads, 1 or batch, groups, rows, keys)
    columns: torch.Tensor  # (1 or batch, groups, keys)

    def restricted(self, where: torch.Tensor) -> _Keys:
        """The same keys, allowed only where ``where`` (bool, broadcastable to ``allowed``) is True too."""
        return _Keys(self.allowed & where, self.bias, self.columns)


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[b, index[b, ...]]`` for ``(batch, length)`` values and a ``(1 or batch, ...)`` index."""
    batch = values.shape[0]
    flat = index.expand(batch, *index.shape[1:]).reshape(batch, -1)
    return values.gather(1, flat).reshape(batch, *index.shape[1:])


def _token_keys(
    call: AttentionCall,
    real: torch.Tensor,
    queries: torch.Tensor,
    keys: torch.Tensor,
    sees: Callable[[torch.Tensor], torch.Tensor],
) -> _Keys:
    """Token keys at positions ``keys`` (may fall outside the sequence) for queries at ``queries``.

    ``sees(relative_position)`` says which pairs the run covers (the window, everything, or what the window misses).
    """
    n = call.length
    relative = keys[..., None, :] - queries[..., :, None]
    inside = (keys >= 0) & (keys < n)
    columns = keys.clamp(0, n - 1)
    real_keys = _take(real, columns) & inside
    allowed = sees(relative) & real_keys[..., None, :]
    bias = None
    if call.pattern.bias is not None and call.bias_weight is not None:
        bias = call.pattern.bias.lookup(call.bias_weight.float(), relative)
    return _Keys(allowed, bias, columns)


def _aggregated_keys(call: AttentionCall, real: torch.Tensor, queries: torch.Tensor) -> _Keys:
    """The aggregated keys for queries at ``queries`` (clamped positions): valid blocks, bias by ``g - block(i)``."""
    aggregated = call.pattern.aggregated_globals
    count = call.count
    block_ids = aggregated.block_ids(real)
    valid = aggregated.valid(block_ids, count)
    own_block = _take(block_ids, queries)
    slots = torch.arange(count, device=real.device)
    allowed = valid[:, None, None, :].expand(*own_block.shape, count)
    bias = None
    if call.pattern.aggregated_bias is not None and call.aggregated_bias_weight is not None:
        bias = call.pattern.aggregated_bias.lookup(call.aggregated_bias_weight.float(), slots - own_block[..., None])
    columns = (call.length + slots).expand(1, 1, count)
    return _Keys(allowed, bias, columns)


def _selected_keys(
    call: AttentionCall, real: torch.Tensor, queries: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor
) -> _Keys:
    """The selected global tokens as extra keys, for the pairs the window misses (a global key is counted once)."""
    window = call.pattern.window
    slot_keys = positions[:, None, :].expand(positions.shape[0], queries.shape[1], -1)
    if window is None:
        keys = _token_keys(call, real, queries, slot_keys, lambda rel: torch.zeros_like(rel, dtype=torch.bool))
    else:
        keys = _token_keys(call, real, queries, slot_keys, lambda rel: ~window.contains(rel))
    return keys.restricted(valid[:, None, None, :])


def _aligned_bias(call: AttentionCall, runs: list[_Keys], live_rows: torch.Tensor) -> torch.Tensor:
    """The runs' bias and mask as one ``(batch * groups, heads, rows, keys)`` tensor in 8-element-aligned storage.

    A row that sees no key (a padded query) sees its first key, so the kernel stays finite; ``live_rows`` rows are
    real queries, which always see something.
    """
    batch, groups, rows = live_rows.shape
    allowed = torch.cat([run.allowed.expand(batch, groups, rows, -1) for run in runs], dim=-1)
    empty = ~allowed.any(dim=-1, keepdim=True)
    first = torch.zeros_like(allowed)
    first[..., 0] = True
    allowed = allowed | (empty & first)
    keys = allowed.shape[-1]
    if all(run.bias is None for run in runs):
        values = torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, float("-inf"))[:, :, None]
        heads = 1
    else:
        heads = call.num_heads
        pieces = []
        for run in runs:
            shape = (heads, batch, groups, rows, run.allowed.shape[-1])
            pieces.append(torch.zeros(shape, device=allowed.device) if run.bias is None else run.bias.expand(shape))
        values = torch.cat(pieces, dim=-1).permute(1, 2, 0, 3, 4).masked_fill(~allowed[:, :, None], float("-inf"))
    padded = -(-keys // BIAS_ALIGNMENT) * BIAS_ALIGNMENT
    storage = torch.empty(batch * groups, heads, rows, padded, dtype=call.dtype, device=allowed.device)
    storage[..., keys:] = float("-inf")
    bias = storage[..., :keys]
    bias.copy_(values.reshape(batch * groups, heads, rows, keys))
    return bias.expand(-1, call.num_heads, -1, -1)


def _kernel_call(
    call: AttentionCall, name: str, projections: str, queries: torch.Tensor, live: torch.Tensor, runs: list[_Keys]
) -> KernelCall:
    """A tensor-bias call over ``runs`` side by side; a row that sees no key (a padded query) sees its first one."""
    batch = live.shape[0]
    columns = torch.cat([run.columns.expand(batch, *queries.shape[1:2], -1) for run in runs], dim=-1)
    return KernelCall(name, projections, queries, live, columns, bias=_aligned_bias(call, runs, live))


def block_layout(call: AttentionCall, block: int = XFORMERS_QUERY_BLOCK) -> tuple[int, int, int, int]:
    """``(rows, groups, left, span)`` for the window part: query blocks of ``rows``, keys ``[g*rows - left, +span)``.

    A window that reaches (almost) the whole sequence becomes one block over every key.
    """
    n = call.length
    left, right = window_reach(call)
    rows = min(block, n)
    span = rows + left + right
    if call.pattern.window is None or span >= n:
        return n, 1, 0, n
    return rows, -(-n // rows), left, span


def has_extra_keys(call: AttentionCall) -> bool:
    """Whether the token queries see keys beyond their window: selected global tokens or aggregated tokens."""
    pattern = call.pattern
    selected = call.global_mask is not None and pattern.selected_globals is not None
    return selected or (pattern.aggregated_globals is not None and call.count > 0)


def _real(call: AttentionCall) -> torch.Tensor:
    """The ``(batch, length)`` real tokens (every token without an attention mask)."""
    if call.attention_mask is None:
        return torch.ones(call.batch, call.length, dtype=torch.bool, device=call.device)
    return call.attention_mask


def _global_slots(call: AttentionCall, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(global_mask, positions, valid)``: the real selected global tokens and their slots (``None``: no slot).

    Without a ``global_mask`` the pattern is its window, whatever ``max_globals`` says.
    """
    if call.global_mask is None or call.pattern.selected_globals is None:
        return torch.zeros_like(real), None, None
    global_mask = call.global_mask & real
    positions, valid = call.pattern.selected_globals.slots(global_mask, call.global_slots(global_mask.sum(dim=-1)))
    if positions.shape[1] == 0:
        return global_mask, None, None
    return global_mask, positions, valid


def _extra_keys(
    call: AttentionCall, real: torch.Tensor, positions: torch.Tensor | None, valid: torch.Tensor | None
) -> list[tuple[str, Callable[[torch.Tensor], _Keys]]]:
    """The keys beyond the window, by name, each a function of the query positions ``(1 or batch, groups, rows)``."""
    extras: list[tuple[str, Callable[[torch.Tensor], _Keys]]] = []
    if positions is not None:
        extras.append(("selected-keys", lambda q: _selected_keys(call, real, q, positions, valid)))
    if call.pattern.aggregated_globals is not None and call.count:
        extras.append(("aggregated", lambda q: _aggregated_keys(call, real, q)))
    return extras


def _structural_window(call: AttentionCall, live: torch.Tensor) -> KernelCall:
    """The window as one :class:`LocalMask` over the whole sequence: no bias tensor at all."""
    left, right = call.pattern.window.span(call.length)
    queries = torch.arange(call.length, device=call.device)[None, None]
    return KernelCall("window", "tokens", queries, live, queries, mask=LocalMask(left, right))


def _blocked_tokens(
    call: AttentionCall,
    real: torch.Tensor,
    global_mask: torch.Tensor,
    extras: list[tuple[str, Callable[[torch.Tensor], _Keys]]],
    block: int,
) -> KernelCall:
    """Query blocks against their window's keys followed by the extra keys, one tensor bias over them all."""
    n, device = call.length, call.device
    rows, groups, left, span = block_layout(call, block)
    starts = torch.arange(groups, device=device)[:, None] * rows
    raw = starts + torch.arange(rows, device=device)
    queries = raw.clamp(max=n - 1)[None]
    keys = (starts - left + torch.arange(span, device=device))[None]
    window = call.pattern.window
    sees = window.contains if window is not None else (lambda rel: torch.ones_like(rel, dtype=torch.bool))
    real_queries = (raw < n)[None] & _take(real, queries)
    live = real_queries & ~_take(global_mask, queries)
    runs = [_token_keys(call, real, raw[None], keys, sees).restricted(real_queries[..., None])]
    runs.extend(make(queries).restricted(live[..., None]) for _, make in extras)
    return _kernel_call(call, "window+extras" if extras else "window", "tokens", queries, live, runs)


def build_plan(call: AttentionCall, *, structural: bool, block: int = XFORMERS_QUERY_BLOCK) -> Plan:
    """The calls xformers runs for ``call``.

    ``structural``: the window is a :class:`LocalMask` over the whole sequence instead of a tensor bias; only for a
    call without bias, padding or extra keys (:func:`has_extra_keys`). Otherwise each query block's keys are its
    window followed by the extra keys, one call with a tensor bias (partial attention has no operator for it).
    """
    real = _real(call)
    global_mask, positions, valid = _global_slots(call, real)
    extras = _extra_keys(call, real, positions, valid)
    if not structural:
        tokens = _blocked_tokens(call, real, global_mask, extras, block)
    elif extras or call.pattern.window is None or call.pattern.bias is not None:
        raise ValueError("structural=True needs a window without bias or extra keys (global or aggregated tokens)")
    else:
        tokens = _structural_window(call, (real & ~global_mask)[:, None])
    global_rows = row_slots = None
    if positions is not None:
        global_rows, row_slots = _global_rows_call(call, real, global_mask, positions, valid)
    return Plan(tokens, global_rows, row_slots, global_mask, real)


def _global_rows_call(
    call: AttentionCall, real: torch.Tensor, global_mask: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor
) -> tuple[KernelCall, torch.Tensor]:
    """The selected global queries over every real token (and the aggregated keys): one row per global token."""
    queries = positions[:, None, :]
    every = torch.arange(call.length, device=real.device)[None, None]
    runs = [_token_keys(call, real, queries, every, lambda rel: torch.ones_like(rel, dtype=torch.bool))]
    if call.pattern.aggregated_globals is not None and call.count:
        runs.append(_aggregated_keys(call, real, queries))
    live = valid[:, None, :]
    runs = [run.restricted(live[..., None]) for run in runs]
    projections = "global" if call.has_global_projections else "tokens"
    slots = (torch.cumsum(global_mask.long(), dim=-1) - 1).clamp(min=0)
    return _kernel_call(call, "global-rows", projections, queries, live, runs), slots


def kernel_shapes(call: AttentionCall, *, structural: bool, block: int = XFORMERS_QUERY_BLOCK) -> list[KernelShape]:
    """The :class:`KernelShape` of each call :func:`build_plan` would make, without reading any tensor.

    Selected global keys are left out of the key counts (counting them reads the device); no operator's verdict on a
    tensor bias depends on the number of keys.
    """
    n, count = call.length, call.count
    trainable = torch.is_grad_enabled() and any(
        weight is not None and weight.requires_grad for weight in (call.bias_weight, call.aggregated_bias_weight)
    )
    if structural:
        shapes = [KernelShape("window", call.batch, n, n, LocalMask(*call.pattern.window.span(n)), False)]
    else:
        rows, groups, _, span = block_layout(call, block)
        name = "window+extras" if has_extra_keys(call) else "window"
        shapes = [KernelShape(name, call.batch * groups, rows, span + count, None, trainable)]
    if call.global_mask is not None and call.pattern.selected_globals is not None:
        slots = max(1, min(call.max_globals or 1, n))
        shapes.append(KernelShape("global-rows", call.batch, slots, n + count, None, trainable))
    return shapes


def densify(plan: Plan, count: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The plan spelled out densely: ``(batch, heads, length, length + count)`` bias and how many calls cover each pair.

    A pair is seen where the bias is finite; the count shows a key counted twice. Only live rows are written: every
    real query's pattern is the union of what its calls give it (global rows from the global-rows call).
    """
    batch, length = plan.real.shape
    heads = max(kernel.dense_bias().shape[1] for kernel in plan.calls)
    total = torch.zeros(batch, heads, length, length + count)
    covered = torch.zeros(batch, heads, length, length + count, dtype=torch.long)
    for kernel in plan.calls:
        values = kernel.dense_bias().float().expand(batch * kernel.groups, heads, kernel.rows, kernel.keys)
        values = values.reshape(batch, kernel.groups, heads, kernel.rows, kernel.keys).permute(0, 2, 1, 3, 4)
        seen = torch.isfinite(values) & kernel.live[:, None, :, :, None]
        b, h, g, r, s = seen.nonzero(as_tuple=True)
        queries = kernel.query_positions.expand(batch, -1, -1)[b, g, r]
        keys = kernel.key_columns.expand(batch, -1, -1)[b, g, s]
        total.index_put_((b, h, queries, keys), values[b, h, g, r, s], accumulate=True)
        covered.index_put_((b, h, queries, keys), torch.ones_like(b), accumulate=True)
    return total.masked_fill(covered == 0, float("-inf")), covered
