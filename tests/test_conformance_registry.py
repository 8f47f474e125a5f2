"""Every installed pattern passes the conformance suite on every registered engine that accepts it.

Parametrized over what is registered when the tests are collected: built-in plugins, the example plugin and
any other installed distribution; engines that refuse a case (e.g. xformers on CPU) skip it, never fail it.
"""

from __future__ import annotations

import pytest

import attnreg
from attnreg.testing import check_pattern

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", attnreg.list_patterns())
def test_installed_pattern_passes_the_conformance_suite(name):
    report = check_pattern(name, quick=True)
    assert report.ok, "\n" + report.format()
