"""The third-party path: the example plugin distributions, and a plugin written from docs/plugin-authoring.md alone.

Both run in subprocesses, as a user's shell would: ``python -m attnreg list``, ``python -m attnreg check NAME``,
``pytest`` with attnreg's pytest plugin, and the doc's model-building snippet.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The entry points these tests are about; every other installed attnreg plugin is switched off in the
#: subprocesses so that they do not pay for importing, e.g., transformers.
UNDER_TEST = {"causal-window", "strided", "bandglobal"}
#: The example distributions in examples/: (folder, entry point, pattern, what ``attnreg check`` passes it).
EXAMPLES = [
    ("attnreg-causal-window", "causal-window", "causal-window", []),
    ("attnreg-strided", "strided", "strided", ["--param", "local=3", "--param", "stride=4"]),
]
EXAMPLE_IDS = [folder for folder, *_ in EXAMPLES]
DOC = ROOT / "docs" / "plugin-authoring.md"
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def run(args: list[str], *, cwd: Path = ROOT, path: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command with this Python, one thread, optionally with ``path`` first on PYTHONPATH."""
    others = {ep.name for ep in metadata.entry_points(group="attnreg")} - UNDER_TEST
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ATTNREG_DISABLE_PLUGINS": ",".join(sorted(others))}
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def doc_blocks() -> tuple[dict[str, str], list[str]]:
    """The doc's files (blocks marked ``file=PATH``) and the Python blocks marked ``run``, in order."""
    files, snippets = {}, []
    for language, info, body in FENCE.findall(DOC.read_text()):
        marker = info.split()
        named = [m.removeprefix("file=") for m in marker if m.startswith("file=")]
        if named:
            files[named[0]] = body
        elif language == "python" and "run" in marker:
            snippets.append(body)
    return files, snippets


def test_every_example_plugin_has_an_entry_here():
    assert sorted(p.parent.name for p in (ROOT / "examples").glob("*/pyproject.toml")) == sorted(EXAMPLE_IDS)


@pytest.mark.parametrize(("folder", "plugin", "pattern", "params"), EXAMPLES, ids=EXAMPLE_IDS)
def test_the_example_plugin_is_listed(folder, plugin, pattern, params):
    result = run([sys.executable, "-m", "attnreg", "list"])
    assert result.returncode == 0, result.stderr
    row = rf"^  {re.escape(pattern)}\s+{re.escape(plugin)}\s+{re.escape(folder)} 0\.1\.0"
    assert re.search(row, result.stdout, re.MULTILINE), result.stdout


def test_the_strided_example_lists_its_part_kind_as_its_own():
    result = run([sys.executable, "-m", "attnreg", "list"])
    row = r"^  strided-columns\s+strided\s+attnreg-strided 0\.1\.0\s+mask part StridedColumns\(stride: int = 64\)"
    assert re.search(row, result.stdout, re.MULTILINE), result.stdout


@pytest.mark.parametrize(("folder", "plugin", "pattern", "params"), EXAMPLES, ids=EXAMPLE_IDS)
def test_the_example_plugin_passes_attnreg_check(folder, plugin, pattern, params):
    result = run([sys.executable, "-m", "attnreg", "check", pattern, "--quick", *params])
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"^{re.escape(pattern)}\s+ok", result.stdout, re.MULTILINE), result.stdout
    assert " 0 failed" in result.stdout


@pytest.mark.parametrize(("folder", "plugin", "pattern", "params"), EXAMPLES, ids=EXAMPLE_IDS)
def test_the_example_plugin_tests_pass(folder, plugin, pattern, params):
    tests = ROOT / "examples" / folder / "tests"
    result = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)], cwd=tests.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_docs_part_section_runs_as_written(tmp_path):
    blocks = [body for language, info, body in FENCE.findall(DOC.read_text()) if info.split() == ["part"]]
    assert len(blocks) == 3
    (tmp_path / "chunked.py").write_text("\n".join(blocks))
    result = run([sys.executable, str(tmp_path / "chunked.py")], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("chunked "), result.stdout


def test_the_doc_names_every_file_of_its_layout():
    files, snippets = doc_blocks()
    assert {"pyproject.toml", "attnreg_bandglobal/pattern.py", "attnreg_bandglobal/plugin.py"} <= set(files)
    assert "tests/test_bandglobal.py" in files and snippets


@pytest.fixture(scope="module")
def doc_plugin(tmp_path_factory) -> tuple[Path, Path]:
    """The plugin written from the doc's code blocks into an empty folder, installed into its own target."""
    source, site = tmp_path_factory.mktemp("bandglobal"), tmp_path_factory.mktemp("site")
    files, _ = doc_blocks()
    for name, body in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(body)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site)]
    result = run([*pip, str(source)], cwd=source)
    assert result.returncode == 0, result.stdout + result.stderr
    return source, site


def test_the_doc_plugin_is_listed(doc_plugin):
    _, site = doc_plugin
    result = run([sys.executable, "-m", "attnreg", "list"], path=site)
    assert re.search(r"band-global\s+bandglobal\s+attnreg-bandglobal 0\.1\.0", result.stdout), result.stdout


def test_the_doc_plugin_passes_attnreg_check(doc_plugin):
    _, site = doc_plugin
    result = run([sys.executable, "-m", "attnreg", "check", "band-global", "--quick", "--param", "radius=3"], path=site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^band-global\s+ok", result.stdout, re.MULTILINE), result.stdout


def test_the_doc_plugin_tests_pass_with_the_pytest_plugin(doc_plugin):
    source, site = doc_plugin
    result = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=source, path=site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_the_doc_snippet_builds_and_trains_a_model(doc_plugin):
    _, site = doc_plugin
    _, snippets = doc_blocks()
    for snippet in snippets:
        result = run([sys.executable, "-c", snippet], path=site)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "torch.Size([2, 40, 100])" in result.stdout
