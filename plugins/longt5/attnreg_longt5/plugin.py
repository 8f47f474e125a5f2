"""The ``attnreg`` entry point of attnreg-longt5: patterns, model builders and layer benchmarks."""

from __future__ import annotations

import attnreg
from attnreg_longt5.patterns import longt5_local, longt5_tglobal


@attnreg.hookimpl
def attnreg_add_patterns(registrar: attnreg.PluginRegistrar) -> None:
    registrar.add_pattern("longt5-local", longt5_local, description="LongT5 local attention: |i-j| <= r, T5 bias")
    registrar.add_pattern(
        "longt5-tglobal",
        longt5_tglobal,
        description="LongT5 Transient-Global: local window + one aggregated key per block, side bias",
    )


@attnreg.hookimpl
def attnreg_add_builders(registrar: attnreg.PluginRegistrar) -> None:
    from attnreg_longt5.models import BUILDERS

    for name, builder in BUILDERS.items():
        registrar.add_builder(name, builder, description=f"transformers LongT5 ({name}) on attnreg attention")


@attnreg.hookimpl
def attnreg_add_benchmarks(registrar: attnreg.PluginRegistrar) -> None:
    from attnreg_longt5.bench import cases_for

    for name in ("longt5-local", "longt5-tglobal"):
        registrar.add_benchmark(name, cases_for(name), description="one encoder self-attention layer vs transformers'")
