"""``attnreg bench --json/--csv``: the figures with the environment they were measured in; the plot's title and the
footnote naming the engines that could not run."""

from __future__ import annotations

import csv
import json
from importlib import metadata

import pytest
import torch

import attnreg
from attnreg.bench.environment import cpu_model
from attnreg.bench.plot import missing_text, plot_result, setup_text
from attnreg.bench.runner import BenchResult, Measurement
from attnreg.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

BENCH = ["bench", "sliding-window", "--left", "2", "--right", "2", "--repeats", "1", "--no-progress"]


def _transformers_version() -> str | None:
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One small run writing both files: the reference (runs) and xformers (cannot run on the CPU)."""
    folder = tmp_path_factory.mktemp("bench")
    paths = {"json": folder / "figures.json", "csv": folder / "rows.csv"}
    argv = [*BENCH, "--lengths", "16,32", "--engines", "reference,xformers"]
    assert main([*argv, "--json", str(paths["json"]), "--csv", str(paths["csv"])]) == 0
    return paths


def test_json_records_the_environment(files):
    env = json.loads(files["json"].read_text())["environment"]
    assert {key: env[key] for key in ("attnreg", "torch", "transformers", "threads", "cpu", "gpu", "device")} == {
        "attnreg": attnreg.__version__,
        "torch": torch.__version__,
        "transformers": _transformers_version(),
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "gpu": None,
        "device": "cpu",
    }


def test_json_records_the_settings_and_every_measurement(files):
    record = json.loads(files["json"].read_text())
    assert record["settings"] == {
        "benchmark": "sliding-window",
        "mode": "bare",
        "pass": "forward",
        "batch": 1,
        "dtype": "float32",
        "device": "cpu",
        "repeats": 1,
        "max_seconds": 60.0,
    }
    rows = {(row["variant"], row["length"]): row for row in record["measurements"]}
    assert sorted(rows) == [("reference", 16), ("reference", 32), ("xformers", 16), ("xformers", 32)]
    assert rows["reference", 32]["median_seconds"] > 0 and rows["reference", 32]["peak_bytes"] > 0
    assert rows["xformers", 16]["median_seconds"] is None and "device is cpu" in rows["xformers", 16]["note"]


def test_csv_has_a_row_per_measurement_with_the_settings_and_environment(files):
    with files["csv"].open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(row["variant"], row["length"]) for row in rows] == [
        ("reference", "16"),
        ("xformers", "16"),
        ("reference", "32"),
        ("xformers", "32"),
    ]
    for row in rows:
        assert (row["benchmark"], row["pass"], row["device"]) == ("sliding-window", "forward", "cpu")
        assert (row["attnreg"], row["torch"], row["threads"]) == (
            attnreg.__version__,
            torch.__version__,
            str(torch.get_num_threads()),
        )
        assert row["cpu"] == cpu_model() and row["gpu"] == ""
    assert float(rows[0]["median_seconds"]) > 0 and rows[1]["median_seconds"] == ""


def test_a_file_that_cannot_be_written_is_an_error_after_the_table(tmp_path, capsys):
    argv = [*BENCH, "--lengths", "16", "--engines", "reference", "--json", str(tmp_path)]  # a folder, not a file
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "sliding-window (bare): forward" in captured.out
    assert captured.err.startswith("attnreg bench: error: ") and str(tmp_path) in captured.err


def _result() -> BenchResult:
    """A run by hand: reference measured at both lengths, xformers never, dense-sdpa stopped at the second."""
    result = BenchResult("demo", "bare", True, 2, torch.bfloat16, torch.device("cpu"), 1)
    result.measurements = [
        Measurement(16, "reference", 1e-3, 2**20),
        Measurement(16, "dense-sdpa", 1e-3, 2**20),
        Measurement(16, "xformers", note="n/a: device is cpu: it runs on cuda only"),
        Measurement(32, "reference", 2e-3, 2**21),
        Measurement(32, "dense-sdpa", note="skipped: ~9 s per run predicted"),
        Measurement(32, "xformers", note="n/a (as above)"),
    ]
    return result


def test_plot_title_names_the_set_up():
    assert setup_text(_result()) == (
        "demo (bare attnreg.attention, 8 heads of 64): forward+backward, batch 2, bfloat16, cpu"
    )


def test_plot_footnote_names_what_did_not_run_and_why():
    assert missing_text(_result()) == [
        "dense-sdpa: from 32: skipped: ~9 s per run predicted",
        "xformers: n/a: device is cpu: it runs on cuda only",
    ]


def test_plot_with_a_footnote_is_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_result(_result(), tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
