"""Mask parts: an open vocabulary of (query, key) predicates, each with its block coverage, composed by and/or.

A mask part is a small frozen value that says which token pairs may attend: its dense ground truth is
:meth:`MaskPart.allowed` on broadcast position tensors, and :meth:`MaskPart.coverage` says, for ranges of queries
and keys at once, whether every pair is allowed (``FULL``), none is (``EMPTY``) or some are (``PARTIAL``). Engines
build a block-sparse layout from the coverage without an n² tensor, and evaluate the predicate on partial blocks
only. Parts are data: :func:`part_to_dict` / :func:`part_from_dict` round-trip them by their registered ``kind``.
Which kinds exist is the registry's answer: the core plugin registers the kinds declared here with
:func:`register_part`, plugins add theirs through the ``attnreg_add_parts`` hook, and this module (below the registry)
reads the registry's table through the :class:`PartKinds` source the registry installs with :func:`use_part_kinds`.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, ClassVar, Protocol

import torch

from attnreg._validation import PatternError, only_keys, require, require_int

#: Block coverage values (int8): no pair allowed, some allowed, every pair allowed.
EMPTY, PARTIAL, FULL = 0, 1, 2


class MaskPart:
    """Base of mask parts; subclasses are frozen dataclasses with a registered ``kind``.

    ``allowed(i, j, length)`` takes int64 query and key positions that broadcast together (in a sequence of
    ``length`` tokens) and returns a bool tensor of their shape. ``coverage(q_first, q_last, k_first, k_last,
    length)`` takes the inclusive bounds of query and key ranges (int64 tensors that broadcast) and returns int8
    :data:`EMPTY` / :data:`PARTIAL` / :data:`FULL` per pair of ranges; the default, ``PARTIAL`` everywhere, is
    always correct but lets no engine skip a block.
    """

    kind: ClassVar[str] = ""

    @property
    def causal(self) -> bool:
        """True when the part never allows a key after its query (``j > i``); False when unsure."""
        return False

    def sizes(self) -> set[int]:
        """The lengths at which the part's structure changes (reaches, block sizes): where tests probe engines."""
        return set()

    def allowed(self, i: torch.Tensor, j: torch.Tensor, length: int) -> torch.Tensor:
        raise NotImplementedError

    def coverage(
        self, q_first: torch.Tensor, q_last: torch.Tensor, k_first: torch.Tensor, k_last: torch.Tensor, length: int
    ) -> torch.Tensor:
        shape = torch.broadcast_shapes(q_first.shape, q_last.shape, k_first.shape, k_last.shape)
        return torch.full(shape, PARTIAL, dtype=torch.int8, device=q_first.device)

    def __and__(self, other: MaskPart) -> MaskPart:
        return AllOf((self, other))

    def __or__(self, other: MaskPart) -> MaskPart:
        return AnyOf((self, other))


class ScoreTerm:
    """Base of score parts: a frozen dataclass with a registered ``kind`` whose ``term(i, j, num_heads)`` is added to
    the scaled scores, ``(num_heads, *broadcast(i, j))`` in fp32, for token keys (engines pass the arguments by
    position)."""

    kind: ClassVar[str] = ""

    def term(self, i: torch.Tensor, j: torch.Tensor, num_heads: int) -> torch.Tensor:
        raise NotImplementedError


#: attnreg's own part types, in declaration order: what the core plugin registers through ``attnreg_add_parts``.
CORE_PART_TYPES: list[type] = []


class PartKinds(Protocol):
    """Where the part kinds come from: the registry (core and plugins), which installs itself with
    :func:`use_part_kinds`; this module sits below the registry and never imports it."""

    def part_types(self) -> dict[str, type]:
        """Every usable kind (claimed by exactly one plugin) and its type."""
        ...

    def part_kind_error(self, kind: str) -> Exception | None:
        """Why ``kind`` cannot be used although claimed (two plugins claim it), or None."""
        ...


class _CoreKinds:
    """The source before a registry is installed: the core's kinds only."""

    def part_types(self) -> dict[str, type]:
        return {part_type.kind: part_type for part_type in CORE_PART_TYPES}

    def part_kind_error(self, kind: str) -> Exception | None:
        return None


_part_kinds: Callable[[], PartKinds] = _CoreKinds


def use_part_kinds(source: Callable[[], PartKinds]) -> None:
    """Make :func:`part_kinds` and :func:`part_from_dict` ask ``source()`` (called at each look-up, so it may load
    lazily): ``attnreg.registry`` installs the process-wide registry."""
    global _part_kinds
    _part_kinds = source


def check_part_type(part_type: object) -> type:
    """``part_type`` if it can be registered: a frozen dataclass subclassing :class:`MaskPart` or
    :class:`ScoreTerm` with a non-empty string ``kind``; otherwise an error naming what is wrong."""
    require(
        isinstance(part_type, type) and issubclass(part_type, (MaskPart, ScoreTerm)),
        "part_type",
        part_type,
        "expected a subclass of attnreg.MaskPart or attnreg.ScoreTerm",
    )
    name = part_type.__name__
    require(
        is_dataclass(part_type) and part_type.__dataclass_params__.frozen,
        "part_type",
        name,
        "expected a frozen dataclass (@dataclasses.dataclass(frozen=True)): parts are hashable values",
    )
    kind = part_type.kind
    require(isinstance(kind, str) and kind.strip() == kind and kind, f"{name}.kind", kind, "expected a non-empty name")
    return part_type


def register_part(part_type: type) -> type:
    """Declare one of attnreg's own part types (a class decorator); the core plugin registers them with the registry.

    Plugins add kinds through the ``attnreg_add_parts`` hook instead, so that the registry knows whose they are. A
    kind another core type declares is an error naming both.
    """
    check_part_type(part_type)
    for owner in CORE_PART_TYPES:
        if owner.kind == part_type.kind and owner is not part_type:
            raise PatternError(
                f"mask part kind {part_type.kind!r} is claimed twice: by {owner.__module__}.{owner.__qualname__} and "
                f"by {part_type.__module__}.{part_type.__qualname__}"
            )
    if part_type not in CORE_PART_TYPES:
        CORE_PART_TYPES.append(part_type)
    return part_type


def part_kinds() -> dict[str, type]:
    """Every registered part type (mask parts and score terms) by kind: the core's and the plugins'."""
    return _part_kinds().part_types()


def part_to_dict(part: MaskPart | ScoreTerm) -> dict[str, Any]:
    """``part`` as plain data: ``{"kind": ..., **parameters}``, composites holding their parts' dicts."""
    data: dict[str, Any] = {"kind": part.kind}
    for f in fields(part):
        value = getattr(part, f.name)
        data[f.name] = [part_to_dict(p) for p in value] if f.name == "parts" else value
    return data


def part_from_dict(data: dict[str, Any], family: type = MaskPart) -> Any:
    """Rebuild a part of ``family`` (:class:`MaskPart` or :class:`ScoreTerm`) from :func:`part_to_dict`'s output;
    unknown kinds and parameters are errors."""
    require(isinstance(data, dict) and "kind" in data, "part", data, "expected a dict with a 'kind'")
    kind = data["kind"]
    source = _part_kinds()
    types = source.part_types()
    known = sorted(k for k, t in types.items() if issubclass(t, family))
    if kind not in known:
        error = source.part_kind_error(kind) if isinstance(kind, str) else None
        if error is not None:
            raise error
        raise PatternError(f"part kind={kind!r} is not allowed: known {family.__name__} kinds are {', '.join(known)}")
    part_type = types[kind]
    params = {key: value for key, value in data.items() if key != "kind"}
    only_keys(f"mask part {kind!r}", params, [f.name for f in fields(part_type)])
    if "parts" in params:
        params["parts"] = tuple(part_from_dict(p) for p in params["parts"])
    return part_type(**params)


def _optional_bound(name: str, value: int | None) -> None:
    if value is not None:
        require_int(name, value, minimum=0)


@register_part
@dataclass(frozen=True)
class Band(MaskPart):
    """``i - left <= j <= i + right`` (the window convention everywhere); ``None`` leaves a side unbounded."""

    kind: ClassVar[str] = "band"
    left: int | None = None
    right: int | None = None

    def __post_init__(self) -> None:
        _optional_bound("Band.left", self.left)
        _optional_bound("Band.right", self.right)

    @property
    def causal(self) -> bool:
        return self.right == 0

    def sizes(self) -> set[int]:
        sides = [side for side in (self.left, self.right) if side is not None]
        found = {side + 1 for side in sides}
        if len(sides) == 2:
            found.add(self.left + self.right + 1)
        return found

    def allowed(self, i: torch.Tensor, j: torch.Tensor, length: int) -> torch.Tensor:
        rel = j - i
        inside = torch.ones_like(rel, dtype=torch.bool)
        if self.left is not None:
            inside = inside & (rel >= -self.left)
        if self.right is not None:
            inside = inside & (rel <= self.right)
        return inside

    def coverage(self, q_first, q_last, k_first, k_last, length):
        low, high = k_first - q_last, k_last - q_first  # the relative positions the ranges span
        full = torch.ones_like(low, dtype=torch.bool)
        empty = torch.zeros_like(low, dtype=torch.bool)
        if self.left is not None:
            full, empty = full & (low >= -self.left), empty | (high < -self.left)
        if self.right is not None:
            full, empty = full & (high <= self.right), empty | (low > self.right)
        return _tri(full, empty)


@dataclass(frozen=True)
class _Range(MaskPart):
    """Positions ``start <= x < stop`` (``stop=None``: to the end) on one axis: keys or queries."""

    start: int = 0
    stop: int | None = None
    #: 0: the range is on queries (``i``); 1: on keys (``j``).
    axis: ClassVar[int] = 1

    def __post_init__(self) -> None:
        require_int(f"{type(self).__name__}.start", self.start, minimum=0)
        _optional_bound(f"{type(self).__name__}.stop", self.stop)

    def sizes(self) -> set[int]:
        return {self.start, *([] if self.stop is None else [self.stop])}

    def allowed(self, i, j, length: int):
        inside, other = (i, j) if self.axis == 0 else (j, i)
        return _in_range(inside, self.start, self.stop) & torch.ones_like(other, dtype=torch.bool)

    def coverage(self, q_first, q_last, k_first, k_last, length):
        first, last, other = (q_first, q_last, k_first) if self.axis == 0 else (k_first, k_last, q_first)
        return _range_coverage(first, last, self.start, self.stop) + torch.zeros_like(other, dtype=torch.int8)


@register_part
@dataclass(frozen=True)
class KeyRange(_Range):
    """Keys ``start <= j < stop`` (``stop=None``: to the end): sink tokens, a prefix every query sees."""

    kind: ClassVar[str] = "key-range"
    axis: ClassVar[int] = 1


@register_part
@dataclass(frozen=True)
class QueryRange(_Range):
    """Queries ``start <= i < stop`` see every key (``stop=None``: to the end): global query rows at fixed places."""

    kind: ClassVar[str] = "query-range"
    axis: ClassVar[int] = 0


@register_part
@dataclass(frozen=True)
class Dilation(MaskPart):
    """``(i - j) mod dilation == 0``: every ``dilation``-th key, counted from the query."""

    kind: ClassVar[str] = "dilation"
    dilation: int = 1

    def __post_init__(self) -> None:
        require_int("Dilation.dilation", self.dilation, minimum=1)

    def sizes(self) -> set[int]:
        return {self.dilation}

    def allowed(self, i, j, length: int):
        return torch.remainder(i - j, self.dilation) == 0

    def coverage(self, q_first, q_last, k_first, k_last, length):
        single = (q_first == q_last) & (k_first == k_last)
        if self.dilation == 1:
            return torch.full_like(single, FULL, dtype=torch.int8)
        hit = torch.remainder(q_first - k_first, self.dilation) == 0
        return torch.where(single, torch.where(hit, FULL, EMPTY), PARTIAL).to(torch.int8)


@register_part
@dataclass(frozen=True)
class BlockBand(MaskPart):
    """Blocks of ``block`` tokens: ``|i // block - j // block| <= width`` (BigBird's sliding blocks)."""

    kind: ClassVar[str] = "block-band"
    block: int = 64
    width: int = 1

    def __post_init__(self) -> None:
        require_int("BlockBand.block", self.block, minimum=1)
        require_int("BlockBand.width", self.width, minimum=0)

    def sizes(self) -> set[int]:
        return {self.block, self.block * (2 * self.width + 1)}

    def allowed(self, i, j, length: int):
        return (_floor(i, self.block) - _floor(j, self.block)).abs() <= self.width

    def coverage(self, q_first, q_last, k_first, k_last, length):
        qa, qb = q_first // self.block, q_last // self.block
        ka, kb = k_first // self.block, k_last // self.block
        return Band(self.width, self.width).coverage(qa, qb, ka, kb, length)


@register_part
@dataclass(frozen=True)
class RandomBlocks(MaskPart):
    """Blocks of ``block`` tokens: query block ``qb`` sees ``count`` key blocks drawn for it from ``seed``.

    Key block ``b`` of query block ``qb`` is drawn iff it is among the first ``count`` entries of the permutation of
    the key blocks that ``torch.randperm(blocks, generator=torch.Generator().manual_seed(seed + qb))`` gives on the
    CPU, where ``blocks = ceil(length / block)``: the same on every device, fixed for a length.
    """

    kind: ClassVar[str] = "random-blocks"
    block: int = 64
    count: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        require_int("RandomBlocks.block", self.block, minimum=1)
        require_int("RandomBlocks.count", self.count, minimum=0)
        require_int("RandomBlocks.seed", self.seed, minimum=0)

    def sizes(self) -> set[int]:
        return {self.block}

    def table(self, length: int) -> torch.Tensor:
        """``(blocks, blocks)`` bool on the CPU: which key blocks each query block drew at ``length``."""
        blocks = -(-length // self.block)
        chosen = torch.zeros(blocks, blocks, dtype=torch.bool)
        for query_block in range(blocks):
            drawn = torch.randperm(blocks, generator=torch.Generator().manual_seed(self.seed + query_block))
            chosen[query_block, drawn[: self.count]] = True
        return chosen

    def allowed(self, i, j, length: int):
        table = self.table(length).to(i.device)
        blocks = table.shape[0]
        qb, kb = _floor(i, self.block).clamp(0, blocks - 1), _floor(j, self.block).clamp(0, blocks - 1)
        return table[qb, kb]

    def coverage(self, q_first, q_last, k_first, k_last, length):
        table = self.table(length).to(q_first.device).to(torch.int32)
        blocks = table.shape[0]
        # prefix sums over the block table: how many drawn pairs a rectangle of blocks holds
        sums = torch.zeros(blocks + 1, blocks + 1, dtype=torch.int32, device=q_first.device)
        sums[1:, 1:] = table.cumsum(0).cumsum(1)
        qa, qb = (q_first // self.block).clamp(0, blocks - 1), (q_last // self.block).clamp(0, blocks - 1)
        ka, kb = (k_first // self.block).clamp(0, blocks - 1), (k_last // self.block).clamp(0, blocks - 1)
        drawn = sums[qb + 1, kb + 1] - sums[qa, kb + 1] - sums[qb + 1, ka] + sums[qa, ka]
        area = (qb - qa + 1) * (kb - ka + 1)
        return torch.where(drawn == 0, EMPTY, torch.where(drawn == area, FULL, PARTIAL)).to(torch.int8)


@dataclass(frozen=True)
class _Composite(MaskPart):
    """Parts combined pair by pair: ``combine`` for their predicates, ``strongest`` for their coverages (the
    coverage of one combined range), ``causal_when`` over their causality."""

    parts: tuple[MaskPart, ...] = ()
    combine: ClassVar[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
    strongest: ClassVar[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
    causal_when: ClassVar[Callable[[Iterable[bool]], bool]]

    def __post_init__(self) -> None:
        _check_parts(f"{type(self).__name__}.parts", self.parts)

    @property
    def causal(self) -> bool:
        return type(self).causal_when(part.causal for part in self.parts)

    def sizes(self) -> set[int]:
        return set().union(*(part.sizes() for part in self.parts))

    def allowed(self, i, j, length: int):
        return functools.reduce(type(self).combine, (part.allowed(i, j, length) for part in self.parts))

    def coverage(self, q_first, q_last, k_first, k_last, length):
        found = (part.coverage(q_first, q_last, k_first, k_last, length) for part in self.parts)
        return functools.reduce(type(self).strongest, found)


@register_part
@dataclass(frozen=True)
class AnyOf(_Composite):
    """The union: a pair is allowed when any part allows it (causal when every part is)."""

    kind: ClassVar[str] = "any"
    combine = staticmethod(operator.or_)
    strongest = staticmethod(torch.maximum)
    causal_when = staticmethod(all)


@register_part
@dataclass(frozen=True)
class AllOf(_Composite):
    """The intersection: a pair is allowed when every part allows it (causal when any part is)."""

    kind: ClassVar[str] = "all"
    combine = staticmethod(operator.and_)
    strongest = staticmethod(torch.minimum)
    causal_when = staticmethod(any)


def coverage_table(part: MaskPart, length: int, block: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(blocks, blocks)`` int8 coverage of ``part`` over query and key blocks of ``block`` tokens at ``length``
    (the last block cut at the sequence's end): what a block-sparse engine visits, from O((n / block)²) numbers."""
    starts = torch.arange(0, length, block, device=device)
    lasts = (starts + block - 1).clamp(max=length - 1)
    return part.coverage(starts[:, None], lasts[:, None], starts[None, :], lasts[None, :], length)


def count_allowed(part: MaskPart, length: int, block: int = 128) -> int:
    """How many token pairs ``part`` allows at ``length``: whole blocks by their coverage, the predicate evaluated
    on partial blocks only (linear in length for a banded part)."""
    table = coverage_table(part, length, block)
    sizes = torch.full((table.shape[0],), block, dtype=torch.long)
    sizes[-1] = length - block * (table.shape[0] - 1)
    total = int((sizes[:, None] * sizes[None, :] * (table == FULL)).sum())
    for qb, kb in (table == PARTIAL).nonzero().tolist():
        i = torch.arange(qb * block, qb * block + int(sizes[qb]))[:, None]
        j = torch.arange(kb * block, kb * block + int(sizes[kb]))[None, :]
        total += int(part.allowed(i, j, length).sum())
    return total


def _check_parts(name: str, parts: Any) -> None:
    require(
        isinstance(parts, tuple) and len(parts) >= 1 and all(isinstance(p, MaskPart) for p in parts),
        name,
        parts,
        "expected a non-empty tuple of mask parts",
    )


def _floor(x: torch.Tensor, block: int) -> torch.Tensor:
    return torch.div(x, block, rounding_mode="floor")


def _in_range(x: torch.Tensor, start: int, stop: int | None) -> torch.Tensor:
    inside = x >= start
    return inside if stop is None else inside & (x < stop)


def _range_coverage(first: torch.Tensor, last: torch.Tensor, start: int, stop: int | None) -> torch.Tensor:
    """Coverage of positions ``first..last`` by ``start <= x < stop``."""
    end = torch.iinfo(torch.int64).max if stop is None else stop - 1
    full = (first >= start) & (last <= end)
    empty = (last < start) | (first > end)
    return _tri(full, empty)


def _tri(full: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    return torch.where(full, FULL, torch.where(empty, EMPTY, PARTIAL)).to(torch.int8)
