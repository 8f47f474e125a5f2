"""Peak memory of one forward + backward, and the check that a fast engine's memory grows linearly.

Why a dispatch mode on CPU: there is no CPU allocator statistic, but every tensor an operator returns passes
through ``__torch_dispatch__``; tracking each storage until it is freed gives the peak of live bytes. On CUDA the
allocator's own peak is used.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from attnreg.bench.measure import cuda_peak_bytes
from attnreg.testing.context import Cases, Context
from attnreg.testing.execute import Refused, run_engine
from attnreg.testing.inputs import block_sizes, make_inputs
from attnreg.testing.results import SKIP
from attnreg.testing.tolerances import MEMORY_GROWTH_LIMIT


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of storages created while active and still alive; ``peak`` is their maximum."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for key in [key for key, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if storage._cdata not in self.live:
                    self.live[storage._cdata] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def peak_bytes(ctx: Context, length: int) -> int:
    """Peak bytes allocated by the engine for one forward + backward at ``length`` (inputs not counted)."""
    inputs = make_inputs(
        ctx.pattern,
        batch=1,
        length=length,
        num_heads=2,
        head_dim=16,
        dtype=torch.float32,
        device=ctx.device,
        padding=False,
        seed=ctx.seed,
    )
    if ctx.device.type == "cuda":
        return cuda_peak_bytes(lambda: run_engine(ctx.engine, inputs, grad=True), ctx.device)
    with LiveBytes() as counter:
        run_engine(ctx.engine, inputs, grad=True)
    return counter.peak


def linear_memory(ctx: Context) -> tuple[str, str]:
    """The engine's peak memory at 4n is at most 4.5x that at n (more only as far as the pattern's pairs grow)."""
    if ctx.engine.quadratic_memory:
        return SKIP, f"engine {ctx.engine.name!r} is quadratic by design (the dense ground truth)"
    short = max(256, 4 * block_sizes(ctx.pattern)[-1])
    long = 4 * short
    pair_growth = ctx.pattern.cost(long).allowed_pairs / ctx.pattern.cost(short).allowed_pairs
    limit = MEMORY_GROWTH_LIMIT * max(1.0, pair_growth / 4)
    if pair_growth > 3 * MEMORY_GROWTH_LIMIT:
        return SKIP, f"the pattern itself is dense: its allowed pairs grow {pair_growth:.1f}x from {short} to {long}"
    cases = Cases()
    try:
        small, large = peak_bytes(ctx, short), peak_bytes(ctx, long)
    except Refused as refused:
        cases.refused(f"lengths {short} and {long}", str(refused))
        return cases.verdict()
    growth = large / max(small, 1)
    cases.ran = 1
    if growth > limit:
        cases.failed(
            f"lengths {short} -> {long}, float32, forward + backward",
            f"peak memory grew {growth:.2f}x ({small / 2**20:.2f} MiB -> {large / 2**20:.2f} MiB), "
            f"allowed {limit:.2f}x "
            f"(the pattern's allowed pairs grew {pair_growth:.2f}x): something in the engine is quadratic",
        )
    status, detail = cases.verdict()
    return status, detail if cases.failures else f"grew {growth:.2f}x (allowed {limit:.2f}x)"
