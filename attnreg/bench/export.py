"""A benchmark's figures as files: JSON (settings, environment, measurements) or CSV (one row per measurement).

Why the environment goes in: a figure is only comparable with others from the same versions, threads and hardware,
so each file carries them (:func:`attnreg.bench.environment.environment`); a CSV row repeats them, so rows from
several runs can be put in one table and still say where each came from.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attnreg.bench.runner import BenchResult, Measurement


def settings(result: BenchResult) -> dict[str, Any]:
    """How ``result`` was measured: benchmark, mode, pass, batch, dtype, device, repeats, time limit."""
    return {
        "benchmark": result.name,
        "mode": result.mode,
        "pass": "forward+backward" if result.grad else "forward",
        "batch": result.batch,
        "dtype": str(result.dtype).removeprefix("torch."),
        "device": str(result.device),
        "repeats": result.repeats,
        "max_seconds": result.max_seconds,
    }


def _row(measurement: Measurement) -> dict[str, Any]:
    """One measurement: median seconds and peak bytes (None when not measured, the note says why)."""
    return {
        "length": measurement.length,
        "variant": measurement.label,
        "median_seconds": measurement.seconds,
        "peak_bytes": measurement.peak_bytes,
        "note": measurement.note,
    }


def to_record(result: BenchResult, environment: Mapping[str, Any]) -> dict[str, Any]:
    """``{"settings": ..., "environment": ..., "measurements": [...]}``, as :func:`write_json` writes it."""
    return {
        "settings": settings(result),
        "environment": dict(environment),
        "measurements": [_row(m) for m in result.measurements],
    }


def write_json(result: BenchResult, environment: Mapping[str, Any], path: str | Path) -> Path:
    """Write :func:`to_record` to ``path`` as indented JSON."""
    path = Path(path)
    path.write_text(json.dumps(to_record(result, environment), indent=2) + "\n")
    return path


def write_csv(result: BenchResult, environment: Mapping[str, Any], path: str | Path) -> Path:
    """Write one row per measurement to ``path``: the settings, the measurement, then the environment's other fields
    (lists joined by spaces, None as an empty cell)."""
    fixed = settings(result)
    env = {
        key: " ".join(value) if isinstance(value, list) else value
        for key, value in environment.items()
        if key not in fixed  # the device, said once
    }
    rows = [{**fixed, **_row(m), **env} for m in result.measurements]
    columns = [*fixed, *_row(Measurement(0, "")), *env]
    path = Path(path)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path
