"""``attnreg bench`` and its parts: peak memory accounting, the side-by-side run, skips, the table and the plot."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import attnreg
from attnreg import Pattern, RelativePositionBias, Window
from attnreg.bench.cases import layer_variants
from attnreg.bench.measure import cpu_peak_bytes, median_seconds
from attnreg.bench.runner import run_benchmark
from attnreg.bench.table import format_table
from attnreg.cli import main

MIB = 2**20
_CREATED: list[torch.nn.Module] = []  # the layers the test benchmark built, newest last


class _Layer(torch.nn.Module):
    """A tiny attention layer on attnreg with projections, like a plugin's layer; records the engines it ran on."""

    def __init__(self, pattern: Pattern, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.pattern, self.heads = pattern, heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.bias = torch.nn.Parameter(torch.randn(pattern.bias.num_buckets, heads))
        self.engines: list[str] = []

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor]:
        batch, length, dim = hidden_states.shape
        q, k, v = self.qkv(hidden_states).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        self.engines.append(attnreg.pinning.pinned_backend())
        out = attnreg.attention(q, k, v, self.pattern, bias_weight=self.bias)
        return (out.transpose(1, 2).reshape(batch, length, dim),)


class _Dense(torch.nn.Module):
    """The "transformers" side: plain dense attention on the same projections."""

    def __init__(self, layer: _Layer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layer.qkv(hidden_states) * 2


def _pattern(radius: int = 3) -> Pattern:
    """A banded window with a relative bias (test pattern)."""
    return Pattern(window=Window.symmetric(radius), bias=RelativePositionBias(8, 16), scale=1.0)


class _BenchPlugin:
    @staticmethod
    @attnreg.hookimpl
    def attnreg_add_patterns(registrar) -> None:
        registrar.add_pattern("bench-banded", _pattern)

    @staticmethod
    @attnreg.hookimpl
    def attnreg_add_benchmarks(registrar) -> None:
        def make_cases(length: int, *, batch: int, device, dtype) -> dict:
            """A tiny banded layer against a dense stand-in."""
            layer = _Layer(_pattern()).to(device=device, dtype=dtype)
            _CREATED.append(layer)
            hidden = torch.randn(batch, length, 32, device=device, dtype=dtype, requires_grad=True)
            return {
                "attnreg": (layer, {"hidden_states": hidden}),
                "transformers": (_Dense(layer), {"hidden_states": hidden}),
            }

        registrar.add_benchmark("bench-layer", make_cases)


@pytest.fixture(autouse=True)
def plugin():
    name = attnreg.register_plugin(_BenchPlugin(), "bench-test-plugin")
    yield
    attnreg.unregister_plugin(name)


def test_cpu_peak_counts_what_is_alive_at_once() -> None:
    x = torch.randn(512, 512)  # 1 MiB, allocated before: not counted

    def work() -> torch.Tensor:
        y = x * 2  # 1 MiB
        z = y + 1  # 2 MiB alive
        del y
        w = z * 3  # 2 MiB alive again: the peak stays 2 MiB
        return w

    assert 2 * MIB <= cpu_peak_bytes(work) < 2 * MIB + 1024  # plus a few bytes of scalar operands


def test_median_of_repeats_is_positive() -> None:
    assert median_seconds(lambda: torch.ones(10).sum(), torch.device("cpu"), repeats=3) > 0


def test_layer_benchmark_runs_every_engine_and_transformers_side_by_side() -> None:
    result = run_benchmark("bench-layer", lengths=[16, 40], repeats=1, progress=False)
    assert result.mode == "layer"
    engines = {engine.name for engine in attnreg.get_registry().engines()}
    assert set(result.labels()) == {"transformers"} | engines
    for length in (16, 40):
        for label in ("transformers", "dense-sdpa", "reference"):
            measured = result.get(label, length)
            assert measured.seconds > 0 and measured.peak_bytes > 0, measured
    assert "device is cpu" in result.get("xformers", 16).note
    table = format_table(result)
    assert "speed-up vs transformers" in table and "growth dense-sdpa: length x2.5" in table


def test_layer_variants_with_gradients_run_backward_on_the_pinned_engine() -> None:
    entry = attnreg.get_registry().benchmark("bench-layer")
    variants = layer_variants(entry, 24, batch=1, device="cpu", dtype=torch.float32, grad=True, engines=["dense-sdpa"])
    by_label = {variant.label: variant for variant in variants}
    by_label["dense-sdpa"].run()
    layer = _CREATED[-1]
    assert layer.engines == [("dense-sdpa",)]
    assert layer.bias.grad is not None and layer.bias.grad.abs().sum() > 0


def test_variant_predicted_too_slow_is_skipped_and_said_so() -> None:
    result = run_benchmark(
        "bench-layer", lengths=[16, 64], engines=["reference"], repeats=1, max_seconds=1e-9, progress=False
    )
    assert result.get("reference", 16).seconds is not None
    assert result.get("reference", 64).note.startswith("skipped: ")
    assert "skipped: " in format_table(result)


def test_cli_bare_pattern_with_parameters_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("matplotlib")
    plot = tmp_path / "bench.png"
    argv = [
        "bench",
        "bench-banded",
        "--lengths",
        "16,32",
        "--repeats",
        "1",
        "--radius",
        "2",
        "--engines",
        "dense-sdpa,reference",
        "--no-progress",
        "--plot",
        str(plot),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "bench-banded (bare)" in out and "speed-up vs reference" in out
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "bench-bandd"], "did you mean 'bench-banded'"),
        (["bench", "bench-banded", "--engines", "nope", "--no-progress"], "--engines='nope' is not allowed"),
        (["bench", "bench-layer", "--batch", "0"], "--batch=0 is not allowed"),
    ],
)
def test_bad_input_is_a_usage_error(capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err
