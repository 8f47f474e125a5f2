"""The variants a benchmark compares at one length: each engine on the pattern's layer (or bare call), and transformers.

A registered layer benchmark (``attnreg_add_benchmarks``) gives an ``"attnreg"`` module, run once per engine inside
``attnreg.backend(engine)``, and a ``"transformers"`` module on the same weights. A pattern without one is
benchmarked as a bare ``attnreg.attention`` call per engine on random inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

import attnreg
from attnreg._deprecation import renamed_keywords
from attnreg.bench.inputs import leaves, random_inputs
from attnreg.pattern.spec import Pattern
from attnreg.registry import BenchmarkEntry

TRANSFORMERS = "transformers"


@dataclass(frozen=True)
class Variant:
    """One thing to time: ``label`` (``"transformers"`` or an engine name) and a call that runs it once."""

    label: str
    run: Callable[[], object]


def engine_labels(engines: list[str] | None = None) -> list[str]:
    """The engines to compare: those asked for, or every registered one."""
    known = [engine.name for engine in attnreg.get_registry().engines()]
    return known if engines is None else [name for name in engines if name in known]


def _first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    for item in value:
        if isinstance(item, torch.Tensor):
            return item
    raise TypeError(f"the benchmarked module returned no tensor ({type(value).__name__})")


def _step(forward: Callable[[], Any], parameters: list[torch.Tensor], grad: bool) -> Callable[[], object]:
    """One forward (no autograd), or forward + ``sum().backward()`` with gradients cleared first."""
    if not grad:

        def infer() -> object:
            with torch.no_grad():
                return _first_tensor(forward())

        return infer

    def train() -> object:
        for tensor in parameters:
            tensor.grad = None
        _first_tensor(forward()).float().sum().backward()

    return train


def _trainable(module: torch.nn.Module, kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The tensors a backward pass gives gradients to: the module's parameters and inputs that require grad."""
    return [*module.parameters(), *leaves(kwargs)]


def layer_variants(
    entry: BenchmarkEntry,
    length: int,
    *,
    batch: int,
    device: torch.device,
    dtype: torch.dtype,
    grad: bool,
    engines: list[str],
) -> Iterator[Variant]:
    """The transformers layer (if the benchmark has one), then attnreg's layer once per engine."""
    cases = entry.make_cases(length, batch=batch, device=device, dtype=dtype)
    for label, (module, kwargs) in cases.items():
        if label == "attnreg":
            continue
        yield Variant(label, _step(lambda m=module, k=kwargs: m(**k), _trainable(module, kwargs), grad))
    module, kwargs = cases["attnreg"]
    params = _trainable(module, kwargs)
    for engine in engines:

        def forward(engine: str = engine) -> Any:
            with attnreg.backend(engine):
                return module(**kwargs)

        yield Variant(engine, _step(forward, params, grad))


@renamed_keywords(heads="num_heads")
def bare_variants(
    pattern: Pattern,
    length: int,
    *,
    batch: int,
    device: torch.device,
    dtype: torch.dtype,
    grad: bool,
    engines: list[str],
    num_heads: int = 8,
    head_dim: int = 64,
) -> Iterator[Variant]:
    """``attnreg.attention`` on random inputs (one global token if the pattern has selected globals), per engine."""
    inputs = random_inputs(
        pattern,
        length,
        batch=batch,
        num_heads=num_heads,
        head_dim=head_dim,
        dtype=dtype,
        device=device,
        num_globals=1,
        requires_grad=grad,
    )
    trainable = leaves(inputs)  # q, k, v and every other input that takes a gradient (projections, tables)
    q, k, v = inputs.pop("q"), inputs.pop("k"), inputs.pop("v")
    for engine in engines:

        def forward(engine: str = engine) -> torch.Tensor:
            return attnreg.attention(q, k, v, pattern, backend=engine, **inputs)

        yield Variant(engine, _step(forward, trainable, grad))
