"""Plugins registered at run time (notebooks, tests), name look-ups, and pattern parameters."""

from __future__ import annotations

import pytest

import attnreg
from attnreg import ConflictError, Pattern, PatternError, PluginError, UnknownNameError, Window
from attnreg.registry import Registry


def sliding(radius: int = 2, causal: bool = False) -> Pattern:
    """A sliding window of ``radius`` keys on each side (``causal``: none after the query)."""
    return Pattern(window=Window(radius, 0 if causal else radius))


class Patterns:
    """A plugin object adding patterns named after ``names``."""

    def __init__(self, *names: str) -> None:
        self.names = names

    @attnreg.hookimpl
    def attnreg_add_patterns(self, registry) -> None:
        for name in self.names:
            registry.add_pattern(name, sliding)


class RaisesInHook:
    @attnreg.hookimpl
    def attnreg_add_patterns(self, registry) -> None:
        raise RuntimeError("boom in the hook")


class ReturnsNotAPattern:
    @attnreg.hookimpl
    def attnreg_add_patterns(self, registry) -> None:
        registry.add_pattern("not-a-pattern", lambda: {"window": 3})


@pytest.fixture
def registry() -> Registry:
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


@pytest.mark.parametrize("name", ["nobody", "attnreg.core"])
def test_unregistering_an_unknown_or_the_core_plugin_is_an_error(registry, name):
    registry.register_plugin(Patterns("slide"), "mine")
    with pytest.raises(PatternError, match=f"name='{name}' is not allowed: registered plugins are mine"):
        registry.unregister_plugin(name)


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
    assert "installed plugins: attnreg.core (attnreg (core)), mine (registered at run time)" in message


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


def test_the_core_engines_arrive_through_the_core_plugin(registry):
    assert "reference" in {engine.name for engine in registry.engines()}
    assert registry.engine_plugins["reference"].name == "attnreg.core"
