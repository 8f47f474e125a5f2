"""Plugins from real distributions found through their ``attnreg`` entry points: isolation, conflicts, switches.

Each test writes small distributions (a module, ``METADATA``, ``entry_points.txt``) into a temporary folder, puts it
on the path and loads a fresh registry, exactly as an installed plugin is found.
"""

from __future__ import annotations

import pytest

from attnreg import ConflictError, Pattern, PluginError, Window

WORKING = """
    import attnreg

    @attnreg.hookimpl
    def attnreg_add_patterns(registrar):
        registrar.add_pattern("{name}", lambda radius=1: attnreg.Pattern(window=attnreg.Window(radius, radius)))
"""
BROKEN_IMPORT = """
    import attnreg
    import a_module_that_does_not_exist
"""
RAISES_IN_HOOK = """
    import attnreg

    @attnreg.hookimpl
    def attnreg_add_patterns(registrar):
        raise RuntimeError("boom in the hook")
"""
MISSPELT_HOOK = """
    import attnreg

    @attnreg.hookimpl
    def attnreg_add_pattern(registrar):
        registrar.add_pattern("never", lambda: attnreg.Pattern())
"""
UNMARKED_HOOK = """
    import attnreg

    def attnreg_add_patterns(registrar):
        registrar.add_pattern("never", lambda: attnreg.Pattern())
"""

PART = """
    import dataclasses
    import typing

    import torch

    import attnreg


    @dataclasses.dataclass(frozen=True)
    class EveryKth(attnreg.MaskPart):
        '''Keys j mod k == 0 (a test part, default coverage).'''

        kind: typing.ClassVar[str] = "{kind}"
        k: int = 3

        def allowed(self, i, j, length):
            return (j % self.k == 0) & torch.ones_like(i, dtype=torch.bool)


    @attnreg.hookimpl
    def attnreg_add_parts(registrar):
        registrar.add_part(EveryKth)
"""


def plugin_patterns(registry):
    """The pattern names the test's distributions registered (the core's own gallery left out)."""
    return [name for name in registry.list_patterns() if registry.pattern_entry(name).plugin.name != "attnreg.core"]


def working(site, dist, module, pattern, write_distribution, version="1.0"):
    source = WORKING.replace("{name}", pattern)
    return write_distribution(site, dist, version, {module: source}, {module: module})


def test_a_plugin_distribution_adds_its_pattern_with_its_distribution_and_version(
    tmp_path, load_registry, write_distribution
):
    site = working(tmp_path / "site", "attnreg-ringo", "ringo_plugin", "ringo", write_distribution, version="2.5.1")
    registry = load_registry(site)
    assert plugin_patterns(registry) == ["ringo"]
    assert registry.get_pattern("ringo", radius=4) == Pattern(window=Window(4, 4))
    plugin = registry.pattern_entry("ringo").plugin
    assert (plugin.name, plugin.distribution, plugin.version, plugin.source) == (
        "ringo_plugin",
        "attnreg-ringo",
        "2.5.1",
        "attnreg-ringo 2.5.1",
    )


@pytest.mark.parametrize(
    ("source", "what", "detail"),
    [
        (BROKEN_IMPORT, "failed to import entry point 'broken_plugin'", "ModuleNotFoundError"),
        (RAISES_IN_HOOK, "raised in its attnreg_add_patterns hook", "RuntimeError: boom in the hook"),
    ],
    ids=["import-error", "hook-raises"],
)
def test_a_failing_plugin_is_kept_aside_with_its_traceback_and_the_others_load(
    tmp_path, load_registry, write_distribution, source, what, detail
):
    site = working(tmp_path / "site", "attnreg-ringo", "ringo_plugin", "ringo", write_distribution)
    write_distribution(site, "attnreg-broken", "0.3", {"broken_plugin": source}, {"broken_plugin": "broken_plugin"})
    registry = load_registry(site)
    assert plugin_patterns(registry) == ["ringo"]
    (failure,) = registry.failures()
    assert (failure.name, failure.source) == ("broken_plugin", "attnreg-broken 0.3")
    assert failure.error.startswith(what)
    assert "Traceback (most recent call last)" in failure.error
    assert detail in failure.error


def test_a_plugin_with_a_misspelt_hook_name_is_kept_aside_naming_the_function_and_the_closest_hook(
    tmp_path, load_registry, write_distribution
):
    site = working(tmp_path / "site", "attnreg-ringo", "ringo_plugin", "ringo", write_distribution)
    write_distribution(site, "attnreg-typo", "0.3", {"typo_plugin": MISSPELT_HOOK}, {"typo_plugin": "typo_plugin"})
    registry = load_registry(site)
    assert plugin_patterns(registry) == ["ringo"]
    (failure,) = registry.failures()
    assert (failure.name, failure.source) == ("typo_plugin", "attnreg-typo 0.3")
    assert failure.error == (
        "has hook functions attnreg cannot call:\n"
        "attnreg_add_pattern is marked @attnreg.hookimpl but attnreg has no hook 'attnreg_add_pattern'; "
        "did you mean 'attnreg_add_patterns' or 'attnreg_add_parts'?"
    )
    assert not registry.manager.has_plugin("typo_plugin")


def test_a_plugin_that_registers_nothing_is_noted_beside_the_working_ones(tmp_path, load_registry, write_distribution):
    site = working(tmp_path / "site", "attnreg-ringo", "ringo_plugin", "ringo", write_distribution)
    write_distribution(site, "attnreg-idle", "1.0", {"idle_plugin": UNMARKED_HOOK}, {"idle_plugin": "idle_plugin"})
    registry = load_registry(site, env={"ATTNREG_STRICT": "1"})
    assert plugin_patterns(registry) == ["ringo"]
    assert not registry.failures()
    assert registry.empty_plugins == {
        "idle_plugin": "registered nothing: attnreg_add_patterns is not marked @attnreg.hookimpl, so never called"
    }


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (BROKEN_IMPORT, "failed to import"),
        (RAISES_IN_HOOK, "raised in its attnreg_add_patterns hook"),
        (MISSPELT_HOOK, "has hook functions attnreg cannot call (?s:.)*did you mean 'attnreg_add_patterns'"),
    ],
    ids=["import-error", "hook-raises", "misspelt-hook"],
)
def test_strict_mode_makes_a_failing_plugin_fatal(tmp_path, load_registry, write_distribution, source, message):
    site = write_distribution(
        tmp_path / "site", "attnreg-broken", "0.3", {"broken_plugin": source}, {"broken_plugin": "broken_plugin"}
    )
    with pytest.raises(PluginError, match=message) as error:
        load_registry(site, env={"ATTNREG_STRICT": "1"})
    assert "'broken_plugin' (attnreg-broken 0.3)" in str(error.value)
    assert "ATTNREG_STRICT=1" in str(error.value)


@pytest.mark.parametrize("value", ["0", "", "false"])
def test_strict_mode_is_off_for_false_values(tmp_path, load_registry, write_distribution, value):
    site = write_distribution(
        tmp_path / "site", "attnreg-broken", "0.3", {"broken_plugin": BROKEN_IMPORT}, {"broken_plugin": "broken_plugin"}
    )
    assert len(load_registry(site, env={"ATTNREG_STRICT": value}).failures()) == 1


@pytest.mark.parametrize("order", ["a-first", "b-first"])
def test_two_distributions_claiming_one_name_is_an_error_naming_both(
    tmp_path, load_registry, write_distribution, order
):
    site_a = working(tmp_path / "a", "attnreg-alpha", "alpha_plugin", "shared", write_distribution, version="1.0")
    site_b = working(tmp_path / "b", "attnreg-beta", "beta_plugin", "shared", write_distribution, version="2.0")
    working(tmp_path / "a", "attnreg-alpha-extra", "alpha_extra", "alpha-only", write_distribution)
    registry = load_registry(*([site_a, site_b] if order == "a-first" else [site_b, site_a]))
    assert plugin_patterns(registry) == ["alpha-only"]
    with pytest.raises(ConflictError) as error:
        registry.get_pattern("shared")
    assert str(error.value).startswith(
        "pattern 'shared' is claimed by more than one plugin: attnreg-alpha 1.0 and attnreg-beta 2.0"
    )


def test_strict_mode_makes_a_conflict_fatal(tmp_path, load_registry, write_distribution):
    site = working(tmp_path / "site", "attnreg-alpha", "alpha_plugin", "shared", write_distribution)
    working(site, "attnreg-beta", "beta_plugin", "shared", write_distribution)
    with pytest.raises(ConflictError, match=r"attnreg-alpha 1\.0 and attnreg-beta 1\.0"):
        load_registry(site, env={"ATTNREG_STRICT": "1"})


@pytest.mark.parametrize("switch", ["beta_plugin", "attnreg-beta", " beta_plugin , other"])
def test_disabling_a_plugin_by_entry_point_or_distribution_name(tmp_path, load_registry, write_distribution, switch):
    site = working(tmp_path / "site", "attnreg-alpha", "alpha_plugin", "shared", write_distribution)
    working(site, "attnreg-beta", "beta_plugin", "shared", write_distribution)
    write_distribution(
        site, "attnreg-broken", "0.3", {"broken_plugin": BROKEN_IMPORT}, {"broken_plugin": "broken_plugin"}
    )
    registry = load_registry(site, env={"ATTNREG_DISABLE_PLUGINS": f"{switch},broken_plugin"})
    assert registry.pattern_entry("shared").plugin.distribution == "attnreg-alpha"
    assert not registry.conflicts
    assert not registry.failures()
    assert "beta_plugin" not in registry.plugins


def test_a_disabled_broken_plugin_is_not_even_imported_in_strict_mode(tmp_path, load_registry, write_distribution):
    site = write_distribution(
        tmp_path / "site", "attnreg-broken", "0.3", {"broken_plugin": BROKEN_IMPORT}, {"broken_plugin": "broken_plugin"}
    )
    registry = load_registry(site, env={"ATTNREG_STRICT": "1", "ATTNREG_DISABLE_PLUGINS": "broken_plugin"})
    assert not registry.failures()


def two_distributions_with_one_entry_point_name(site, write_distribution):
    for dist, pattern in [("attnreg-one", "pattern-one"), ("attnreg-two", "pattern-two")]:
        module = dist.replace("-", "_")
        source = WORKING.replace("{name}", pattern)
        write_distribution(site / dist, dist, "1.0", {module: source}, {"plugin": module})
    return site / "attnreg-one", site / "attnreg-two"


def test_one_entry_point_name_in_two_distributions_is_a_conflict_naming_both(
    tmp_path, load_registry, write_distribution
):
    registry = load_registry(*two_distributions_with_one_entry_point_name(tmp_path, write_distribution))
    assert plugin_patterns(registry) == []
    assert not registry.failures()
    (conflict,) = registry.conflicts.values()
    assert str(conflict.error()).startswith(
        "plugin 'plugin' is claimed by more than one plugin: attnreg-one 1.0 and attnreg-two 1.0"
    )


def test_disabling_one_of_two_distributions_sharing_an_entry_point_name_loads_the_other(
    tmp_path, load_registry, write_distribution
):
    sites = two_distributions_with_one_entry_point_name(tmp_path, write_distribution)
    registry = load_registry(*sites, env={"ATTNREG_DISABLE_PLUGINS": "attnreg-two"})
    assert plugin_patterns(registry) == ["pattern-one"]
    assert not registry.conflicts


def part_distribution(site, dist, module, kind, write_distribution, version="1.0"):
    return write_distribution(site, dist, version, {module: PART.replace("{kind}", kind)}, {module: module})


def test_a_plugin_distribution_adds_a_part_kind_that_patterns_data_and_engines_use(
    tmp_path, run_attnreg, write_distribution
):
    site = part_distribution(tmp_path / "site", "attnreg-kth", "kth_plugin", "every-kth", write_distribution, "0.2")
    used = run_attnreg(
        sites=[site],
        code="""
            import torch, attnreg
            from kth_plugin import EveryKth

            entry = attnreg.get_registry().part_entry("every-kth")
            assert (entry.part_type, entry.plugin.source) == (EveryKth, "attnreg-kth 0.2"), entry
            pattern = attnreg.Pattern(mask=EveryKth(4) | attnreg.Band(1, 0))
            assert attnreg.Pattern.from_json(pattern.to_json()) == pattern
            q, k, v = (torch.randn(1, 2, 13, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
            out = {b: attnreg.attention(q, k, v, pattern, backend=b) for b in ("blocked", "reference")}
            torch.testing.assert_close(out["blocked"], out["reference"])
            grads = {b: torch.autograd.grad(o.sum(), (q, k, v)) for b, o in out.items()}
            torch.testing.assert_close(grads["blocked"], grads["reference"])
            print("ok")
        """,
    )
    assert used.returncode == 0 and used.stdout == "ok\n", used.stdout + used.stderr
    listed = run_attnreg("list", sites=[site])
    row = next(line.split(maxsplit=4) for line in listed.stdout.splitlines() if line.startswith("  every-kth"))
    assert row == [
        "every-kth",
        "kth_plugin",
        "attnreg-kth",
        "0.2",
        "mask part EveryKth(k: int = 3): Keys j mod k == 0 (a test part, default coverage).",
    ]


def test_two_distributions_claiming_one_part_kind_is_an_error_naming_both(tmp_path, load_registry, write_distribution):
    site = part_distribution(tmp_path / "site", "attnreg-alpha", "alpha_plugin", "shared-kind", write_distribution)
    part_distribution(site, "attnreg-beta", "beta_plugin", "shared-kind", write_distribution, "2.0")
    registry = load_registry(site)
    assert "shared-kind" not in registry.part_types()
    message = "part kind 'shared-kind' is claimed by more than one plugin: attnreg-alpha 1.0 and attnreg-beta 2.0"
    with pytest.raises(ConflictError, match=message):
        registry.part_entry("shared-kind")
    assert str(registry.part_kind_error("shared-kind")).startswith(message)


def test_a_distribution_claiming_a_core_part_kind_is_kept_aside_naming_the_kind(
    tmp_path, load_registry, write_distribution
):
    site = part_distribution(tmp_path / "site", "attnreg-usurper", "usurper", "band", write_distribution)
    working(site, "attnreg-ringo", "ringo_plugin", "ringo", write_distribution)
    registry = load_registry(site)
    (failure,) = registry.failures()
    assert (failure.name, failure.source) == ("usurper", "attnreg-usurper 1.0")
    assert failure.error == (
        "claims part kinds of attnreg's core:\n'band' (attnreg.pattern.predicates.Band): the core's kinds cannot be "
        "replaced; give the plugin's part another kind"
    )
    assert registry.part_entry("band").plugin.name == "attnreg.core"
    assert plugin_patterns(registry) == ["ringo"]
