"""``docs/engines.md``'s examples run as written: pinning an engine, and seeing which one ran in the log and the
profiler."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "engines.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL)


def test_the_pinning_example_runs_as_written() -> None:
    namespace: dict = {}
    exec(compile(_blocks()[0], str(PAGE), "exec"), namespace)
    assert namespace["out"].shape == (1, 4, 1000, 32)


def test_the_observability_example_logs_and_labels_the_engine(capsys, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="attnreg"):
        exec(compile(_blocks()[1], str(PAGE), "exec"), {})
    logging.getLogger("attnreg").setLevel(logging.NOTSET)  # the example raised it for the whole process
    assert "engine 'blocked' runs q 1x4x1000x32 float32 on cpu" in caplog.messages
    assert "['attnreg:blocked']" in capsys.readouterr().out
    assert "# DEBUG:attnreg.dispatch:engine 'blocked' runs q 1x4x1000x32 float32 on cpu" in _blocks()[1]
