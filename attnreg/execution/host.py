"""When code may branch on a tensor's values: on the CPU, where reading them costs no device sync.

The fast paths use it to skip work the data shows is not needed (a key mask on blocks without padding, a projection
of rows that are never read). On an accelerator the read would stall the stream, and under ``torch.compile`` or
tracing it would be data-dependent control flow, so there they take the path that needs no read. (Other tensor
subclasses that cannot be read, such as fake tensors outside ``torch.compile`` or ``vmap``'s batched tensors, are not
detected: the read raises there.)
"""

from __future__ import annotations

import torch


def eager_on_cpu(x: torch.Tensor) -> bool:
    """Whether ``x`` is on the CPU, outside ``torch.compile`` and tracing: what runs is what Python says, op by op."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling() and not torch.jit.is_tracing()


def host_readable(x: torch.Tensor) -> bool:
    """Whether ``x``'s values may be read back to decide what to compute (see the module's docstring)."""
    return eager_on_cpu(x)
