"""``SharedBatch``: the prepared masks of the batch a model is running, built by its first layer, found by the rest.

Why: an encoder hands every layer the very same mask tensors, and every layer attends under the same padding and
global tokens. Preparing the pattern once per batch (``pattern.prepare``) lets the engines build their key masks,
global slots and block tables once per forward instead of once per layer. Layers whose own loop is not attnreg's
(transformers' encoders) cannot be handed a prepared mask, so they recognise the batch by the mask tensor they are
given: weakly (a freed tensor never matches a new one), and never while compiling (the compiler dedups on its own).
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable
from typing import Any

import torch

from attnreg.pattern.prepared import PreparedMask
from attnreg.pattern.spec import Pattern


class SharedBatch:
    """The prepared masks of the current batch, by pattern and bound; give one instance to all of a model's layers."""

    def __init__(self) -> None:
        self._source: weakref.ref | None = None
        self._prepared: dict[Hashable, PreparedMask] = {}

    def prepare(self, source: torch.Tensor | None, pattern: Pattern, length: int, **batch: Any) -> PreparedMask:
        """``pattern.prepare(length, **batch)``, reused while ``source`` (the mask tensor the model hands every layer;
        ``None``: none, prepared afresh) is the one the previous layers were given."""
        if source is None or torch.compiler.is_compiling():
            return pattern.prepare(length, **batch)
        if self._source is None or self._source() is not source:
            self._source, self._prepared = weakref.ref(source), {}
        key = (pattern, length, batch.get("max_globals"))
        if key not in self._prepared:
            self._prepared[key] = pattern.prepare(length, **batch)
        return self._prepared[key]

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (``torch.save(model)``) empty: a batch's masks are not part of a model."""
        return {"_source": None, "_prepared": {}}
