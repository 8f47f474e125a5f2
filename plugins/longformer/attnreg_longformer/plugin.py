"""The plugin's hooks: the ``longformer`` pattern, model builder and layer benchmarks."""

from __future__ import annotations

import attnreg
from attnreg_longformer import benchmark
from attnreg_longformer.models import build_longformer
from attnreg_longformer.pattern import longformer


@attnreg.hookimpl
def attnreg_add_patterns(registrar: attnreg.PluginRegistrar) -> None:
    """``longformer``: sliding window + symmetric global tokens with their own projections."""
    registrar.add_pattern("longformer", longformer)


@attnreg.hookimpl
def attnreg_add_builders(registrar: attnreg.PluginRegistrar) -> None:
    """``longformer``: transformers' Longformer models (base, masked-LM, QA, ...) on attnreg's attention."""
    registrar.add_builder("longformer", build_longformer)


@attnreg.hookimpl
def attnreg_add_benchmarks(registrar: attnreg.PluginRegistrar) -> None:
    """``longformer`` (one global token) and ``longformer-noglobal``: the layer against transformers' own."""
    registrar.add_benchmark("longformer", benchmark.with_one_global)
    registrar.add_benchmark("longformer-noglobal", benchmark.without_globals)
