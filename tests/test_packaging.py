"""Packaging and citing: one version everywhere, type hints shipped, a changelog and a citation file that agree."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

import attnreg

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_installed_version_is_the_packages():
    assert attnreg.__version__ == metadata.version("attnreg")


def test_pyproject_reads_the_version_from_the_package(pyproject):
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "attnreg.__version__"}


def test_py_typed_is_in_the_package_and_its_package_data(pyproject):
    assert (Path(attnreg.__file__).parent / "py.typed").is_file()
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["attnreg"]


@pytest.fixture(scope="module")
def citation() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((ROOT / "CITATION.cff").read_text())


def test_citation_has_cff_1_2_0s_required_fields(citation):
    assert citation["cff-version"] == "1.2.0"
    assert citation["message"] and citation["title"]
    assert citation["authors"] == [{"name": "attnreg developers"}]


def test_citation_names_this_version_its_release_date_and_license(citation, pyproject):
    assert str(citation["version"]) == attnreg.__version__
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(citation["date-released"]))
    assert citation["license"] == pyproject["project"]["license"] == "Apache-2.0"


def _released(changelog: str) -> list[tuple[str, str]]:
    """``(version, date)`` of each ``## [X.Y.Z] - YYYY-MM-DD`` heading, newest first."""
    return re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", changelog, re.MULTILINE)


def test_changelog_has_an_unreleased_section_above_the_releases():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert changelog.index("## [Unreleased]") < changelog.index("## [0.1.0]")


def test_changelogs_newest_release_is_this_version_on_the_citations_date(citation):
    newest = _released((ROOT / "CHANGELOG.md").read_text())[0]
    assert newest == (attnreg.__version__, str(citation["date-released"]))
