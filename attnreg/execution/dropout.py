"""Attention-probability dropout: what a call asks for, the keep flags it draws, and their compact storage.

Inverted dropout on the final normalised probabilities, as transformers applies it after its softmax over all of a
query's keys: a kept weight is scaled by ``1 / (1 - p)``, a dropped one is zero. Keep flags come from torch's default
generator (``torch.manual_seed`` reproduces a step), sixteen random bits per flag, so the keep rate is ``1 - p`` to
within ``2**-17``. Engines that recompute in backward keep the flags as bits (:func:`pack_bits`), never an n² tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnreg._validation import describe, require

#: Flags drawn per int64 draw (16 random bits each).
_FLAGS_PER_DRAW = 4
#: The steps that spread a byte's bits over the bytes of an int64: 4 bits to each half, 2 to each quarter, 1 a byte.
_SPREADS = ((28, 0x0000000F0000000F), (14, 0x0003000300030003), (7, 0x0101010101010101))


@dataclass(frozen=True)
class AttentionDropout:
    """Dropout of a call's attention probabilities: the rate ``p``, and optionally the keep flags to use.

    ``keep``: ``(batch, heads, length, length + count)`` bool, True for a kept weight, in the dense layout's key
    order (tokens, then aggregated tokens). Engines that take it use it instead of drawing, so that a fast engine can
    be compared exactly with the reference; it is O(length²), for tests.
    """

    p: float
    keep: torch.Tensor | None = None

    @property
    def scale(self) -> float:
        """What a kept weight is multiplied by."""
        return 1.0 / (1.0 - self.p)


def check_dropout_p(name: str, p: object) -> float:
    """``p`` as a float after checking it is a number in [0, 1); errors name ``name``."""
    require(
        isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p < 1.0,
        name,
        p,
        "expected a probability 0 <= p < 1",
    )
    return float(p)


def make_dropout(
    p: object, keep: torch.Tensor | None, *, batch: int, num_heads: int, length: int, keys: int, device: torch.device
) -> AttentionDropout | None:
    """The call's dropout from ``attnreg.attention``'s ``dropout_p`` and ``dropout_mask``; ``None`` for none."""
    p = check_dropout_p("dropout_p", p)
    shape = (batch, num_heads, length, keys)
    if keep is not None:
        require(p > 0, "dropout_mask", describe(keep), "a keep mask needs dropout_p > 0")
        require(
            isinstance(keep, torch.Tensor) and tuple(keep.shape) == shape and keep.dtype == torch.bool,
            "dropout_mask",
            describe(keep),
            f"expected a bool tensor (batch, heads, length, length + count) = {shape}, True for kept weights",
        )
        require(keep.device == device, "dropout_mask.device", keep.device, f"expected q's device {device}")
    return AttentionDropout(p, keep) if p > 0 else None


def draw_keep(shape: tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """Bool keep flags of ``shape``, each True with probability ``1 - p``, from the default generator.

    Sixteen random bits per flag, four flags per 64-bit draw: far cheaper than a float per flag, and the keep rate is
    ``1 - round(p * 2**16) / 2**16``.
    """
    count = 1
    for size in shape:
        count *= size
    draws = torch.randint(-(2**63), 2**63 - 1, (-(-count // _FLAGS_PER_DRAW),), dtype=torch.int64, device=device)
    threshold = round(p * 65536) - 32768
    return (draws.view(torch.int16)[:count] >= threshold).view(shape)


def packed_size(flags: int) -> int:
    """Bytes that :func:`pack_bits` gives for ``flags`` flags."""
    return -(-flags // 8)


def pack_bits(flags: torch.Tensor) -> torch.Tensor:
    """Bool ``(..., n)`` as uint8 ``(..., ceil(n / 8))``, bit ``i`` of byte ``b`` holding flag ``8 b + i``.

    Eight flags are the eight bytes of one int64 (each 0 or 1); three shift-ors gather their low bits into its low byte.
    """
    n = flags.shape[-1]
    pad = packed_size(n) * 8 - n
    if pad:
        flags = torch.cat([flags, flags.new_zeros((*flags.shape[:-1], pad))], dim=-1)
    words = flags.contiguous().view(torch.int64)
    for shift in (7, 14, 28):
        words = words | (words >> shift)
    return (words & 0xFF).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Undo :func:`pack_bits`: bool ``(..., n)`` from uint8 ``(..., ceil(n / 8))``.

    Each byte is spread over the eight bytes of one int64, one bit each (no shift overflows: values stay below 2**57).
    """
    words = packed.to(torch.int64)
    for shift, spread in _SPREADS:
        words = (words | (words << shift)) & spread
    return words.view(torch.bool)[..., :n]
