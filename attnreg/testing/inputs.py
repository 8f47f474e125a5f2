"""Inputs for any pattern, built from its parts: q/k/v, masks, global projections, aggregated keys, bias tables.

Why generic: the suite must run a third party's pattern without knowing it, so everything a call needs is read
off the pattern (``selected_globals`` -> a global mask and maybe global projections, ``aggregated_globals`` ->
aggregated keys/values, ``bias`` -> a table, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from attnreg._deprecation import renamed_keywords
from attnreg.execution.call import as_keywords, part_tensor_shapes
from attnreg.pattern.spec import Pattern

#: Inputs indexed by token position along dim 2 (the rest are tables or aggregated keys).
TOKEN_TENSORS = ("q", "k", "v", "global_q", "global_k", "global_v")


@dataclass
class Inputs:
    """One call's inputs: floating tensors by name plus the two masks; ``kwargs()`` gives ``attnreg.attention``'s."""

    pattern: Pattern
    tensors: dict[str, torch.Tensor]
    attention_mask: torch.Tensor
    global_mask: torch.Tensor | None
    #: What ``make_inputs`` was asked for, so equal requests share one reference run; ``None`` once modified.
    key: tuple | None = None

    @property
    def batch(self) -> int:
        return self.tensors["q"].shape[0]

    @property
    def length(self) -> int:
        return self.tensors["q"].shape[2]

    @property
    def dtype(self) -> torch.dtype:
        return self.tensors["q"].dtype

    def args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Pattern]:
        """The positional arguments ``(q, k, v, pattern)``."""
        return self.tensors["q"], self.tensors["k"], self.tensors["v"], self.pattern

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``attnreg.attention`` (and ``make_call``)."""
        return {"attention_mask": self.attention_mask, "global_mask": self.global_mask, **as_keywords(self.tensors)}

    def to(self, dtype: torch.dtype, *, requires_grad: bool = False) -> Inputs:
        """Fresh leaf copies in ``dtype`` (optionally requiring grad); masks shared."""
        tensors = {name: t.detach().to(dtype).clone().requires_grad_(requires_grad) for name, t in self.tensors.items()}
        return replace(self, tensors=tensors, key=None)

    def select(self, index: int) -> Inputs:
        """Example ``index`` alone, as a batch of one (tables are shared by every example)."""
        tensors = {
            name: (t if name.endswith("bias_weight") else t[index : index + 1]) for name, t in self.tensors.items()
        }
        global_mask = None if self.global_mask is None else self.global_mask[index : index + 1]
        mask = self.attention_mask[index : index + 1]
        return replace(self, tensors=tensors, attention_mask=mask, global_mask=global_mask, key=None)


def padding_masks(batch: int, length: int, *, all_padding_row: bool, device: torch.device) -> torch.Tensor:
    """A ``(batch, length)`` mask, each example padded differently.

    Example 0 is full; the others lose a different number of trailing tokens, and example 2 also has a hole in
    the middle; with ``all_padding_row`` the last example is padding only.
    """
    mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    for b in range(1, batch):
        keep = max(1, length - (b * length) // (batch + 1) - b)
        mask[b, keep:] = False
        if b == 2 and keep > 4:
            mask[b, keep // 2] = False
    if all_padding_row and batch > 1:
        mask[-1] = False
    return mask


def global_masks(attention_mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Different global tokens per example: none in example 0 (when batch > 2), the first token, random others."""
    batch, length = attention_mask.shape
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for b in range(batch):
        count = (b % 3) + (1 if b == 0 and batch <= 2 else 0)
        if count:
            mask[b, 0] = True
            picks = torch.randperm(length, generator=generator)[: count - 1]
            mask[b, picks] = True
    return mask.to(attention_mask.device) & attention_mask


@renamed_keywords(heads="num_heads")
def make_inputs(
    pattern: Pattern,
    *,
    batch: int,
    length: int,
    num_heads: int = 2,
    head_dim: int = 8,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    padding: bool = True,
    all_padding_row: bool = False,
    seed: int = 0,
) -> Inputs:
    """Random inputs for ``pattern`` at one shape; deterministic in ``seed``.

    Every part the pattern has gets its input: selected globals a per-example ``global_mask`` (and global
    projections when ``own_projections``), aggregated globals their keys and values, each bias its table.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)

    shape = (batch, num_heads, length, head_dim)
    tensors = {name: randn(*shape) for name in ("q", "k", "v")}
    if padding:
        attention_mask = padding_masks(batch, length, all_padding_row=all_padding_row, device=device)
    else:
        attention_mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    global_mask = None
    if pattern.selected_globals is not None:
        global_mask = global_masks(attention_mask, generator)
    parts = part_tensor_shapes(pattern, batch=batch, num_heads=num_heads, length=length, head_dim=head_dim)
    tensors.update({name: randn(*part_shape) for name, part_shape in parts.items()})
    key = (pattern, batch, length, num_heads, head_dim, dtype, str(device), padding, all_padding_row, seed)
    return Inputs(pattern, tensors, attention_mask, global_mask, key)


def block_sizes(pattern: Pattern) -> list[int]:
    """The sizes at which a pattern's structure changes, where engines cut blocks: window reaches, block size.

    A window ``(left, right)`` gives ``left + 1``, ``right + 1`` and its full reach ``left + right + 1``;
    aggregated globals give ``global_block_size``; a mask part gives its own (:meth:`MaskPart.sizes`). A pattern
    with none gets 16 (a common engine block).
    """
    sizes: set[int] = set()
    window = pattern.window
    if window is not None:
        sides = [side for side in (window.left, window.right) if side is not None]
        sizes.update(side + 1 for side in sides)
        if len(sides) == 2:
            sizes.add(window.left + window.right + 1)
    if pattern.aggregated_globals is not None:
        sizes.add(pattern.aggregated_globals.global_block_size)
    if pattern.mask is not None:
        sizes.update(pattern.mask.sizes())
    sizes.discard(0)
    sizes.discard(1)
    return sorted(sizes) or [16]


def lengths(pattern: Pattern, *, quick: bool = False) -> list[int]:
    """Lengths to check: 1, 2, ``block - 1``, ``block``, ``block + 1`` for each block size, a prime, a long one.

    ``quick`` keeps 1, the largest block's neighbours and the prime (about 1.5 blocks).
    """
    blocks = block_sizes(pattern)
    largest = blocks[-1]
    prime = _next_prime(largest + largest // 2 + 2)
    if quick:
        chosen = {1, largest - 1, largest + 1, prime}
    else:
        chosen = {1, 2, prime, long_length(pattern)}
        for size in blocks:
            chosen.update({size - 1, size, size + 1})
    return sorted(n for n in chosen if n >= 1)


def long_length(pattern: Pattern) -> int:
    """A length several blocks long (and not a multiple of any): ``4 * largest block + 3``."""
    return 4 * block_sizes(pattern)[-1] + 3


def _next_prime(n: int) -> int:
    while n < 2 or any(n % d == 0 for d in range(2, int(n**0.5) + 1)):
        n += 1
    return n
