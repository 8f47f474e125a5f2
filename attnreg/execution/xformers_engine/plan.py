"""What the xformers engine passes to xformers, built in plain torch: query/key layouts, tensor biases, mask parameters.

Why apart from the xformers calls: everything here runs on any device, so the tests check on CPU that the biases and
masks handed to the kernels, spelled out densely by :func:`densify`, equal the reference's ``pattern.materialize``.

Layout: a part runs ``groups`` query blocks of ``rows`` queries per example; query ``(g, r)`` is position
``query_positions[g, r]`` and its keys are the columns ``key_columns[g]`` of the keys "tokens then aggregated
tokens" (columns ``0..n-1`` are tokens, ``n + g`` aggregated token ``g``). A tensor bias is ``-inf`` outside the
pattern; its storage is padded to 8 elements in the last dimension (xformers' alignment rule) and sliced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnreg.execution.blocked.window import window_reach
from attnreg.execution.call import AttentionCall

#: xformers reads tensor biases whose strides are multiples of 16 bytes: pad the last dimension to 8 elements.
BIAS_ALIGNMENT = 8
DEFAULT_BLOCK = 128


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
class Part:
    """One call into xformers: its queries, its keys, and its bias (a tensor) or structural mask.

    - ``projections``: ``"tokens"`` (q/k/v) or ``"global"`` (the global rows' own projections, if the call has them);
    - ``query_positions``: ``(1 or batch, groups, rows)`` int64 positions, clamped into the sequence;
    - ``live``: ``(batch, groups, rows)`` bool, the queries whose result this part gives (others are discarded);
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
        """The bias ``(batch * groups, heads or 1, rows, keys)`` this part applies, the mask spelled out if need be."""
        if self.mask is None:
            return self.bias
        return self.mask.materialize(self.rows, self.keys, self.key_columns.device)[None, None]


@dataclass(frozen=True)
class Plan:
    """The parts of one call: ``merged`` parts share the queries and are combined by log-sum-exp (one: no merge).

    ``global_rows`` (if any) recomputes the selected global queries over every key; ``row_slots`` ``(batch, length)``
    gives each such query's row in it. ``real`` is the ``(batch, length)`` key padding; padded queries give zeros.
    """

    merged: tuple[Part, ...]
    global_rows: Part | None
    row_slots: torch.Tensor | None
    global_mask: torch.Tensor
    real: torch.Tensor


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


def _aligned_bias(call: AttentionCall, runs: list[_Keys], live_rows: torch.Tensor, fill_empty: bool) -> torch.Tensor:
    """The runs' bias and mask as one ``(batch * groups, heads, rows, keys)`` tensor in 8-element-aligned storage.

    With ``fill_empty`` a row that sees no key (a padded query) sees its first key, so the kernel stays finite;
    ``live_rows`` rows are real queries, which always see something.
    """
    batch, groups, rows = live_rows.shape
    allowed = torch.cat([run.allowed.expand(batch, groups, rows, -1) for run in runs], dim=-1)
    if fill_empty:
        empty = ~allowed.any(dim=-1, keepdim=True)
        first = torch.zeros_like(allowed)
        first[..., 0] = True
        allowed = allowed | (empty & first)
    keys = allowed.shape[-1]
    if all(run.bias is None for run in runs):
        values = torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, float("-inf"))[:, :, None]
        heads = 1
    else:
        heads = call.heads
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
    return bias.expand(-1, call.heads, -1, -1)


def _part(
    call: AttentionCall,
    name: str,
    projections: str,
    queries: torch.Tensor,
    live: torch.Tensor,
    runs: list[_Keys],
    fill_empty: bool,
) -> Part:
    batch = live.shape[0]
    columns = torch.cat([run.columns.expand(batch, *queries.shape[1:2], -1) for run in runs], dim=-1)
    bias = _aligned_bias(call, runs, live, fill_empty)
    return Part(name, projections, queries, live, columns, bias=bias)


def block_layout(call: AttentionCall, block: int = DEFAULT_BLOCK) -> tuple[int, int, int, int]:
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


def build_plan(
    call: AttentionCall,
    *,
    merge: bool,
    structural: bool,
    block: int = DEFAULT_BLOCK,
) -> Plan:
    """The parts xformers runs for ``call``.

    ``merge``: extra keys (selected global tokens, aggregated tokens) become their own parts, combined by
    log-sum-exp (forward only); otherwise they are appended to each query block's keys (one call, trainable bias).
    ``structural``: the window part uses a :class:`LocalMask` over the whole sequence instead of a tensor bias;
    only valid without bias and padding, and with ``merge`` when there are extra keys.
    """
    pattern = call.pattern
    device = call.device
    n = call.length
    real = (
        torch.ones(call.batch, n, dtype=torch.bool, device=device)
        if call.attention_mask is None
        else call.attention_mask
    )
    has_globals = call.global_mask is not None and pattern.selected_globals is not None
    global_mask = (call.global_mask if has_globals else torch.zeros_like(real)) & real
    positions = valid = None
    if has_globals:  # as strategy() sees it: without a global_mask the pattern is its window, whatever max_globals
        positions, valid = pattern.selected_globals.slots(global_mask, call.global_slots(global_mask.sum(dim=-1)))
        if positions.shape[1] == 0:
            positions = valid = None

    extras_queries: list[tuple[str, Callable[[torch.Tensor], _Keys]]] = []
    if positions is not None:
        extras_queries.append(("selected-keys", lambda q: _selected_keys(call, real, q, positions, valid)))
    if pattern.aggregated_globals is not None and call.count:
        extras_queries.append(("aggregated", lambda q: _aggregated_keys(call, real, q)))

    real_rows = (real & ~global_mask)[:, None]  # the queries of the token layout that the parts answer
    if structural:
        left, right = pattern.window.span(n)
        queries = torch.arange(n, device=device)[None, None]
        live = real_rows
        window_part = Part("window", "tokens", queries, live, queries, mask=LocalMask(left, right))
        runs_for_window: list[_Keys] = []
    else:
        rows, groups, left, span = block_layout(call, block)
        starts = torch.arange(groups, device=device)[:, None] * rows
        raw = starts + torch.arange(rows, device=device)
        queries = raw.clamp(max=n - 1)[None]
        keys = (starts - left + torch.arange(span, device=device))[None]
        sees = pattern.window.contains if pattern.window is not None else (lambda rel: torch.ones_like(rel, dtype=bool))
        real_queries = (raw < n)[None] & _take(real, queries)
        live = real_queries & ~_take(global_mask, queries)
        runs_for_window = [_token_keys(call, real, raw[None], keys, sees).restricted(real_queries[..., None])]
        window_part = None

    merged: list[Part] = []
    if merge or not extras_queries:
        if window_part is None:
            window_part = _part(call, "window", "tokens", queries, live, runs_for_window, fill_empty=True)
        merged.append(window_part)
        everyone = torch.arange(n, device=device)[None, None]
        for name, make in extras_queries:
            run = make(everyone).restricted(real_rows[..., None])
            merged.append(_part(call, name, "tokens", everyone, real_rows, [run], fill_empty=False))
    else:
        runs = list(runs_for_window)
        for _, make in extras_queries:
            runs.append(make(queries).restricted(live[..., None]))
        merged.append(_part(call, "window+extras", "tokens", queries, live, runs, fill_empty=True))

    global_rows = row_slots = None
    if positions is not None:
        global_rows, row_slots = _global_rows_part(call, real, global_mask, positions, valid)
    return Plan(tuple(merged), global_rows, row_slots, global_mask, real)


def _global_rows_part(
    call: AttentionCall, real: torch.Tensor, global_mask: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor
) -> tuple[Part, torch.Tensor]:
    """The selected global queries over every real token (and the aggregated keys): one row per global token."""
    queries = positions[:, None, :]
    every = torch.arange(call.length, device=real.device)[None, None]
    runs = [_token_keys(call, real, queries, every, lambda rel: torch.ones_like(rel, dtype=torch.bool))]
    if call.pattern.aggregated_globals is not None and call.count:
        runs.append(_aggregated_keys(call, real, queries))
    live = valid[:, None, :]
    runs = [run.restricted(live[..., None]) for run in runs]
    projections = "global" if call.has_global_projections else "tokens"
    part = _part(call, "global-rows", projections, queries, live, runs, fill_empty=True)
    slots = (torch.cumsum(global_mask.long(), dim=-1) - 1).clamp(min=0)
    return part, slots


def densify(plan: Plan, count: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The plan spelled out densely: ``(batch, heads, length, length + count)`` bias and how many parts cover each pair.

    A pair is seen where the bias is finite; the count shows a key counted twice. Only live rows are written: every
    real query's pattern is the union of what its parts give it (global rows from the global-rows part).
    """
    batch, length = plan.real.shape
    parts = list(plan.merged) + ([plan.global_rows] if plan.global_rows is not None else [])
    heads = max(part.dense_bias().shape[1] for part in parts)
    total = torch.zeros(batch, heads, length, length + count)
    covered = torch.zeros(batch, heads, length, length + count, dtype=torch.long)
    for part in parts:
        values = part.dense_bias().float().expand(batch * part.groups, heads, part.rows, part.keys)
        values = values.reshape(batch, part.groups, heads, part.rows, part.keys).permute(0, 2, 1, 3, 4)
        seen = torch.isfinite(values) & part.live[:, None, :, :, None]
        b, h, g, r, s = seen.nonzero(as_tuple=True)
        queries = part.query_positions.expand(batch, -1, -1)[b, g, r]
        keys = part.key_columns.expand(batch, -1, -1)[b, g, s]
        total.index_put_((b, h, queries, keys), values[b, h, g, r, s], accumulate=True)
        covered.index_put_((b, h, queries, keys), torch.ones_like(b), accumulate=True)
    return total.masked_fill(covered == 0, float("-inf")), covered
