"""The hooks a plugin implements. Each receives the :class:`~attnreg.registry.Registry` to add its contributions to.

A plugin is any object or module with functions marked ``@attnreg.hookimpl`` and named after a hook below,
exposed through an entry point in the ``attnreg`` group (or registered at run time with
``attnreg.register_plugin``). The built-in patterns arrive through exactly this door.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from attnreg.registry.registry import PluginRegistrar

PROJECT = "attnreg"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def attnreg_add_patterns(registry: PluginRegistrar) -> None:
    """Add the plugin's patterns with ``registry.add_pattern(name, factory, description=...)``.

    Called once for each plugin whenever the registry is (re)built. ``factory(**params)`` must return an
    :class:`attnreg.Pattern`; its keyword parameters (with defaults) are the pattern's parameters.
    """


@hookspec
def attnreg_add_builders(registry: PluginRegistrar) -> None:
    """Add model builders with ``registry.add_builder(name, builder, description=...)``.

    Called once for each plugin whenever the registry is (re)built. ``attnreg.build(name, config, pretrained=...,
    **overrides)`` calls ``builder(config, pretrained=..., **overrides)``, which returns a ``torch.nn.Module``.
    """


@hookspec
def attnreg_add_engines(registry: PluginRegistrar) -> None:
    """Add attention engines with ``registry.add_engine(engine)`` (an :class:`attnreg.Engine`).

    Called once for each plugin whenever the registry is (re)built. The dispatcher considers every engine
    for every call and picks the cheapest that supports it.
    """


@hookspec
def attnreg_add_benchmarks(registry: PluginRegistrar) -> None:
    """Add layer benchmarks with ``registry.add_benchmark(name, make_cases, description=...)``.

    Called once for each plugin whenever the registry is (re)built. ``make_cases(length, *, batch, device,
    dtype)`` returns ``{label: (module, kwargs)}`` with at least ``"attnreg"`` (the plugin's layer) and, where
    one exists, ``"transformers"`` (the same layer from transformers on the same weights); ``attnreg bench``
    times ``module(**kwargs)`` (its first tensor output, ``.sum().backward()`` with ``--grad``) side by side,
    and runs the ``"attnreg"`` module once per engine by setting ``attnreg_backend`` on its submodules.
    """
