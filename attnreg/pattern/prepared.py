"""``PreparedMask``: a pattern bound to one batch's masks, checked once and reused by every layer.

Why: every layer of a model attends under the same padding, documents and global tokens. FlexAttention builds its
``BlockMask`` once per batch and xformers its bias objects once; here :meth:`Pattern.prepare` checks the per-batch
inputs once, and engines keep what they derive from them (key masks, global slots, block tables) in the prepared
mask's own store, so the next layer finds them built. Nothing is read back from the device to prepare, and with
``max_globals`` nothing is read back to run either.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from attnreg.validation import PatternError, describe, require

if TYPE_CHECKING:
    from attnreg.pattern.spec import Pattern

T = TypeVar("T")

#: The per-batch inputs a prepared mask holds (``attnreg.attention`` takes them only with a bare ``Pattern``).
BATCH_INPUTS = ("attention_mask", "global_mask", "document_ids", "max_globals")


class PreparedMask:
    """``pattern`` at ``length`` for one batch: ``attention_mask`` and ``global_mask`` ``(batch, length)`` bool,
    ``document_ids`` ``(batch, length)`` int64, ``max_globals`` (see ``attnreg.attention``); ``batch`` is ``None``
    when no per-batch tensor fixes it (any batch then fits). Compared by identity: it is one batch's."""

    def __init__(
        self,
        pattern: Pattern,
        length: int,
        batch: int | None,
        device: torch.device | None,
        attention_mask: torch.Tensor | None,
        global_mask: torch.Tensor | None,
        document_ids: torch.Tensor | None,
        max_globals: int | None,
    ) -> None:
        self.pattern = pattern
        self.length = length
        self.batch = batch
        self.device = device
        self.attention_mask = attention_mask
        self.global_mask = global_mask
        self.document_ids = document_ids
        self.max_globals = max_globals
        self._built: dict[Hashable, Any] = {}

    def __repr__(self) -> str:
        given = [name for name in BATCH_INPUTS if getattr(self, name) is not None]
        return f"PreparedMask({self.pattern!r}, length={self.length}, batch={self.batch}, inputs={given})"

    def per_batch(self, key: Hashable, build: Callable[[], T]) -> T:
        """``build()``, kept for the next layer: what an engine derives from this batch's masks (never from tensors
        that carry gradients)."""
        if key not in self._built:
            self._built[key] = build()
        return self._built[key]

    def check_fits(self, batch: int, length: int, device: torch.device) -> None:
        """Fail unless a call of ``batch`` examples of ``length`` tokens on ``device`` may use this prepared mask."""
        if length != self.length or (self.batch is not None and batch != self.batch):
            raise PatternError(
                f"a prepared mask for batch={self.batch}, length={self.length} is not allowed for a call with "
                f"batch={batch}, length={length}: prepare the pattern for this batch (pattern.prepare(length, ...))"
            )
        require(
            self.device is None or self.device == device,
            "prepared mask device",
            self.device,
            f"expected the call's device {device}",
        )


def prepare(
    pattern: Pattern,
    length: int,
    *,
    attention_mask: torch.Tensor | None = None,
    global_mask: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
    max_globals: int | None = None,
    batch: int | None = None,
    device: torch.device | None = None,
    device_name: str = "the masks' device",
) -> PreparedMask:
    """Check one batch's inputs against ``pattern`` and bind them (see :meth:`Pattern.prepare`); ``batch`` and
    ``device`` default to the masks' (``device_name`` is how errors call it)."""
    require(
        isinstance(length, int) and not isinstance(length, bool) and length >= 1, "length", length, "an int >= 1"
    )
    tensors = [t for t in (attention_mask, global_mask, document_ids) if isinstance(t, torch.Tensor)]
    if batch is None and tensors and tensors[0].dim() == 2:
        batch = tensors[0].shape[0]
    if device is None and tensors:
        device = tensors[0].device
    where = (device, device_name)
    attention_mask = _bool_mask("attention_mask", attention_mask, batch, length, where)
    global_mask = _bool_mask("global_mask", global_mask, batch, length, where)
    document_ids = _documents(document_ids, batch, length, where, pattern)
    selected = pattern.selected_globals
    if global_mask is not None:
        require(selected is not None, "global_mask", "a tensor", "this pattern has no selected_globals")
    if max_globals is not None:
        require(selected is not None, "max_globals", max_globals, "this pattern has no selected_globals; pass None")
        require(
            isinstance(max_globals, int) and not isinstance(max_globals, bool) and max_globals >= 0,
            "max_globals",
            max_globals,
            "expected None or an int >= 0 (a bound on global tokens per example)",
        )
    return PreparedMask(pattern, length, batch, device, attention_mask, global_mask, document_ids, max_globals)


def _bool_mask(
    name: str, mask: torch.Tensor | None, batch: int | None, length: int, where: tuple[torch.device | None, str]
) -> torch.Tensor | None:
    if mask is None:
        return None
    shape = (batch, length)
    require(isinstance(mask, torch.Tensor), name, describe(mask), f"expected a bool tensor of shape {shape}")
    require(tuple(mask.shape) == shape, f"{name}.shape", tuple(mask.shape), f"expected (batch, length) = {shape}")
    device, device_name = where
    require(mask.device == device, f"{name}.device", mask.device, f"expected {device_name} {device}")
    require(
        mask.dtype == torch.bool or not mask.is_floating_point(),
        f"{name}.dtype",
        mask.dtype,
        "expected bool (or integer 0/1); float masks are ambiguous",
    )
    return mask.bool()


def _documents(
    document_ids: torch.Tensor | None,
    batch: int | None,
    length: int,
    where: tuple[torch.device | None, str],
    pattern: Pattern,
) -> torch.Tensor | None:
    """``(batch, length)`` integer document ids as int64; documents and aggregated tokens (which sum blocks that
    may cross documents) cannot be composed."""
    if document_ids is None:
        return None
    shape = (batch, length)
    require(
        isinstance(document_ids, torch.Tensor) and tuple(document_ids.shape) == shape,
        "document_ids",
        describe(document_ids),
        f"expected an integer tensor (batch, length) = {shape}",
    )
    require(
        not document_ids.is_floating_point() and document_ids.dtype != torch.bool and not document_ids.is_complex(),
        "document_ids.dtype",
        document_ids.dtype,
        "expected an integer dtype (a document number per token)",
    )
    device, device_name = where
    found = document_ids.device
    require(found == device, "document_ids.device", found, f"expected {device_name} {device}")
    require(
        pattern.aggregated_globals is None,
        "document_ids",
        describe(document_ids),
        "this pattern has aggregated_globals, whose block tokens sum across document boundaries; the two cannot be "
        "composed",
    )
    return document_ids.long()
