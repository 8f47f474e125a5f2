"""``attnreg.backend()``: pin the engine of every attnreg call inside a block, as ``sdpa_kernel`` does for SDPA.

Why a context and not a module attribute: one ``with`` reaches every call underneath, in layers, swapped modules,
bridge models and built models alike, without knowing which submodules call attnreg.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from attnreg.execution.dispatch import BackendUnavailableError
from attnreg.registry import get_registry

#: The engine names pinned by the enclosing ``backend()`` blocks, innermost last (process-wide, like sdpa_kernel);
#: ``None`` for a block that leaves the choice to the dispatcher.
_PINNED: list[tuple[str, ...] | None] = []


def pinned_backend() -> tuple[str, ...] | None:
    """The engine names the innermost ``attnreg.backend()`` block allows, or ``None`` outside any block."""
    return _PINNED[-1] if _PINNED else None


@contextmanager
def backend(names: str | Sequence[str] | None) -> Iterator[tuple[str, ...] | None]:
    """Run every attnreg call inside the block on the engine ``names`` names, or the cheapest of several names.

    One name pins that engine: a call it cannot run is an error saying why, never a silent fallback. Several let
    the dispatcher choose among them; ``None`` leaves it every engine (undoing an outer block). An inner block
    replaces an outer one; ``attention(..., backend=)`` given explicitly overrides both. ``attnreg list`` and
    ``attnreg explain`` show the engines.
    """
    chosen = None if names is None else (names,) if isinstance(names, str) else tuple(names)
    if chosen is not None and (not chosen or not all(isinstance(name, str) for name in chosen)):
        known = ", ".join(sorted(engine.name for engine in get_registry().engines()))
        raise BackendUnavailableError(f"attnreg.backend({names!r}) is not allowed: name one or more of {known}")
    for name in chosen or ():
        get_registry().engine(name)  # an unknown name is an error naming the close matches and the known engines
    _PINNED.append(chosen)
    try:
        yield chosen
    finally:
        _PINNED.pop()
