"""``attnreg explain NAME``: the engine that would run, and why each other one would not."""

from __future__ import annotations

import pytest

import attnreg
from attnreg import Pattern, RelativePositionBias, Window
from attnreg.cli import main


class _ExplainPlugin:
    """A pattern registered at run time, with parameters to turn into options."""

    @staticmethod
    @attnreg.hookimpl
    def attnreg_add_patterns(registrar) -> None:
        def banded(radius: int = 4, buckets: int = 8) -> Pattern:
            """A banded window with a relative bias."""
            return Pattern(window=Window.symmetric(radius), bias=RelativePositionBias(buckets, 16), scale=1.0)

        registrar.add_pattern("explain-banded", banded)


@pytest.fixture(autouse=True)
def plugin():
    name = attnreg.register_plugin(_ExplainPlugin(), "explain-test-plugin")
    yield
    attnreg.unregister_plugin(name)


def test_short_call_runs_dense_and_xformers_says_why_not(capsys: pytest.CaptureFixture) -> None:
    assert main(["explain", "explain-banded", "--length", "64", "--radius", "3"]) == 0
    out = capsys.readouterr().out
    chosen = next(line for line in out.splitlines() if "->" in line)
    assert "dense-sdpa" in chosen and "runs" in chosen
    assert "Window(left=3, right=3)" in out
    xformers = next(line for line in out.splitlines() if "xformers" in line)
    assert "cannot: " in xformers and "device is cpu" in xformers


def test_long_call_does_not_run_dense(capsys: pytest.CaptureFixture) -> None:
    assert main(["explain", "explain-banded", "--length", "65536", "--grad"]) == 0
    out = capsys.readouterr().out
    chosen = next(line for line in out.splitlines() if "->" in line)
    assert "dense-sdpa" not in chosen and "reference" not in chosen
    assert "forward + backward" in out


def test_cuda_is_explained_even_without_a_gpu(capsys: pytest.CaptureFixture) -> None:
    assert main(["explain", "explain-banded", "--device", "cuda", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "bfloat16 on cuda" in out
    assert "device is cpu" not in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explain", "explain-bandd"], "did you mean 'explain-banded'"),
        (["explain", "explain-banded", "--radius", "-1"], "Window.left=-1"),
        (["explain", "explain-banded", "--globals", "2"], "--globals=2 is not allowed"),
        (["explain", "explain-banded", "--length", "0"], "--length=0 is not allowed"),
    ],
)
def test_bad_input_is_a_usage_error_naming_it(capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_pattern_parameter_is_rejected(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["explain", "explain-banded", "--nope", "1"])
    assert "--nope" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["explain", "bench"])
def test_help_before_a_name_prints_the_usage(command, capsys):
    assert main([command, "--help"]) == 0
    assert f"attnreg {command} NAME" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["explain", "bench"])
def test_no_name_is_a_usage_error(command, capsys):
    assert main([command]) == 2
    assert f"attnreg {command} NAME" in capsys.readouterr().out
