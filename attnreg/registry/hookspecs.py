"""The hooks a plugin implements; each gets the plugin's own :class:`attnreg.PluginRegistrar`, to add its contributions.

A plugin is any object or module with functions marked ``@attnreg.hookimpl`` and named after a hook below,
exposed through an entry point in the ``attnreg`` group (or registered at run time with
``attnreg.register_plugin``). The core's own engines, part kinds, patterns and generic builders come through these
same hooks (``attnreg._core_plugin``), registered by ``Registry.load`` itself rather than by an entry point, so
``ATTNREG_DISABLE_PLUGINS`` cannot turn them off. A hook function takes the argument ``registrar`` (or nothing);
``registry``, its old name, still works and warns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from attnreg.registry.registry import PluginRegistrar

PROJECT = "attnreg"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: The old name of the hooks' argument: a hook function that takes it gets the registrar and a warning.
_RENAMED = {
    "registry": DeprecationWarning(
        "the argument of attnreg's hooks is named `registrar` now; rename `registry` to `registrar` in this hook "
        "function (the old name will stop working in a later release)"
    )
}


@hookspec(warn_on_impl_args=_RENAMED)
def attnreg_add_patterns(registrar: PluginRegistrar, registry: PluginRegistrar) -> None:
    """Add the plugin's patterns with ``registrar.add_pattern(name, factory, description=...)``.

    Called once for each plugin whenever the registry is (re)built; returns nothing. ``factory(**params)`` must
    return an :class:`attnreg.Pattern`; its keyword parameters (with defaults) are the pattern's parameters.

    :param registrar: adds this plugin's contributions, remembering that this plugin added them.
    :param registry: the same object under its old name (deprecated).
    """


@hookspec(warn_on_impl_args=_RENAMED)
def attnreg_add_parts(registrar: PluginRegistrar, registry: PluginRegistrar) -> None:
    """Add part kinds with ``registrar.add_part(part_type)``: an :class:`attnreg.MaskPart` or
    :class:`attnreg.ScoreTerm` subclass, a frozen dataclass whose ``kind`` names it in a pattern's data.

    Called once for each plugin whenever the registry is (re)built; returns nothing. A registered kind can be used
    in ``Pattern(mask=...)`` and is rebuilt by ``Pattern.from_dict`` from its ``kind``; every engine runs a mask part
    through its ``allowed`` and ``coverage``. A kind two plugins claim is usable by neither (an error naming both),
    and a plugin claiming one of the core's kinds fails to load.

    :param registrar: adds this plugin's contributions, remembering that this plugin added them.
    :param registry: the same object under its old name (deprecated).
    """


@hookspec(warn_on_impl_args=_RENAMED)
def attnreg_add_builders(registrar: PluginRegistrar, registry: PluginRegistrar) -> None:
    """Add model builders with ``registrar.add_builder(name, builder, description=...)``.

    Called once for each plugin whenever the registry is (re)built; returns nothing. ``attnreg.build(name, config,
    pretrained=..., **overrides)`` calls ``builder(config, pretrained=..., **overrides)``, which returns a
    ``torch.nn.Module``.

    :param registrar: adds this plugin's contributions, remembering that this plugin added them.
    :param registry: the same object under its old name (deprecated).
    """


@hookspec(warn_on_impl_args=_RENAMED)
def attnreg_add_engines(registrar: PluginRegistrar, registry: PluginRegistrar) -> None:
    """Add attention engines with ``registrar.add_engine(engine)`` (an :class:`attnreg.Engine`).

    Called once for each plugin whenever the registry is (re)built; returns nothing. The dispatcher considers
    every engine for every call and picks the cheapest that supports it.

    :param registrar: adds this plugin's contributions, remembering that this plugin added them.
    :param registry: the same object under its old name (deprecated).
    """


@hookspec(warn_on_impl_args=_RENAMED)
def attnreg_add_benchmarks(registrar: PluginRegistrar, registry: PluginRegistrar) -> None:
    """Add layer benchmarks with ``registrar.add_benchmark(name, make_cases, description=...)``.

    Called once for each plugin whenever the registry is (re)built; returns nothing. ``make_cases(length, *, batch,
    device, dtype)`` returns ``{label: (module, kwargs)}`` with at least ``"attnreg"`` (the plugin's layer) and,
    where one exists, ``"transformers"`` (the same layer from transformers on the same weights); ``attnreg bench``
    times ``module(**kwargs)`` (its first tensor output, ``.sum().backward()`` with ``--grad``) side by side, and
    runs the ``"attnreg"`` module once per engine inside ``attnreg.backend(engine)``.

    :param registrar: adds this plugin's contributions, remembering that this plugin added them.
    :param registry: the same object under its old name (deprecated).
    """


#: Every hook's name, in the order the registry calls them (the order of definition above).
HOOKS: tuple[str, ...] = tuple(name for name in list(globals()) if name.startswith(f"{PROJECT}_add_"))
