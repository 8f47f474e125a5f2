"""attnreg's pytest plugin: inert by default, and ``--attnreg-conformance`` adds the suite as test items.

Run in subprocesses in an empty folder, as a plugin author's CI runs it; a conftest there plants a wrong engine
at run time to show that a failure reaches pytest's report with the table and the account of what failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

CONFTEST = """
import dataclasses

import attnreg
from attnreg.execution.reference import reference_attention


class OffByOne(attnreg.Engine):
    name = "off-by-one"

    def unsupported_reasons(self, call):
        return []

    def estimated_cost(self, call):
        return 1e9

    def __call__(self, call):
        window = attnreg.Window(call.pattern.window.left + 1, call.pattern.window.right)
        pattern = dataclasses.replace(call.pattern, window=window)
        return reference_attention(dataclasses.replace(call, pattern=pattern))


class Plugin:
    @staticmethod
    @attnreg.hookimpl
    def attnreg_add_patterns(registrar):
        registrar.add_pattern("tiny-window", lambda left=2: attnreg.Pattern(window=attnreg.Window(left, 1)))

    @staticmethod
    @attnreg.hookimpl
    def attnreg_add_engines(registrar):
        registrar.add_engine(OffByOne())


attnreg.register_plugin(Plugin, "pytest-plugin-test")
"""


def pytest_in(folder: Path, *args: str) -> subprocess.CompletedProcess:
    installed = {ep.name for ep in metadata.entry_points(group="attnreg")}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ATTNREG_DISABLE_PLUGINS": ",".join(sorted(installed))}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_without_the_option_nothing_is_added(tmp_path):
    (tmp_path / "test_nothing.py").write_text("def test_one():\n    pass\n")
    result = pytest_in(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout and "attnreg-conformance" not in result.stdout


def test_the_option_runs_the_suite_and_reports_a_wrong_engine(tmp_path):
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    result = pytest_in(tmp_path, "--attnreg-conformance=tiny-window", "--attnreg-engines=reference,off-by-one")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED attnreg-conformance[tiny-window]" in result.stdout
    assert "FAIL: reference, half-precision, locality" in result.stdout
    assert "FAIL tiny-window / off-by-one / locality" in result.stdout


def test_the_option_passes_on_correct_engines(tmp_path):
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    result = pytest_in(tmp_path, "--attnreg-conformance=tiny-window", "--attnreg-engines=reference,blocked")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
