"""The registry: plugins found through pluggy entry points, each isolated, and what they add.

Loading never depends on order: plugins load sorted by name, a name two plugins claim becomes a conflict
that names both distributions, and a plugin that fails to import, marks a function that is no hook (a misspelt
hook name), or raises in a hook is kept aside with the reason while the others load (``ATTNREG_STRICT=1`` makes
any of these fatal). A plugin that loads but registers nothing is noted, since a forgotten marker is silent.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import traceback
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from attnreg.execution.engine import Engine
from attnreg.pattern.predicates import MaskPart, check_part_type
from attnreg.pattern.spec import Pattern
from attnreg.registry import hookspecs
from attnreg.validation import AttnregError, PatternError, reject_unknown

ENTRY_POINT_GROUP = "attnreg"
DISABLE_ENV = "ATTNREG_DISABLE_PLUGINS"
STRICT_ENV = "ATTNREG_STRICT"
CORE_PLUGIN = "attnreg.core"


class PluginError(AttnregError, RuntimeError):
    """A plugin cannot be loaded, registered, run or unregistered as asked.

    Raised at once for a plugin registered at run time; an installed plugin's failure is recorded and shown by
    ``attnreg list`` instead, and raised only in strict mode (``ATTNREG_STRICT=1``).
    """


class ConflictError(PatternError):
    """Two plugins claim one name."""


class UnknownNameError(AttnregError, KeyError):
    """No pattern (or builder, or engine) of that name; the message lists close matches and the installed plugins."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class PluginInfo:
    """One plugin: where it comes from and whether it loaded."""

    name: str
    distribution: str | None = None
    version: str | None = None
    error: str | None = None

    @property
    def source(self) -> str:
        """``distribution version`` for an installed plugin, or how it got here otherwise."""
        if self.distribution:
            return f"{self.distribution} {self.version or ''}".strip()
        return "attnreg (core)" if self.name == CORE_PLUGIN else "registered at run time"


@dataclass(frozen=True)
class PatternEntry:
    """A registered pattern name: its factory, the plugin that added it, and a one-line description."""

    name: str
    factory: Callable[..., Pattern]
    plugin: PluginInfo
    description: str = ""

    def keyword_parameters(self) -> dict[str, inspect.Parameter]:
        """The factory's parameters that can be passed by keyword, with their defaults and annotations."""
        return {
            name: p
            for name, p in inspect.signature(self.factory).parameters.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        }

    def parameters(self) -> dict[str, Any]:
        """The factory's keyword parameters and defaults (``inspect.Parameter.empty`` when required)."""
        return {name: p.default for name, p in self.keyword_parameters().items()}

    def create(self, **params: Any) -> Pattern:
        """Call the factory after checking that every parameter exists."""
        reject_unknown(f"pattern {self.name!r}", params, self.parameters())
        pattern = self.factory(**params)
        if not isinstance(pattern, Pattern):
            raise PluginError(
                f"pattern {self.name!r} from {self.plugin.source} returned {type(pattern).__name__}"
                f", not attnreg.Pattern"
            )
        return pattern


@dataclass(frozen=True)
class BuilderEntry:
    """A registered model builder."""

    name: str
    builder: Callable[..., Any]
    plugin: PluginInfo
    description: str = ""

    def keyword_parameters(self) -> dict[str, inspect.Parameter]:
        """The builder's parameters that can be passed by keyword (``**overrides`` included), as it declares them."""
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD)
        return {name: p for name, p in inspect.signature(self.builder).parameters.items() if p.kind in kinds}

    def config_fields(self) -> dict[str, inspect.Parameter]:
        """The fields that the dataclass its ``config`` parameter takes declares itself (not those it inherits, such
        as transformers' generic config fields), which ``**overrides`` may set; empty when the annotation names no
        dataclass (or cannot be resolved)."""
        try:
            hint = typing.get_type_hints(self.builder).get("config")
        except Exception:  # a plugin's annotation naming what its module does not import
            return {}
        kinds = [kind for kind in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(kind)]
        if not kinds:
            return {}
        found, own = {}, inspect.get_annotations(kinds[0])
        for item in dataclasses.fields(kinds[0]):
            if item.name not in own:
                continue
            if item.default is not dataclasses.MISSING:
                default = item.default
            elif item.default_factory is not dataclasses.MISSING:
                default = item.default_factory()
            else:
                default = inspect.Parameter.empty
            keyword = inspect.Parameter.KEYWORD_ONLY
            found[item.name] = inspect.Parameter(item.name, keyword, default=default, annotation=item.type)
        return found


@dataclass(frozen=True)
class BenchmarkEntry:
    """A registered layer benchmark: ``make_cases(length, *, batch, device, dtype) -> {label: (module, kwargs)}``."""

    name: str
    make_cases: Callable[..., dict[str, tuple[Any, dict[str, Any]]]]
    plugin: PluginInfo
    description: str = ""


@dataclass(frozen=True)
class PartEntry:
    """A registered part kind: its type (a frozen :class:`attnreg.MaskPart` or :class:`attnreg.ScoreTerm`
    dataclass) and the plugin that added it."""

    kind: str
    part_type: type
    plugin: PluginInfo

    @property
    def family(self) -> str:
        """``"mask part"`` or ``"score term"``: where a pattern takes it (``mask=`` or ``score_terms=``)."""
        return "mask part" if issubclass(self.part_type, MaskPart) else "score term"

    @property
    def description(self) -> str:
        """The first line of the part type's docstring."""
        return _first_line(self.part_type)

    def keyword_parameters(self) -> dict[str, inspect.Parameter]:
        """The dataclass's fields as its constructor takes them, with their defaults and annotations."""
        return dict(inspect.signature(self.part_type).parameters)


@dataclass(frozen=True)
class Conflict:
    """A name claimed by more than one plugin: nobody wins, using it is an error naming them all."""

    kind: str
    name: str
    plugins: tuple[PluginInfo, ...]

    def error(self) -> ConflictError:
        owners = " and ".join(p.source if p.distribution else p.name for p in self.plugins)
        return ConflictError(
            f"{self.kind} {self.name!r} is claimed by more than one plugin: {owners}; "
            f"uninstall or disable one (e.g. {DISABLE_ENV}={self.plugins[-1].distribution or self.plugins[-1].name})"
        )


class PluginRegistrar:
    """What a hook receives as ``registrar``: adds one plugin's contributions, remembering which plugin added them.

    Each plugin gets its own registrar, so whatever it adds is attributed to it (``attnreg list``, conflicts).
    """

    def __init__(self, plugin: PluginInfo) -> None:
        self.plugin = plugin
        self.patterns: list[PatternEntry] = []
        self.builders: list[BuilderEntry] = []
        self.engines: list[Engine] = []
        self.benchmarks: list[BenchmarkEntry] = []
        self.parts: list[PartEntry] = []

    def add_pattern(self, name: str, factory: Callable[..., Pattern], *, description: str = "") -> None:
        """Register ``factory(**params) -> Pattern`` under ``name``."""
        _check_name("pattern name", name)
        if not callable(factory):
            raise PatternError(f"factory={factory!r} is not allowed for pattern {name!r}: expected a callable")
        self.patterns.append(PatternEntry(name, factory, self.plugin, description or _first_line(factory)))

    def add_builder(self, name: str, builder: Callable[..., Any], *, description: str = "") -> None:
        """Register ``builder(config, *, pretrained=None, **overrides) -> nn.Module`` under ``name``."""
        _check_name("builder name", name)
        if not callable(builder):
            raise PatternError(f"builder={builder!r} is not allowed for {name!r}: expected a callable")
        self.builders.append(BuilderEntry(name, builder, self.plugin, description or _first_line(builder)))

    def add_engine(self, engine: Engine) -> None:
        """Register an :class:`attnreg.Engine` instance."""
        if not isinstance(engine, Engine):
            raise PatternError(f"engine={engine!r} is not allowed: expected an attnreg.Engine instance")
        _check_name("engine name", engine.name)
        self.engines.append(engine)

    def add_benchmark(self, name: str, make_cases: Callable[..., Any], *, description: str = "") -> None:
        """Register a layer benchmark (see the ``attnreg_add_benchmarks`` hook) under ``name``."""
        _check_name("benchmark name", name)
        if not callable(make_cases):
            raise PatternError(f"make_cases={make_cases!r} is not allowed for {name!r}: expected a callable")
        self.benchmarks.append(BenchmarkEntry(name, make_cases, self.plugin, description or _first_line(make_cases)))

    def add_part(self, part_type: type) -> None:
        """Register a part kind: ``part_type`` is a frozen dataclass subclassing :class:`attnreg.MaskPart` or
        :class:`attnreg.ScoreTerm`, named in data by its ``kind``."""
        check_part_type(part_type)
        for entry in self.parts:
            if entry.kind == part_type.kind and entry.part_type is not part_type:
                raise PatternError(
                    f"part kind {part_type.kind!r} is added twice by plugin {self.plugin.name!r}: by "
                    f"{_qualified(entry.part_type)} and by {_qualified(part_type)}"
                )
        if all(entry.part_type is not part_type for entry in self.parts):
            self.parts.append(PartEntry(part_type.kind, part_type, self.plugin))

    def is_empty(self) -> bool:
        """Whether the plugin's hooks added nothing at all."""
        return not (self.patterns or self.builders or self.engines or self.benchmarks or self.parts)


@dataclass
class Registry:
    """Plugins and what they registered. Build with :meth:`load`; tables are rebuilt after every change."""

    manager: pluggy.PluginManager = field(default_factory=lambda: _new_manager())
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    patterns: dict[str, PatternEntry] = field(default_factory=dict)
    builders: dict[str, BuilderEntry] = field(default_factory=dict)
    engine_table: dict[str, Engine] = field(default_factory=dict)
    engine_plugins: dict[str, PluginInfo] = field(default_factory=dict)
    benchmarks: dict[str, BenchmarkEntry] = field(default_factory=dict)
    parts: dict[str, PartEntry] = field(default_factory=dict)
    conflicts: dict[tuple[str, str], Conflict] = field(default_factory=dict)
    plugin_conflicts: dict[tuple[str, str], Conflict] = field(default_factory=dict)
    disabled: dict[str, PluginInfo] = field(default_factory=dict)
    #: plugin name -> why it registered nothing (shown by ``attnreg list``; not a failure, even when strict)
    empty_plugins: dict[str, str] = field(default_factory=dict)
    strict: bool = False

    @classmethod
    def load(cls, *, entry_points: bool = True, strict: bool | None = None) -> Registry:
        """The core plugin plus every ``attnreg`` entry point not disabled by ``ATTNREG_DISABLE_PLUGINS``."""
        registry = cls(strict=_env_flag(STRICT_ENV) if strict is None else strict)
        from attnreg import _core_plugin

        registry.manager.register(_core_plugin, name=CORE_PLUGIN)
        registry.plugins[CORE_PLUGIN] = PluginInfo(CORE_PLUGIN)
        if entry_points:
            registry._load_entry_points()
        registry.rebuild()
        return registry

    # --- plugins ---------------------------------------------------------------------------------------

    def _load_entry_points(self) -> None:
        """Import every enabled entry point; one name that several distributions use loads none of them."""
        disabled = disabled_plugins()
        claims: list[tuple[str, PluginInfo, tuple[metadata.EntryPoint, PluginInfo]]] = []
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            info = PluginInfo(ep.name, dist.metadata["Name"] if dist else None, dist.version if dist else None)
            if info.name in disabled or (info.distribution or "") in disabled:
                self.disabled[ep.name] = info
                continue
            claims.append((ep.name, info, (ep, info)))
        for ep, info in self._claimed("plugin", claims, self.plugin_conflicts).values():
            try:
                plugin = ep.load()
            except Exception:
                self._fail(info, f"failed to import entry point {ep.value!r}")
                continue
            problems = self._hook_problems(plugin)
            if problems:
                self._fail(info, HOOK_PROBLEMS, "\n".join(problems))
                continue
            try:
                self.manager.register(plugin, name=ep.name)
                self.manager.check_pending()
            except Exception:
                self._fail(info, "was refused by pluggy")
                if self.manager.has_plugin(ep.name):
                    self.manager.unregister(name=ep.name)
                continue
            self.plugins[ep.name] = info

    def register_plugin(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object at run time (notebooks, tests); a name it shares with another is an error.

        A hook that raises is an error here, at once, and leaves nothing registered: the caller is right there.
        """
        name = name or getattr(plugin, "__name__", None) or f"plugin-{id(plugin):x}"
        if name in self.plugins:
            raise PatternError(f"name={name!r} is not allowed: a plugin of that name is already registered")
        problems = self._hook_problems(plugin)
        if problems:
            raise PluginError(f"plugin {name!r} {HOOK_PROBLEMS}:\n" + "\n".join(problems))
        self.manager.register(plugin, name=name)
        try:
            self.manager.check_pending()
        except Exception:
            self.manager.unregister(name=name)
            raise
        self.plugins[name] = PluginInfo(name)
        try:
            self.rebuild()
        except Exception:
            self.unregister_plugin(name)
            raise
        failure = self.plugins[name].error
        if failure:
            self.unregister_plugin(name)
            raise PluginError(f"plugin {name!r} {failure}")
        new = [c for c in self.conflicts.values() if any(p.name == name for p in c.plugins)]
        if new:
            self.unregister_plugin(name)
            raise new[0].error()
        return name

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin (registered at run time or from an entry point) and rebuild the tables."""
        if name == CORE_PLUGIN:
            raise PluginError(
                f"plugin {name!r} cannot be unregistered: it is attnreg's own (its engines and generic builders)"
            )
        if name not in self.plugins:
            removable = sorted(n for n in self.plugins if n != CORE_PLUGIN)
            raise UnknownNameError(
                f"unknown plugin {name!r}, nothing to unregister; {_did_you_mean(name, removable)}"
                f"plugins: {', '.join(removable) or '(none)'}"
            )
        self.manager.unregister(name=name)
        del self.plugins[name]
        self.rebuild()

    def failures(self) -> list[PluginInfo]:
        """Plugins that failed to import, have hook functions attnreg cannot call, or raised in a hook, with why."""
        return [p for p in self.plugins.values() if p.error]

    def _fail(self, info: PluginInfo, what: str, detail: str | None = None) -> None:
        """Record that plugin ``info`` ``what`` (and why: ``detail``, or the exception being handled)."""
        reason = detail or traceback.format_exc()
        failed = PluginInfo(info.name, info.distribution, info.version, f"{what}:\n{reason}")
        self.plugins[info.name] = failed
        if self.strict:
            raise PluginError(f"plugin {info.name!r} ({failed.source}) {what} [{STRICT_ENV}=1]:\n{reason}")

    def _hook_problems(self, plugin: object) -> list[str]:
        """Why attnreg could not call some of ``plugin``'s ``@hookimpl`` functions, one line each (none: all fine).

        pluggy only says "unknown hook" (and only when asked); here a misspelt hook name gets the closest hook names,
        and an argument that no hook passes is named beside the one that hooks do pass.
        """
        problems = []
        for attribute in dir(plugin):
            options = self.manager.parse_hookimpl_opts(plugin, attribute)
            if options is None:
                continue
            hook = options.get("specname") or attribute
            named = attribute if hook == attribute else f"{attribute} (specname={hook!r})"
            if hook in hookspecs.HOOKS:
                problems += _unpassed_arguments(named, hook, getattr(plugin, attribute))
            elif not options.get("optionalhook"):
                problems.append(_not_a_hook(named, hook))
        return problems

    # --- tables ----------------------------------------------------------------------------------------

    def rebuild(self) -> None:
        """Ask every loaded plugin's hooks again and recompute the tables, conflicts and empty plugins."""
        registrars: dict[str, PluginRegistrar] = {}
        for hook_name in hookspecs.HOOKS:
            hook = getattr(self.manager.hook, hook_name)
            for impl in sorted(hook.get_hookimpls(), key=lambda i: i.plugin_name):
                info = self.plugins.get(impl.plugin_name)
                if info is None or info.error:
                    continue
                registrar = registrars.setdefault(impl.plugin_name, PluginRegistrar(info))
                try:  # by the argument's name, `registrar` or its old name `registry` (pluggy warned about it)
                    impl.function(**dict.fromkeys(impl.argnames, registrar))
                except Exception:
                    self._fail(info, f"raised in its {hook_name} hook")
                    registrars.pop(impl.plugin_name)
        self._refuse_core_kinds(registrars)
        loaded = [r for name, r in sorted(registrars.items()) if not self.plugins[name].error]
        self.conflicts = dict(self.plugin_conflicts)
        self.patterns = self._claimed("pattern", [(e.name, e.plugin, e) for r in loaded for e in r.patterns])
        self.builders = self._claimed("builder", [(e.name, e.plugin, e) for r in loaded for e in r.builders])
        engines = self._claimed("engine", [(e.name, r.plugin, (e, r.plugin)) for r in loaded for e in r.engines])
        self.engine_table = {name: engine for name, (engine, _) in engines.items()}
        self.engine_plugins = {name: plugin for name, (_, plugin) in engines.items()}
        self.benchmarks = self._claimed("benchmark", [(e.name, e.plugin, e) for r in loaded for e in r.benchmarks])
        self.parts = self._claimed(PART_KIND, [(e.kind, e.plugin, e) for r in loaded for e in r.parts])
        self.empty_plugins = {
            name: self._why_empty(name)
            for name, info in sorted(self.plugins.items())
            if not info.error and (name not in registrars or registrars[name].is_empty())
        }

    def _refuse_core_kinds(self, registrars: dict[str, PluginRegistrar]) -> None:
        """Fail every plugin that claims a part kind of the core's: the core's kinds are never contested."""
        core = registrars.get(CORE_PLUGIN)
        core_types = {entry.kind: entry.part_type for entry in core.parts} if core else {}
        for name, registrar in sorted(registrars.items()):
            taken = [entry.kind for entry in registrar.parts if name != CORE_PLUGIN and entry.kind in core_types]
            if taken and not self.plugins[name].error:
                owners = ", ".join(f"{kind!r} ({_qualified(core_types[kind])})" for kind in taken)
                self._fail(
                    registrar.plugin,
                    "claims part kinds of attnreg's core",
                    f"{owners}: the core's kinds cannot be replaced; give the plugin's part another kind",
                )

    def _why_empty(self, name: str) -> str:
        """Why plugin ``name`` added nothing, as far as can be told: most often a hook function left unmarked."""
        plugin = self.manager.get_plugin(name)
        if self.manager.get_hookcallers(plugin):
            return "registered nothing: its hooks ran and added nothing"
        unmarked = [hook for hook in hookspecs.HOOKS if callable(getattr(plugin, hook, None))]
        if unmarked:
            verb = "is" if len(unmarked) == 1 else "are"
            return f"registered nothing: {', '.join(unmarked)} {verb} not marked @attnreg.hookimpl, so never called"
        return "registered nothing: no function is marked @attnreg.hookimpl (are its hook functions marked?)"

    def _claimed(
        self,
        kind: str,
        claims: Iterable[tuple[str, PluginInfo, Any]],
        conflicts: dict[tuple[str, str], Conflict] | None = None,
    ) -> dict[str, Any]:
        """``{name: item}`` for the names exactly one plugin claims, sorted; a name several claim goes to
        ``conflicts`` (default: ``self.conflicts``) naming them by source, and is fatal when strict."""
        conflicts = self.conflicts if conflicts is None else conflicts
        owners: dict[str, list[tuple[PluginInfo, Any]]] = {}
        for name, plugin, item in claims:
            owners.setdefault(name, []).append((plugin, item))
        table = {}
        for name, claimed in sorted(owners.items()):
            if len(claimed) > 1:
                plugins = tuple(sorted(dict.fromkeys(p for p, _ in claimed), key=lambda plugin: plugin.source))
                conflicts[(kind, name)] = Conflict(kind, name, plugins)
                if self.strict:
                    raise conflicts[(kind, name)].error()
                continue
            table[name] = claimed[0][1]
        return table

    # --- look-ups --------------------------------------------------------------------------------------

    def list_patterns(self) -> list[str]:
        """Every usable pattern name, sorted."""
        return sorted(self.patterns)

    def pattern_entry(self, name: str) -> PatternEntry:
        """The entry for ``name``, or an error listing close matches and the installed plugins."""
        return self._lookup("pattern", name, self.patterns)

    def get_pattern(self, name: str, **params: Any) -> Pattern:
        """The pattern ``name`` built with ``params`` (unknown parameters are an error)."""
        return self.pattern_entry(name).create(**params)

    def builder(self, name: str) -> BuilderEntry:
        """The model builder ``name``."""
        return self._lookup("builder", name, self.builders)

    def benchmark(self, name: str) -> BenchmarkEntry:
        """The layer benchmark ``name``."""
        return self._lookup("benchmark", name, self.benchmarks)

    def engines(self) -> list[Engine]:
        """Every registered engine."""
        return list(self.engine_table.values())

    def engine(self, name: str) -> Engine:
        """The engine ``name`` (what ``backend=`` and ``attnreg.backend`` take)."""
        return self._lookup("engine", name, self.engine_table)

    def part_entry(self, kind: str) -> PartEntry:
        """The registered part kind ``kind`` (its type and plugin)."""
        return self._lookup(PART_KIND, kind, self.parts)

    def part_types(self) -> dict[str, type]:
        """Every usable part kind and its type: the table ``Pattern.from_dict`` rebuilds parts from."""
        return {kind: entry.part_type for kind, entry in self.parts.items()}

    def part_kind_error(self, kind: str) -> Exception | None:
        """The error of using ``kind`` when several plugins claim it; None otherwise."""
        conflict = self.conflicts.get((PART_KIND, kind))
        return conflict.error() if conflict else None

    def _lookup(self, kind: str, name: str, table: dict[str, Any]) -> Any:
        if (kind, name) in self.conflicts:
            raise self.conflicts[(kind, name)].error()
        if name in table:
            return table[name]
        plugins = ", ".join(f"{p.name} ({p.source}{', FAILED' if p.error else ''})" for p in self.plugins.values())
        raise UnknownNameError(
            f"unknown {kind} {name!r}; {_did_you_mean(name, table)}known: {', '.join(sorted(table)) or '(none)'}; "
            f"installed plugins: {plugins}"
        )


def disabled_plugins() -> set[str]:
    """Plugin or distribution names switched off by ``ATTNREG_DISABLE_PLUGINS=a,b``."""
    return {part.strip() for part in os.environ.get(DISABLE_ENV, "").split(",") if part.strip()}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


def _check_name(what: str, name: object) -> None:
    if not (isinstance(name, str) and name.strip() and name == name.strip()):
        raise PatternError(f"{what}={name!r} is not allowed: expected a non-empty string without surrounding spaces")


#: What the registry calls a part kind in its tables, conflicts and errors.
PART_KIND = "part kind"

#: What ``attnreg list`` says of a plugin with ``@hookimpl`` functions that attnreg cannot call.
HOOK_PROBLEMS = "has hook functions attnreg cannot call"


def _not_a_hook(function: str, hook: str) -> str:
    """The problem of a ``@hookimpl`` function named after no hook, with the closest hook names."""
    hint = _did_you_mean(hook, hookspecs.HOOKS, cutoff=0.75) or f"the hooks are {', '.join(hookspecs.HOOKS)}"
    return f"{function} is marked @attnreg.hookimpl but attnreg has no hook {hook!r}; {hint.rstrip()}"


def _unpassed_arguments(function: str, hook: str, implementation: Callable[..., Any]) -> list[str]:
    """The problem of a hook function that requires an argument ``hook`` does not pass (none when it is fine)."""
    signature = inspect.signature(implementation)
    passed = inspect.signature(getattr(hookspecs, hook)).parameters
    unknown = [
        p.name
        for p in signature.parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in passed
    ]
    if not unknown:
        return []
    return [
        f"{function}({', '.join(signature.parameters)}) takes {', '.join(map(repr, unknown))}, which {hook} does "
        f"not pass: a hook function takes `registrar` (an attnreg.PluginRegistrar)"
    ]


def _did_you_mean(name: object, known: Iterable[str], *, cutoff: float = 0.5) -> str:
    """``"did you mean 'a' or 'b'? "`` with the names in ``known`` closest to ``name``, or ``""`` if none is close."""
    close = difflib.get_close_matches(str(name), list(known), n=3, cutoff=cutoff)
    return f"did you mean {' or '.join(map(repr, close))}? " if close else ""


def _qualified(part_type: type) -> str:
    return f"{part_type.__module__}.{part_type.__qualname__}"


def _first_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.splitlines()[0] if doc else ""
