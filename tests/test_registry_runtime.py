"""Plugins registered at run time (notebooks, tests), their hooks, name look-ups, pattern parameters and errors."""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import attnreg
from attnreg import AttnregError, ConflictError, Pattern, PatternError, PluginError, UnknownNameError, Window
from attnreg.pattern.predicates import CORE_PART_TYPES, Band, part_kinds
from attnreg.registry import Registry


def sliding(radius: int = 2, causal: bool = False) -> Pattern:
    """A sliding window of ``radius`` keys on each side (``causal``: none after the query)."""
    return Pattern(window=Window(radius, 0 if causal else radius))


class Patterns:
    """A plugin object adding patterns named after ``names``."""

    def __init__(self, *names: str) -> None:
        self.names = names

    @attnreg.hookimpl
    def attnreg_add_patterns(self, registrar) -> None:
        for name in self.names:
            registrar.add_pattern(name, sliding)


@dataclass(frozen=True)
class EvenKeys(attnreg.MaskPart):
    """Keys at even positions (a test part with the default, all-partial coverage)."""

    kind: ClassVar[str] = "test-even-keys"
    offset: int = 0

    def allowed(self, i, j, length):
        return ((j + self.offset) % 2 == 0) & torch.ones_like(i, dtype=torch.bool)


@dataclass(frozen=True)
class OtherEvenKeys(EvenKeys):
    """Another type claiming the same kind."""


@dataclass(frozen=True)
class MyBand(Band):
    """A plugin's type claiming a kind of the core's."""


class Parts:
    """A plugin object adding part types."""

    def __init__(self, *part_types: type) -> None:
        self.part_types = part_types

    @attnreg.hookimpl
    def attnreg_add_parts(self, registrar) -> None:
        for part_type in self.part_types:
            registrar.add_part(part_type)


class RaisesInHook:
    @attnreg.hookimpl
    def attnreg_add_patterns(self, registrar) -> None:
        raise RuntimeError("boom in the hook")


class ReturnsNotAPattern:
    @attnreg.hookimpl
    def attnreg_add_patterns(self, registrar) -> None:
        registrar.add_pattern("not-a-pattern", lambda: {"window": 3})


class MisspeltHook:
    @attnreg.hookimpl
    def attnreg_add_pattern(self, registrar) -> None:
        registrar.add_pattern("never", sliding)


class UnknownArgument:
    @attnreg.hookimpl
    def attnreg_add_patterns(self, reg) -> None:
        reg.add_pattern("never", sliding)


class OldArgumentName:
    @attnreg.hookimpl
    def attnreg_add_patterns(self, registry) -> None:
        registry.add_pattern("old-style", sliding)


class UnmarkedHook:
    def attnreg_add_patterns(self, registrar) -> None:
        registrar.add_pattern("never", sliding)


class AddsNothing:
    @attnreg.hookimpl
    def attnreg_add_patterns(self, registrar) -> None:
        pass


class OptionalUnknownHook:
    @attnreg.hookimpl(optionalhook=True)
    def attnreg_add_something_newer(self, registrar) -> None:
        pass


@pytest.fixture
def registry() -> Registry:
    """A registry without any plugin, not even the core's: the tests see only what they register."""
    return Registry(strict=False)


@pytest.fixture
def core_registry() -> Registry:
    """A registry with the core plugin only (no entry points)."""
    return Registry.load(entry_points=False, strict=False)


def test_a_registered_plugin_adds_its_patterns(registry):
    registry.register_plugin(Patterns("slide"), "mine")
    assert registry.list_patterns() == ["slide"]
    assert registry.get_pattern("slide", radius=3) == Pattern(window=Window(3, 3))
    assert registry.pattern_entry("slide").plugin.source == "registered at run time"
    assert registry.pattern_entry("slide").description == sliding.__doc__.splitlines()[0]


def test_unregistering_removes_its_patterns(registry):
    registry.register_plugin(Patterns("slide"), "mine")
    registry.unregister_plugin("mine")
    assert registry.list_patterns() == []
    with pytest.raises(UnknownNameError):
        registry.get_pattern("slide")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nobody", "unknown plugin 'nobody', nothing to unregister; plugins: mine, other"),
        ("mien", "unknown plugin 'mien', nothing to unregister; did you mean 'mine'? plugins: mine, other"),
    ],
)
def test_unregistering_an_unknown_plugin_is_an_unknown_name_error_listing_the_plugins(registry, name, message):
    registry.register_plugin(Patterns("slide"), "mine")
    registry.register_plugin(Patterns("glide"), "other")
    with pytest.raises(UnknownNameError) as error:
        registry.unregister_plugin(name)
    assert isinstance(error.value, KeyError)
    assert str(error.value) == message


def test_unregistering_the_core_plugin_is_a_plugin_error(core_registry):
    with pytest.raises(PluginError, match=r"plugin 'attnreg\.core' cannot be unregistered: it is attnreg's own"):
        core_registry.unregister_plugin("attnreg.core")
    assert "reference" in core_registry.engine_table


def test_registering_a_second_plugin_of_one_name_is_an_error(registry):
    registry.register_plugin(Patterns("one"), "mine")
    with pytest.raises(PatternError, match="already registered"):
        registry.register_plugin(Patterns("two"), "mine")
    assert registry.list_patterns() == ["one"]


def test_a_run_time_plugin_claiming_a_taken_name_is_refused_and_rolled_back(registry):
    registry.register_plugin(Patterns("slide"), "first")
    with pytest.raises(ConflictError, match="'slide' is claimed by more than one plugin: first and second"):
        registry.register_plugin(Patterns("slide", "other"), "second")
    assert registry.list_patterns() == ["slide"]
    assert "second" not in registry.plugins
    assert not registry.conflicts


def test_a_run_time_plugin_whose_hook_raises_is_an_error_and_can_be_registered_again_fixed(registry):
    with pytest.raises(PluginError, match="boom in the hook"):
        registry.register_plugin(RaisesInHook(), "flaky")
    assert "flaky" not in registry.plugins
    registry.register_plugin(Patterns("slide"), "flaky")
    assert registry.list_patterns() == ["slide"]


@pytest.mark.parametrize(
    ("plugin", "problem"),
    [
        (
            MisspeltHook(),
            "attnreg_add_pattern is marked @attnreg.hookimpl but attnreg has no hook 'attnreg_add_pattern'; "
            "did you mean 'attnreg_add_patterns' or 'attnreg_add_parts'?",
        ),
        (
            UnknownArgument(),
            "attnreg_add_patterns(reg) takes 'reg', which attnreg_add_patterns does not pass: "
            "a hook function takes `registrar` (an attnreg.PluginRegistrar)",
        ),
    ],
    ids=["misspelt-hook-name", "unknown-argument"],
)
def test_a_hook_function_attnreg_cannot_call_is_an_error_naming_it_and_registers_nothing(registry, plugin, problem):
    with pytest.raises(PluginError) as error:
        registry.register_plugin(plugin, "typo")
    assert str(error.value) == f"plugin 'typo' has hook functions attnreg cannot call:\n{problem}"
    assert "typo" not in registry.plugins
    assert not registry.manager.has_plugin("typo")


def test_a_misspelt_hook_name_far_from_every_hook_lists_the_hooks(registry):
    class FarOff:
        @attnreg.hookimpl
        def register_my_patterns(self, registrar) -> None:
            pass

    with pytest.raises(PluginError, match="has no hook 'register_my_patterns'; the hooks are attnreg_add_patterns, "):
        registry.register_plugin(FarOff(), "far")


def test_an_unknown_hook_marked_optional_is_allowed(registry):
    registry.register_plugin(OptionalUnknownHook(), "future")
    assert "future" in registry.plugins


def test_the_old_hook_argument_name_registry_still_works_with_a_deprecation_warning(registry):
    with pytest.warns(DeprecationWarning, match="rename `registry` to `registrar`"):
        registry.register_plugin(OldArgumentName(), "old")
    assert registry.get_pattern("old-style", radius=1) == Pattern(window=Window(1, 1))


@pytest.mark.parametrize(
    ("plugin", "why"),
    [
        (
            UnmarkedHook(),
            "registered nothing: attnreg_add_patterns is not marked @attnreg.hookimpl, so never called",
        ),
        (AddsNothing(), "registered nothing: its hooks ran and added nothing"),
        (object(), "registered nothing: no function is marked @attnreg.hookimpl (are its hook functions marked?)"),
    ],
    ids=["unmarked-hook", "hook-adds-nothing", "no-hooks"],
)
def test_a_plugin_that_registers_nothing_is_noted_with_the_likely_reason(registry, plugin, why):
    registry.register_plugin(plugin, "idle")
    assert registry.empty_plugins == {"idle": why}
    registry.unregister_plugin("idle")
    assert registry.empty_plugins == {}


def test_a_plugin_that_registers_something_is_not_noted_as_empty(registry):
    registry.register_plugin(Patterns("slide"), "mine")
    assert registry.empty_plugins == {}


def test_a_factory_that_returns_no_pattern_is_an_error_naming_the_plugin(registry):
    registry.register_plugin(ReturnsNotAPattern(), "sloppy")
    with pytest.raises(PluginError, match="pattern 'not-a-pattern' from registered at run time returned dict"):
        registry.get_pattern("not-a-pattern")


def test_an_unknown_name_lists_close_matches_and_the_installed_plugins(registry):
    registry.register_plugin(Patterns("sliding-window", "sliding-causal", "dilated"), "mine")
    with pytest.raises(UnknownNameError) as error:
        registry.get_pattern("sliding-windw")
    message = str(error.value)
    assert isinstance(error.value, KeyError)
    assert "unknown pattern 'sliding-windw'" in message
    assert "did you mean 'sliding-window'" in message
    assert "known: dilated, sliding-causal, sliding-window" in message
    assert "installed plugins: mine (registered at run time)" in message


def test_an_unknown_name_without_close_matches_still_lists_the_known_ones(registry):
    registry.register_plugin(Patterns("dilated"), "mine")
    with pytest.raises(UnknownNameError, match="unknown pattern 'zzz'; known: dilated;"):
        registry.get_pattern("zzz")


def test_an_unknown_pattern_parameter_is_an_error_listing_the_allowed_ones(registry):
    registry.register_plugin(Patterns("slide"), "mine")
    with pytest.raises(
        PatternError, match=r"pattern 'slide' got unknown parameter\(s\) 'radus'; allowed: radius, causal"
    ):
        registry.get_pattern("slide", radus=3)


def test_pattern_parameters_come_from_the_factory_signature(registry):
    registry.register_plugin(Patterns("slide"), "mine")
    assert registry.pattern_entry("slide").parameters() == {"radius": 2, "causal": False}
    assert [str(p) for p in registry.pattern_entry("slide").keyword_parameters().values()] == [
        "radius: 'int' = 2",  # this module's annotations are strings (``from __future__ import annotations``)
        "causal: 'bool' = False",
    ]


@pytest.mark.parametrize(
    ("method", "args", "named"),
    [
        ("add_pattern", (" padded ", sliding), "pattern name=' padded '"),
        ("add_pattern", ("", sliding), "pattern name=''"),
        ("add_pattern", ("fine", "not callable"), "factory='not callable'"),
        ("add_builder", ("b", 3), "builder=3"),
        ("add_engine", ("reference",), "engine='reference'"),
        ("add_benchmark", ("bench", None), "make_cases=None"),
    ],
)
def test_registrar_rejects_bad_contributions(method, args, named):
    from attnreg.registry import PluginInfo, PluginRegistrar

    with pytest.raises(PatternError, match="is not allowed") as error:
        getattr(PluginRegistrar(PluginInfo("p")), method)(*args)
    assert named in str(error.value)


def test_the_module_level_functions_use_the_process_wide_registry():
    name = attnreg.register_plugin(Patterns("test-runtime-slide"), "test-runtime-plugin")
    try:
        assert "test-runtime-slide" in attnreg.list_patterns()
        assert attnreg.get_pattern("test-runtime-slide", causal=True) == Pattern(window=Window(2, 0))
    finally:
        attnreg.unregister_plugin(name)
    assert "test-runtime-slide" not in attnreg.list_patterns()


def test_a_registered_plugin_adds_its_part_kinds(registry):
    registry.register_plugin(Parts(EvenKeys), "mine")
    entry = registry.part_entry("test-even-keys")
    assert (entry.part_type, entry.family, entry.plugin.name) == (EvenKeys, "mask part", "mine")
    assert registry.part_types() == {"test-even-keys": EvenKeys}
    assert registry.empty_plugins == {}
    registry.unregister_plugin("mine")
    assert registry.part_types() == {}


def test_the_core_part_kinds_arrive_through_the_core_plugin(core_registry):
    assert core_registry.part_types() == {part_type.kind: part_type for part_type in CORE_PART_TYPES}
    assert {"band", "any", "all", "alibi"} <= set(core_registry.part_types())
    assert {entry.plugin.name for entry in core_registry.parts.values()} == {"attnreg.core"}


def test_the_process_wide_registry_is_where_patterns_find_their_part_kinds():
    name = attnreg.register_plugin(Parts(EvenKeys), "test-runtime-parts")
    try:
        assert part_kinds() == attnreg.get_registry().part_types()
        pattern = Pattern(mask=EvenKeys(1) | Band(1, 0))
        assert Pattern.from_dict(pattern.to_dict()) == pattern
        assert Pattern.from_json(pattern.to_json()) == pattern
    finally:
        attnreg.unregister_plugin(name)
    assert "test-even-keys" not in part_kinds()
    with pytest.raises(PatternError, match=r"part kind='test-even-keys' is not allowed: known MaskPart kinds are"):
        Pattern.from_dict(pattern.to_dict())


def test_a_plugin_part_runs_on_the_blocked_engine_as_on_the_reference():
    pattern = Pattern(mask=EvenKeys() | Band(2, 0))
    q, k, v = (torch.randn(2, 2, 19, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    outputs = {}
    for backend in ("blocked", "reference"):
        out = attnreg.attention(q, k, v, pattern, backend=backend)
        outputs[backend] = (out, *torch.autograd.grad(out.square().sum(), (q, k, v)))
    for blocked, reference in zip(outputs["blocked"], outputs["reference"], strict=True):
        torch.testing.assert_close(blocked, reference)


def test_a_run_time_plugin_claiming_a_taken_part_kind_is_refused_naming_both(registry):
    registry.register_plugin(Parts(EvenKeys), "first")
    with pytest.raises(
        ConflictError, match="part kind 'test-even-keys' is claimed by more than one plugin: first and second"
    ):
        registry.register_plugin(Parts(OtherEvenKeys), "second")
    assert registry.part_types() == {"test-even-keys": EvenKeys}


def test_a_part_kind_two_plugins_claim_is_neither_s_and_using_it_names_both(registry):
    registry.register_plugin(Parts(EvenKeys), "first")
    registry.plugins["first"] = attnreg.registry.PluginInfo("first", "attnreg-first", "1.0")
    registry.manager.register(Parts(OtherEvenKeys), name="second")
    registry.plugins["second"] = attnreg.registry.PluginInfo("second", "attnreg-second", "2.0")
    registry.rebuild()
    assert registry.part_types() == {}
    message = "part kind 'test-even-keys' is claimed by more than one plugin: attnreg-first 1.0 and attnreg-second 2.0"
    with pytest.raises(ConflictError, match=message):
        registry.part_entry("test-even-keys")
    assert str(registry.part_kind_error("test-even-keys")).startswith(message)
    assert registry.part_kind_error("band") is None


def test_a_plugin_claiming_a_core_part_kind_fails_naming_the_kind_and_the_core_keeps_it(core_registry):
    with pytest.raises(PluginError) as error:
        core_registry.register_plugin(Parts(MyBand), "usurper")
    assert str(error.value) == (
        "plugin 'usurper' claims part kinds of attnreg's core:\n'band' (attnreg.pattern.predicates.Band): the core's "
        "kinds cannot be replaced; give the plugin's part another kind"
    )
    assert "usurper" not in core_registry.plugins
    assert core_registry.part_entry("band").part_type is Band


def test_one_plugin_adding_two_types_of_one_kind_is_an_error_naming_both():
    from attnreg.registry import PluginInfo, PluginRegistrar

    registrar = PluginRegistrar(PluginInfo("p"))
    registrar.add_part(EvenKeys)
    registrar.add_part(EvenKeys)
    with pytest.raises(
        PatternError,
        match=r"part kind 'test-even-keys' is added twice by plugin 'p': by .*\.EvenKeys "
        r"and by .*\.OtherEvenKeys",
    ):
        registrar.add_part(OtherEvenKeys)
    assert [entry.part_type for entry in registrar.parts] == [EvenKeys]


class NotAPart:
    kind = "not-a-part"


@dataclass
class Mutable(attnreg.MaskPart):
    kind: ClassVar[str] = "mutable"


@dataclass(frozen=True)
class Nameless(attnreg.MaskPart):
    pass


@pytest.mark.parametrize(
    ("part_type", "named"),
    [
        (NotAPart, "expected a subclass of attnreg.MaskPart or attnreg.ScoreTerm"),
        (Mutable, "part_type='Mutable' is not allowed: expected a frozen dataclass"),
        (Nameless, "Nameless.kind='' is not allowed: expected a non-empty name"),
    ],
)
def test_registrar_rejects_a_part_type_that_is_no_frozen_part_dataclass_with_a_kind(part_type, named):
    from attnreg.registry import PluginInfo, PluginRegistrar

    with pytest.raises(PatternError, match="is not allowed") as error:
        PluginRegistrar(PluginInfo("p")).add_part(part_type)
    assert named in str(error.value)


def test_the_core_engines_arrive_through_the_core_plugin(core_registry):
    assert "reference" in {engine.name for engine in core_registry.engines()}
    assert core_registry.engine_plugins["reference"].name == "attnreg.core"


def _error_classes() -> list[type]:
    """Every class named ``*Error`` defined anywhere in the attnreg package (found in the source, then imported)."""
    package = Path(attnreg.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = [node.name for node in tree.body if isinstance(node, ast.ClassDef) and node.name.endswith("Error")]
        if names:
            module = ".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__")
            found += [getattr(importlib.import_module(module), name) for name in names]
    return found


@pytest.mark.parametrize("error", _error_classes(), ids=lambda error: error.__name__)
def test_every_attnreg_error_is_an_attnreg_error(error):
    assert issubclass(error, AttnregError)


def test_the_error_classes_are_found_and_keep_their_builtin_bases():
    errors = {error.__name__: error for error in _error_classes()}
    expected = {"PatternError", "PluginError", "ConflictError", "UnknownNameError", "BackendUnavailableError"}
    assert expected <= set(errors)
    assert issubclass(errors["PatternError"], ValueError)
    assert issubclass(errors["ConflictError"], ValueError)
    assert issubclass(errors["BackendUnavailableError"], ValueError)
    assert issubclass(errors["UnknownNameError"], KeyError)
    assert issubclass(errors["PluginError"], RuntimeError)


def test_the_validation_helpers_are_public_and_the_old_private_module_still_imports():
    from attnreg import _validation, validation

    assert attnreg.validation is validation
    for name in validation.__all__:
        assert getattr(_validation, name) is getattr(validation, name)
    with pytest.raises(PatternError, match=r"radius=-1 is not allowed: expected an int >= 0"):
        validation.require_int("radius", -1, minimum=0)
