"""Shared fixtures for the core's tests: real plugin distributions on disk, loaded in-process or by a subprocess.

A distribution written here (modules, ``*.dist-info/METADATA`` and ``entry_points.txt``) and put on the path is
found by ``importlib.metadata`` exactly as an installed one is, so the registry is exercised through its real door.
The plugins installed in the environment are switched off (``ATTNREG_DISABLE_PLUGINS``) so that these tests see
only their own distributions and do not pay for importing the others.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest
import torch

from attnreg.registry import Registry


def _write_distribution(
    site: Path, dist: str, version: str, modules: dict[str, str], entry_points: dict[str, str]
) -> Path:
    """Write distribution ``dist`` into ``site``: its modules (name -> source) and its ``attnreg`` entry points."""
    site.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[attnreg]\n{lines}")
    return site


def installed_plugins() -> list[str]:
    """Entry-point names of the ``attnreg`` plugins installed in this environment."""
    return sorted({ep.name for ep in metadata.entry_points(group="attnreg")})


def disabled_plugins(extra: str = "") -> str:
    """``ATTNREG_DISABLE_PLUGINS`` that switches off the installed plugins and the ``extra`` ones."""
    return ",".join(filter(None, [*installed_plugins(), extra]))


def isolated_env(sites: list[Path], env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with only ``sites``' plugins enabled (plus ``env``), no ``ATTNREG_*`` leaking in."""
    env = dict(env or {})
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ATTNREG_")}
    environ["PYTHONPATH"] = os.pathsep.join([*map(str, sites), *filter(None, [os.environ.get("PYTHONPATH")])])
    environ["COLUMNS"] = "200"
    environ.update(env, ATTNREG_DISABLE_PLUGINS=disabled_plugins(env.get("ATTNREG_DISABLE_PLUGINS", "")))
    return environ


@pytest.fixture(scope="session")
def write_distribution() -> Callable[..., Path]:
    """``write_distribution(site, dist, version, {module: source}, {entry_point: target}) -> site``."""
    return _write_distribution


@pytest.fixture(scope="session")
def run_attnreg() -> Callable[..., subprocess.CompletedProcess]:
    """Run ``python -m attnreg ARGS`` (or ``python -c CODE``) in a subprocess that sees only ``sites``' plugins."""

    def run(*args: str, sites: list[Path], code: str | None = None, env: dict[str, str] | None = None):
        command = [sys.executable, "-c", textwrap.dedent(code)] if code else [sys.executable, "-m", "attnreg", *args]
        return subprocess.run(command, env=isolated_env(sites, env), capture_output=True, text=True, timeout=300)

    return run


@pytest.fixture
def plugin_environment(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make this process see the distributions in ``sites`` only (on ``sys.path``), with extra environment variables."""
    loaded_sites: list[str] = []

    def prepare(*sites: Path, env: dict[str, str] | None = None) -> None:
        env = dict(env or {})
        for name in [n for n in os.environ if n.startswith("ATTNREG_")]:
            monkeypatch.delenv(name)
        env["ATTNREG_DISABLE_PLUGINS"] = disabled_plugins(env.get("ATTNREG_DISABLE_PLUGINS", ""))
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        for site in sites:
            monkeypatch.syspath_prepend(str(site))
            loaded_sites.append(str(site))

    yield prepare
    for name, module in list(sys.modules.items()):
        if any(str(getattr(module, "__file__", None) or "").startswith(site) for site in loaded_sites):
            del sys.modules[name]


@pytest.fixture
def load_registry(plugin_environment: Callable[..., None]) -> Callable[..., Registry]:
    """Load a fresh registry in-process from the distributions in ``sites`` only, with extra environment variables."""

    def load(*sites: Path, env: dict[str, str] | None = None) -> Registry:
        plugin_environment(*sites, env=env)
        return Registry.load()

    return load


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is faster than two fighting over a shared machine (modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
