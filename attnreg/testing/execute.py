"""Running one engine (or the float64 reference) on suite inputs, forward and backward, and comparing tensors.

Why apart from the checks: every check runs engines the same way (engine asked first, refusals are skips, not
failures) and words differences the same way (which tensor, where, by how much, against which limit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnreg.execution.call import AttentionCall, make_call
from attnreg.execution.dispatch import refusals
from attnreg.execution.engine import Engine
from attnreg.execution.reference import reference_attention
from attnreg.testing.inputs import Inputs
from attnreg.testing.tolerances import Tolerance


class Refused(Exception):
    """The engine turned the call down (its declared capabilities or its own reasons, as the dispatcher asks): the
    case is skipped, not failed."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass
class Run:
    """An engine's output and, when asked for, the gradient of every floating input (zeros where unused)."""

    output: torch.Tensor
    grads: dict[str, torch.Tensor]


def upstream_gradient(inputs: Inputs, seed: int = 1) -> torch.Tensor:
    """A fixed random gradient for the output, float64, so every check backpropagates the same thing."""
    generator = torch.Generator().manual_seed(seed)
    shape = inputs.tensors["q"].shape
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(inputs.tensors["q"].device)


def run_engine(engine: Engine, inputs: Inputs, *, grad: bool) -> Run:
    """Run ``engine`` on fresh leaf copies of ``inputs``; raise :class:`Refused` when it declines the call."""

    def attend(call: AttentionCall) -> torch.Tensor:
        reasons = list(refusals(engine, call))
        if reasons:
            raise Refused(reasons)
        return engine(call)

    return _run(attend, inputs, inputs.dtype, grad=grad)


def _run(attend: Callable[[AttentionCall], torch.Tensor], inputs: Inputs, dtype: torch.dtype, *, grad: bool) -> Run:
    """``attend`` on leaf copies of ``inputs`` in ``dtype``: its output and, with ``grad``, every input's gradient
    against :func:`upstream_gradient` (zeros for an input the output does not depend on)."""
    leaves = inputs.to(dtype, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        output = attend(make_call(*leaves.args(), **leaves.kwargs()))
        grads: dict[str, torch.Tensor] = {}
        if grad:
            (output.double() * upstream_gradient(inputs)).sum().backward()
            grads = {name: torch.zeros_like(t) if t.grad is None else t.grad for name, t in leaves.tensors.items()}
    return Run(output.detach(), grads)


#: Reference runs of unmodified suite inputs, shared by every engine checked on them (cleared per pattern).
_REFERENCE_RUNS: dict[tuple, Run] = {}


def clear_reference_cache() -> None:
    """Forget the cached reference runs (the suite does so before each pattern)."""
    _REFERENCE_RUNS.clear()


def run_reference(inputs: Inputs, *, grad: bool) -> Run:
    """The float64 dense reference on ``inputs`` (whatever their dtype): the ground truth of every comparison.

    O(n²) and the slowest part of the suite, so runs of unmodified :func:`make_inputs` requests are cached.
    """
    key = None if inputs.key is None else (*inputs.key, grad)
    if key is not None and key in _REFERENCE_RUNS:
        return _REFERENCE_RUNS[key]
    run = _run(reference_attention, inputs, torch.float64, grad=grad)
    if key is not None:
        _REFERENCE_RUNS[key] = run
    return run


def where(name: str, shape: torch.Size, flat_index: int) -> str:
    """Say where element ``flat_index`` of tensor ``name`` is, in the words of its dimensions."""
    index = [int(i) for i in torch.unravel_index(torch.tensor(flat_index), shape)]
    if name.endswith("bias_weight"):
        return f"bucket {index[0]}, head {index[1]}"
    if len(index) == 4:
        unit = "aggregated key" if name.startswith("aggregated") else "position"
        return f"example {index[0]}, head {index[1]}, {unit} {index[2]}"
    return f"index {tuple(index)}"


def non_finite(name: str, tensor: torch.Tensor) -> str | None:
    """A sentence locating the first NaN or inf in ``tensor``, or ``None`` if it is all finite."""
    bad = ~torch.isfinite(tensor)
    if not bool(bad.any()):
        return None
    first = int(bad.flatten().nonzero()[0])
    value = tensor.flatten()[first].item()
    return f"{name} has {int(bad.sum())} non-finite value(s), first {value} at {where(name, tensor.shape, first)}"


def difference(name: str, got: torch.Tensor, want: torch.Tensor, tol: Tolerance) -> str | None:
    """A sentence describing how ``got`` misses ``want`` beyond ``tol``, or ``None`` if it is within it."""
    problem = non_finite(name, got)
    if problem:
        return problem
    if got.shape != want.shape:
        return f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    diff = (got.double() - want.double()).abs()
    if diff.numel() == 0:
        return None
    scale = float(want.abs().max())
    limit = tol.limit(scale)
    worst = float(diff.max())
    if worst <= limit:
        return None
    at = int(diff.flatten().argmax())
    return (
        f"{name}: max |diff| {worst:.3g} at {where(name, got.shape, at)} "
        f"(got {got.flatten()[at].item():.5g}, expected {want.flatten()[at].item():.5g}); "
        f"allowed {limit:.3g} = atol {tol.atol:g} + rtol {tol.rtol:g} x max|expected| {scale:.3g}"
    )


def compare_runs(got: Run, want: Run, tol: Tolerance) -> list[str]:
    """Every way ``got`` misses ``want``: the output first, then each gradient."""
    problems = [difference("output", got.output, want.output, tol)]
    for name, grad in got.grads.items():
        problems.append(difference(f"grad {name}", grad, want.grads[name], tol))
    return [p for p in problems if p]
