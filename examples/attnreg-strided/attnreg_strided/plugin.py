"""The plugin module named by the ``attnreg`` entry point: hooks attnreg calls when it loads its registry."""

from __future__ import annotations

import attnreg
from attnreg_strided.parts import StridedColumns
from attnreg_strided.pattern import strided


@attnreg.hookimpl
def attnreg_add_parts(registrar: attnreg.PluginRegistrar) -> None:
    """Register the ``strided-columns`` kind, so that patterns using it survive ``to_dict`` / ``from_dict``."""
    registrar.add_part(StridedColumns)


@attnreg.hookimpl
def attnreg_add_patterns(registrar: attnreg.PluginRegistrar) -> None:
    """Register ``strided``; its parameters are ``strided``'s keyword arguments."""
    registrar.add_pattern("strided", strided)
