"""Shared fixtures for the core's tests: small plugin distributions on disk and the ``attnreg`` command in a subprocess.

Real distributions (a package, ``*.dist-info/METADATA`` and ``entry_points.txt``) put on ``PYTHONPATH`` are found by
``importlib.metadata`` exactly as installed ones are, so the registry is exercised through its real door.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest


def write_distribution(
    site: Path, dist: str, version: str, modules: dict[str, str], entry_points: dict[str, str]
) -> None:
    """Write a distribution ``dist`` into ``site``: its modules (name -> source) and its ``attnreg`` entry points."""
    site.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[attnreg]\n{lines}")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """An empty folder to put plugin distributions in (it goes on the subprocess's ``PYTHONPATH``)."""
    return tmp_path / "site"


@pytest.fixture
def run_attnreg(site: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run ``python -m attnreg ARGS`` (or ``python -c CODE``) with ``site`` on ``PYTHONPATH`` and extra env vars."""

    def run(*args: str, code: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ATTNREG_")}
        environ["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
        environ["COLUMNS"] = "200"
        environ.update(env or {})
        command = [sys.executable, "-c", textwrap.dedent(code)] if code else [sys.executable, "-m", "attnreg", *args]
        return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=120)

    return run
