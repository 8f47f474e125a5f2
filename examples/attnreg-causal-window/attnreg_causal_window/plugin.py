"""The plugin module named by the ``attnreg`` entry point: hooks attnreg calls when it loads its registry."""

from __future__ import annotations

import attnreg
from attnreg_causal_window.pattern import causal_window


@attnreg.hookimpl
def attnreg_add_patterns(registrar: attnreg.PluginRegistrar) -> None:
    """Register ``causal-window``; its parameters are ``causal_window``'s keyword arguments."""
    registrar.add_pattern("causal-window", causal_window)
