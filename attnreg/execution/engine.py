"""The engine interface: an implementation of pattern attention that says why it refuses an input."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from attnreg.execution.call import AttentionCall


class Engine(ABC):
    """Runs an :class:`AttentionCall`; the dispatcher asks every engine whether it can, and what it would cost.

    Engines read the pattern's parts, never its name: a plugin's new pattern runs on every engine that
    supports its parts.
    """

    #: Short unique name, used by ``backend=`` and ``attnreg explain``.
    name: str = ""
    #: One line for ``attnreg explain`` and ``attnreg list``.
    description: str = ""
    #: Picked automatically only when no other engine supports the call (``backend=`` still names it): the
    #: reference is the tests' ground truth, and its estimate can undercut the fast engines on tiny inputs.
    last_resort: bool = False

    # What it supports, declared as data: the dispatcher refuses a call outside it (saying why), and benchmarks and
    # checks read it instead of lists of engine names.
    #: The device types it runs on (``torch.device.type``); ``None``: any device.
    devices: frozenset[str] | None = None
    #: The input dtypes it takes; ``None``: any floating dtype.
    dtypes: frozenset[torch.dtype] | None = None
    #: The device types on which it computes gradients; ``None``: every device it runs on. A call with an input that
    #: requires grad is refused elsewhere (run it under ``torch.no_grad()`` or on another engine).
    gradient_devices: frozenset[str] | None = None
    #: Whether it applies attention-probability dropout (``call.dropout``).
    supports_dropout: bool = False
    #: Whether it takes explicit keep flags (``call.dropout.keep``) instead of drawing its own.
    supports_dropout_mask: bool = False
    #: Whether its time and memory grow with length² on purpose (the dense ground truth, dense SDPA): benchmarks do
    #: not start it at long lengths, and the linear-memory check does not apply to it.
    quadratic_memory: bool = False

    @abstractmethod
    def unsupported_reasons(self, call: AttentionCall) -> list[str]:
        """Why this engine cannot run ``call`` (device, dtype, grad, pattern parts, sizes); empty if it can."""

    @abstractmethod
    def estimated_cost(self, call: AttentionCall) -> float:
        """A rough time estimate in seconds for ``call`` on its device, comparable across engines."""

    def untraceable_reasons(self, call: AttentionCall) -> list[str]:
        """Why ``call`` cannot be traced by ``torch.compile`` on this engine (e.g. a size read from the data); asked
        only while tracing, so eager dispatch never depends on it. None by default."""
        return []

    @abstractmethod
    def __call__(self, call: AttentionCall) -> torch.Tensor:
        """The output ``(batch, heads, length, head_dim)``; differentiable when the inputs require grad."""

    def capability_summary(self) -> str:
        """The declared capabilities in one line, for ``attnreg list --verbose`` and the docs."""

        def names(values: frozenset | None, every: str) -> str:
            return every if values is None else ", ".join(sorted(str(v).removeprefix("torch.") for v in values))

        dropout = "no"
        if self.supports_dropout:
            dropout = "yes, and explicit keep flags" if self.supports_dropout_mask else "yes (its own draws)"
        gradients = "no" if self.gradient_devices == frozenset() else names(self.gradient_devices, "yes")
        return (
            f"devices: {names(self.devices, 'any')}; dtypes: {names(self.dtypes, 'any floating')}; "
            f"gradients: {gradients}; dropout: {dropout}; memory: {'quadratic' if self.quadratic_memory else 'linear'}"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
