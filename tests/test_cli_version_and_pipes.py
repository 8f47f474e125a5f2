"""``attnreg --version``, and output piped into a reader that stops early (``| head``): no traceback, files written."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

from attnreg.cli import BROKEN_PIPE_STATUS, main


def test_version_prints_attnregs_version_first_then_torch_and_python(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    line = capsys.readouterr().out
    assert line.split()[:2] == ["attnreg", metadata.version("attnreg")]
    assert f"torch {torch.__version__}" in line and "Python 3." in line
    assert line.count("\n") == 1


def _piped(command: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``command`` (an attnreg command line) run by bash with ``pipefail``, so the status is attnreg's, not head's;
    the installed plugins are switched off (the core's patterns suffice, and load faster)."""
    plugins = ",".join(sorted({entry.name for entry in metadata.entry_points(group="attnreg")}))
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "ATTNREG_DISABLE_PLUGINS": plugins,
    }
    return subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# 400 rows of 400 cells: far more than a pipe holds, so head's exit really breaks the pipe.
LONG_SHOW = "attnreg show sliding-window --length 400 --left 3 --right 3"


def test_a_reader_that_stops_early_gets_no_traceback_and_the_sigpipe_status(tmp_path):
    piped = _piped(f"{LONG_SHOW} | head -1", tmp_path)
    assert piped.stderr == ""
    assert piped.returncode == BROKEN_PIPE_STATUS == 141
    assert piped.stdout == "sliding-window: Pattern(window=Window(left=3, right=3))\n"


def test_the_png_is_written_though_the_text_is_cut_short(tmp_path):
    piped = _piped(f"{LONG_SHOW} --png drawn.png | head -1", tmp_path)
    assert piped.stderr == "" and piped.returncode == BROKEN_PIPE_STATUS
    assert (tmp_path / "drawn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
