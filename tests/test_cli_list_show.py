"""``attnreg list`` and ``attnreg show`` run as a user runs them: ``python -m attnreg`` in a subprocess.

The patterns come from a plugin distribution written to a temporary folder (beside a broken one and two that
claim one name), so the commands are checked through the same entry points as any third-party plugin.
"""

from __future__ import annotations

import inspect
import sys
import types
from pathlib import Path

import pytest

import attnreg
import attnreg.render
from attnreg.cli import main
from attnreg.cli._params import parameter_text, plain_text

KEYWORD = inspect.Parameter.KEYWORD_ONLY

DEMO = """
    import attnreg
    from attnreg import AggregatedGlobals, Pattern, SelectedGlobals, Window


    def demo_tglobal(local_radius: int = 2, global_block_size: int = 4, causal: bool = False, scale: float = 1.0):
        '''A local window plus one aggregated key per block (a test pattern).'''
        window = Window(local_radius, 0 if causal else local_radius)
        return Pattern(window=window, aggregated_globals=AggregatedGlobals(global_block_size), scale=scale)


    def demo_globals(radius: int = 1):
        '''A local window plus selected global tokens (a test pattern).'''
        return Pattern(window=Window(radius, radius), selected_globals=SelectedGlobals())


    def demo_clashing_options(length: int = 3, right=None):
        '''A causal window of ``length`` keys, ``right`` keys ahead (a parameter without a typed default).'''
        return Pattern(window=Window(length, right or 0))


    @attnreg.hookimpl
    def attnreg_add_patterns(registrar):
        registrar.add_pattern("demo-tglobal", demo_tglobal)
        registrar.add_pattern("demo-globals", demo_globals)
        registrar.add_pattern("demo-clashing-options", demo_clashing_options)
"""
ENGINES = """
    import attnreg


    class DemoEngine(attnreg.Engine):
        name = "demo-engine"
        description = "refuses every call (a test engine)"

        def unsupported_reasons(self, call):
            return ["it is only a demo"]

        def estimated_cost(self, call):
            return 0.0

        def __call__(self, call):
            raise AssertionError("never chosen")


    @attnreg.hookimpl
    def attnreg_add_engines(registrar):
        registrar.add_engine(DemoEngine())
"""
BROKEN = "import attnreg\nraise ImportError('this plugin is broken on purpose')\n"
MISSPELT = """
    import attnreg

    @attnreg.hookimpl
    def attnreg_add_engine(registrar):
        pass
"""
UNMARKED = """
    def attnreg_add_patterns(registrar):
        pass
"""
CLASH = """
    import attnreg

    @attnreg.hookimpl
    def attnreg_add_patterns(registrar):
        registrar.add_pattern("clash", lambda: attnreg.Pattern())
"""


@pytest.fixture(scope="module")
def sites(tmp_path_factory, write_distribution):
    """One folder with a working, a broken, a misspelt, an unmarked and two clashing plugin distributions."""
    site = tmp_path_factory.mktemp("site")
    write_distribution(
        site,
        "attnreg-demo",
        "1.2.3",
        {"demo_plugin": DEMO, "demo_engines": ENGINES},
        {"demo": "demo_plugin", "demo_engines": "demo_engines"},
    )
    write_distribution(site, "attnreg-broken", "0.3", {"broken_plugin": BROKEN}, {"broken": "broken_plugin"})
    write_distribution(site, "attnreg-typo", "0.1", {"typo_plugin": MISSPELT}, {"typo": "typo_plugin"})
    write_distribution(site, "attnreg-idle", "1.0", {"idle_plugin": UNMARKED}, {"idle": "idle_plugin"})
    write_distribution(site, "attnreg-clash-a", "1.0", {"clash_a": CLASH}, {"clash_a": "clash_a"})
    write_distribution(site, "attnreg-clash-b", "2.0", {"clash_b": CLASH}, {"clash_b": "clash_b"})
    return [site]


@pytest.fixture(scope="module")
def listed(run_attnreg, sites):
    return run_attnreg("list", sites=sites)


def test_list_succeeds_beside_a_broken_plugin(listed):
    assert listed.returncode == 0, listed.stderr


def test_list_shows_each_pattern_with_its_plugin_version_and_description(listed):
    lines = listed.stdout.splitlines()
    row = next(line for line in lines if line.strip().startswith("demo-tglobal"))
    assert row.split()[:4] == ["demo-tglobal", "demo", "attnreg-demo", "1.2.3"]
    assert row.endswith("A local window plus one aggregated key per block (a test pattern).")


def test_list_shows_the_engines_with_their_plugin(listed):
    section = [line.split() for line in listed.stdout.split("engines:")[1].split("\n\n")[0].splitlines()]
    assert ["reference", "attnreg.core", "attnreg", "(core)"] in [row[:4] for row in section]
    assert ["demo-engine", "demo_engines", "attnreg-demo", "1.2.3", "refuses"] in [row[:5] for row in section]


@pytest.mark.parametrize(
    ("kind", "described"),
    [
        ("band", "mask part Band(left: int | None = None, right: int | None = None): i - left <= j <= i + right"),
        ("any", "mask part AnyOf(parts: tuple[MaskPart, ...] = ()): The union"),
        ("alibi", "score term ALiBi(): Attention with linear biases"),
    ],
)
def test_list_shows_each_part_kind_with_its_plugin_class_and_parameters(listed, kind, described):
    section = listed.stdout.split("\nparts:\n")[1].split("\n\n")[0].splitlines()
    row = next(line.split(maxsplit=4) for line in section if line.split()[0] == kind)
    assert row[:4] == [kind, "attnreg.core", "attnreg", "(core)"]
    assert row[4].startswith(described)


def test_list_shows_a_broken_plugin_with_the_end_of_its_traceback(listed):
    failed = listed.stdout.split("failed plugins:")[1]
    assert "broken  attnreg-broken 0.3  failed to import entry point 'broken_plugin'" in failed
    assert "Traceback (most recent call last):" in failed
    assert "ImportError: this plugin is broken on purpose" in failed
    assert "--verbose" in failed


def test_list_shows_a_misspelt_hook_as_its_plugins_failure_with_the_closest_hook(listed):
    failed = listed.stdout.split("failed plugins:")[1].split("\n\n")[0]
    assert "  typo  attnreg-typo 0.1  has hook functions attnreg cannot call\n" in failed
    assert (
        "    attnreg_add_engine is marked @attnreg.hookimpl but attnreg has no hook 'attnreg_add_engine'; "
        "did you mean 'attnreg_add_engines'?"
    ) in failed


def test_list_notes_a_plugin_that_registered_nothing(listed):
    section = listed.stdout.split("plugins that registered nothing:\n")[1].split("\n\n")[0]
    assert section.splitlines() == [
        "  idle  attnreg-idle 1.0  registered nothing: attnreg_add_patterns is not marked @attnreg.hookimpl, "
        "so never called"
    ]


def test_list_prints_docstring_descriptions_without_rst_markup(listed):
    row = next(line for line in listed.stdout.splitlines() if line.strip().startswith("demo-clashing-options"))
    assert row.endswith("A causal window of length keys, right keys ahead (a parameter without a typed default).")


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("a ``radius`` of keys", "a radius of keys"),
        ("see :class:`attnreg.Window`", "see attnreg.Window"),
        ("see :func:`~attnreg.registry.get_pattern`", "see get_pattern"),
        ("see :py:meth:`attnreg.Pattern.materialize`", "see attnreg.Pattern.materialize"),
        ("see :doc:`the guide <plugin-authoring>`", "see the guide"),
        ("the `default role` and a `link`_", "the default role and a link"),
        ("LongT5 local attention: |i-j| <= r, T5 bias", "LongT5 local attention: |i-j| <= r, T5 bias"),
    ],
)
def test_plain_text_takes_off_rst_inline_markup_as_sphinx_renders_it(text, plain):
    assert plain_text(text) == plain


@pytest.mark.parametrize(
    ("parameter", "text"),
    [
        (inspect.Parameter("radius", KEYWORD, default=16, annotation=int), "radius: int = 16"),
        (
            inspect.Parameter("softcap", KEYWORD, default=None, annotation="float | None"),
            "softcap: float | None = None",
        ),
        (inspect.Parameter("right", KEYWORD, default=None), "right=None"),
        (inspect.Parameter("size", KEYWORD, annotation="int"), "size: int (required)"),
        (inspect.Parameter("size", KEYWORD), "size (required)"),
    ],
)
def test_a_parameter_reads_as_in_its_factorys_signature(parameter, text):
    assert parameter_text(parameter) == text


def test_list_shows_conflicts_naming_both_distributions(listed):
    conflicts = listed.stdout.split("conflicts")[1]
    assert "pattern 'clash': clash_a (attnreg-clash-a 1.0) and clash_b (attnreg-clash-b 2.0)" in conflicts
    assert "clash " not in listed.stdout.split("builders:")[0].split("patterns:")[1]


@pytest.fixture
def global_registry(monkeypatch, plugin_environment, sites):
    """The process-wide registry, loaded afresh from the demo distributions (with ``env``) on first use."""

    def load(env=None):
        plugin_environment(*sites, env=env)
        monkeypatch.setattr(attnreg.registry, "_registry", None)

    return load


def test_list_names_the_disabled_plugins(global_registry, capsys):
    global_registry(env={"ATTNREG_DISABLE_PLUGINS": "clash_b"})
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "clash_b (attnreg-clash-b 2.0)" in out.split("disabled by ATTNREG_DISABLE_PLUGINS:")[1]
    assert ["clash", "clash_a", "attnreg-clash-a", "1.0"] in [line.split() for line in out.splitlines()]


@pytest.fixture
def listed_verbose(global_registry, capsys):
    """What ``attnreg list --verbose`` prints, run in this process."""
    global_registry()
    assert main(["list", "--verbose"]) == 0
    return capsys.readouterr().out


def test_list_verbose_shows_the_whole_traceback(listed_verbose, listed):
    assert "in _load_entry_points" in listed_verbose
    assert "in _load_entry_points" not in listed.stdout


@pytest.mark.parametrize(
    ("pattern", "parameters"),
    [
        ("demo-tglobal", "local_radius: int = 2, global_block_size: int = 4, causal: bool = False, scale: float = 1.0"),
        ("demo-clashing-options", "length: int = 3, right=None"),
        ("demo-globals", "radius: int = 1"),
    ],
)
def test_list_verbose_shows_each_patterns_parameters_under_it(listed_verbose, pattern, parameters):
    lines = listed_verbose.splitlines()
    row = next(i for i, line in enumerate(lines) if line.strip().startswith(pattern))
    assert lines[row + 1] == f"      parameters: {parameters}"


def test_list_verbose_shows_each_engines_declared_capabilities_under_it(listed_verbose):
    lines = listed_verbose.splitlines()
    for name, expected in [
        ("reference", "devices: any; dtypes: any floating; gradients: yes; dropout: yes, and explicit keep flags; "
         "memory: quadratic"),
        ("blocked", "devices: any; dtypes: any floating; gradients: yes; dropout: yes, and explicit keep flags; "
         "memory: linear"),
    ]:
        row = next(i for i, line in enumerate(lines) if line.startswith(f"  {name} "))
        assert lines[row + 1] == f"      supports: {expected}"


def test_list_verbose_shows_each_builders_parameters_and_the_config_fields_it_takes(listed_verbose):
    lines = listed_verbose.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("  encoder "))
    parameters = lines[row + 1]
    assert parameters.startswith(
        "      parameters: config: GenericConfig | dict[str, Any] | None = None, pretrained: str | Path | None = None, "
        "**overrides: Any (overrides: pattern: str | Pattern = '', pattern_params: dict[str, Any] = {}, "
    )
    assert "num_heads: int = 8" in parameters and "n_heads" not in parameters


def test_a_builder_whose_config_is_no_dataclass_lists_no_fields():
    def build(device=None, /, config: dict | None = None, *, pretrained: str | None = None, **overrides): ...

    def unresolvable(config: NoSuchConfig = None): ...  # noqa: F821 (the plugin's own module lacks the import)

    info = attnreg.registry.PluginInfo("demo")
    for builder in (build, unresolvable):
        assert attnreg.registry.BuilderEntry("demo", builder, info).config_fields() == {}
    parameters = attnreg.registry.BuilderEntry("demo", build, info).keyword_parameters().values()
    texts = [parameter_text(p) for p in parameters]
    assert texts == ["config: dict | None = None", "pretrained: str | None = None", "**overrides"]


def test_list_without_verbose_shows_no_parameters(listed):
    assert "parameters:" not in listed.stdout and "supports:" not in listed.stdout


def test_list_in_strict_mode_fails_naming_the_broken_plugin(global_registry, capsys):
    global_registry(env={"ATTNREG_STRICT": "1"})
    assert main(["list"]) == 1
    assert "attnreg list: error: plugin 'broken' (attnreg-broken 0.3) failed to import" in capsys.readouterr().err


def test_show_draws_window_aggregated_keys_and_padding(run_attnreg, sites):
    shown = run_attnreg(
        "show", "demo-tglobal", "--length", "10", "--local-radius", "1", "--global-block-size", "4", "--pad", "2",
        sites=sites,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == (
        "demo-tglobal: Pattern(window=Window(left=1, right=1), "
        "aggregated_globals=AggregatedGlobals(global_block_size=4), scale=1.0)"
    )
    grid = lines[lines.index("       0123456789 | 01") :]
    assert grid[1:4] == ["    0  ##......-- | AA", "    1  ###.....-- | AA", "    2  .###....-- | AA"]
    assert grid[8:11] == ["    7  ......##-- | AA", "    8p ---------- | --", "    9p ---------- | --"]
    assert "legend: # Window(left=1, right=1)   A aggregated key   - padding   . not allowed" in lines
    assert "this example: 38 allowed pairs" in shown.stdout


def test_show_draws_global_tokens_and_a_png(run_attnreg, sites, tmp_path):
    picture = tmp_path / "pattern.png"
    shown = run_attnreg("show", "demo-globals", "--length", "6", "--globals", "0,4", "--png", str(picture), sites=sites)
    assert shown.returncode == 0, shown.stderr
    grid = shown.stdout.splitlines()
    start = grid.index("       012345")
    assert grid[start + 1 : start + 7] == [
        "    0g ##GGGG",
        "    1  ###.G.",
        "    2  G###G.",
        "    3  G.###.",
        "    4g GGG###",
        "    5  G...##",
    ]
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"picture written to {picture}" in shown.stdout


@pytest.mark.usefixtures("demo_registered")
def test_show_png_without_matplotlib_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["show", "demo-globals", "--length", "4", "--png", str(tmp_path / "x.png")]) == 1
    captured = capsys.readouterr()
    assert "pip install 'attnreg[plot]'" in captured.err
    assert "    0  ##.." in captured.out
    assert not (tmp_path / "x.png").exists()


@pytest.fixture
def demo_registered():
    """The demo plugin registered in this process, for the quick error-path checks of ``show``."""
    module = types.ModuleType("demo_plugin_in_process")
    exec(compile(DEMO.replace("\n    ", "\n"), "demo_plugin", "exec"), module.__dict__)
    name = attnreg.register_plugin(module, "demo-in-process")
    yield
    attnreg.unregister_plugin(name)


@pytest.mark.usefixtures("demo_registered")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo-tglobl"], "unknown pattern 'demo-tglobl'; did you mean 'demo-tglobal'"),
        (["demo-tglobal", "--local-radius", "-1"], "Window.left=-1 is not allowed: expected an int >= 0"),
        (["demo-tglobal", "--global-block-size", "0"], "AggregatedGlobals.global_block_size=0 is not allowed"),
        (["demo-tglobal", "--pad", "40"], "--pad=40 is not allowed: expected 0 to --length (32)"),
        (["demo-tglobal", "--globals", "1"], "this pattern has no selected_globals"),
        (
            ["demo-globals", "--length", "4", "--globals", "0,4"],
            "--globals='0,4' is not allowed: expected positions in",
        ),
        (["demo-globals", "--length", "0"], "--length=0 is not allowed"),
    ],
)
def test_show_reports_bad_input_with_exit_status_2(argv, message, capsys):
    assert main(["show", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.usefixtures("demo_registered")
@pytest.mark.parametrize("argv", [["demo-tglobal", "--radius", "3"], ["demo-tglobal", "--local-radius", "two"]])
def test_show_rejects_unknown_options_and_badly_typed_values(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["show", *argv])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "unrecognized arguments: --radius 3" in error or "argument --local-radius: invalid int value: 'two'" in error


@pytest.mark.usefixtures("demo_registered")
def test_show_help_lists_the_pattern_parameters_as_kebab_case_options(capsys):
    with pytest.raises(SystemExit):
        main(["show", "demo-tglobal", "--help"])
    help_text = capsys.readouterr().out
    for option in ["--local-radius LOCAL_RADIUS", "--global-block-size GLOBAL_BLOCK_SIZE", "--causal, --no-causal"]:
        assert option in help_text


@pytest.mark.usefixtures("demo_registered")
def test_show_help_says_what_a_none_default_builds(capsys):
    with pytest.raises(SystemExit):
        main(["show", "demo-clashing-options", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "With every default the pattern is Pattern(window=Window(left=3, right=0))." in help_text
    assert "--right RIGHT default: None, left to the pattern (what it builds: see above)" in help_text
    assert "--pattern-length LENGTH default: 3" in help_text


@pytest.mark.usefixtures("demo_registered")
def test_show_png_title_names_the_pattern_its_parameters_and_the_example(monkeypatch, tmp_path, capsys):
    titles = []

    def render_png(layout, path, title=""):
        titles.append(title)
        return Path(path)

    monkeypatch.setattr(attnreg.render, "render_png", render_png)
    argv = ["show", "demo-tglobal", "--length", "10", "--pad", "2", "--local-radius", "1", "--png", str(tmp_path)]
    assert main(argv) == 0
    assert titles == [
        "demo-tglobal(local_radius=1, global_block_size=4, causal=False, scale=1.0)\n"
        "length 10, 2 padded, global tokens none"
    ]
    assert capsys.readouterr().out.endswith(f"picture written to {tmp_path}\n")


@pytest.mark.usefixtures("demo_registered")
def test_show_help_describes_the_pattern_in_plain_text(capsys):
    with pytest.raises(SystemExit):
        main(["show", "demo-clashing-options", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "Draw pattern 'demo-clashing-options': A causal window of length keys, right keys ahead" in help_text


@pytest.mark.usefixtures("demo_registered")
def test_show_boolean_and_float_parameters(capsys):
    assert main(["show", "demo-tglobal", "--length", "8", "--causal", "--scale", "0.5"]) == 0
    assert "Pattern(window=Window(left=2, right=0), aggregated_globals=" in capsys.readouterr().out


@pytest.mark.usefixtures("demo_registered")
@pytest.mark.parametrize(
    ("argv", "window"),
    [
        ([], "Window(left=3, right=0)"),
        (["--length", "6", "--pattern-length", "1"], "Window(left=1, right=0)"),
        (["--right", "2"], "Window(left=3, right=2)"),
        (["--right", "none"], "Window(left=3, right=0)"),
    ],
)
def test_show_renames_a_parameter_that_clashes_with_its_own_options_and_parses_untyped_ones(argv, window, capsys):
    assert main(["show", "demo-clashing-options", *argv]) == 0
    assert f"Pattern(window={window})" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "status"), [(["-h"], 0), (["--help"], 0), ([], 2)])
def test_show_without_a_name_prints_its_usage(argv, status, capsys):
    assert main(["show", *argv]) == status
    assert "usage: attnreg show NAME" in capsys.readouterr().out
