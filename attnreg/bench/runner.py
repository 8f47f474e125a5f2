"""Run a benchmark: every variant at every length, side by side, skipping what would obviously not fit.

Why the skips: a quadratic variant (the dense reference, dense SDPA, transformers' TGlobal layer) at 32k tokens would
take minutes or all the memory; its growth measured at the shorter lengths predicts that, and the table says so.
"""

from __future__ import annotations

import gc
import math
import re
import sys
from dataclasses import dataclass, field

import torch

from attnreg._validation import PatternError
from attnreg.bench.cases import Variant, bare_variants, engine_labels, layer_variants
from attnreg.bench.measure import available_bytes, median_seconds, peak_bytes
from attnreg.registry import get_registry

#: A measurement is skipped when predicted to need more than this share of the free memory.
_MEMORY_SHARE = 0.5
#: A quadratic variant is not started beyond this length without a shorter measurement to predict from.
_BLIND_QUADRATIC_LIMIT = 8192


@dataclass(frozen=True)
class Measurement:
    """One variant at one length: median seconds and peak bytes, or a note saying why there are none."""

    length: int
    label: str
    seconds: float | None = None
    peak_bytes: int | None = None
    note: str = ""


@dataclass
class BenchResult:
    """Everything one run measured, and how."""

    name: str
    mode: str
    grad: bool
    batch: int
    dtype: torch.dtype
    device: torch.device
    repeats: int
    max_seconds: float = 60.0
    measurements: list[Measurement] = field(default_factory=list)

    def labels(self) -> list[str]:
        """The variants in the order they were first measured."""
        return list(dict.fromkeys(m.label for m in self.measurements))

    def lengths(self) -> list[int]:
        return sorted({m.length for m in self.measurements})

    def get(self, label: str, length: int) -> Measurement | None:
        return next((m for m in self.measurements if m.label == label and m.length == length), None)

    def measured(self, label: str) -> list[Measurement]:
        """``label``'s timed measurements (skipped and failed ones left out), by length."""
        return sorted(
            (m for m in self.measurements if m.label == label and m.seconds is not None), key=lambda m: m.length
        )


def _quadratic(label: str) -> bool:
    """Whether the variant ``label`` is an engine declaring quadratic time and memory (``Engine.quadratic_memory``)."""
    engine = next((engine for engine in get_registry().engines() if engine.name == label), None)
    return engine is not None and engine.quadratic_memory


def _predict(history: list[Measurement], label: str, length: int) -> tuple[float, float] | None:
    """Seconds and bytes at ``length`` extrapolated from the measured lengths (power law in the length)."""
    points = [m for m in history if m.seconds is not None]
    if not points:
        return None
    last = points[-1]
    ratio = length / last.length
    if len(points) >= 2:
        before = points[-2]
        span = math.log(last.length / before.length)
        time_exp = min(max(math.log(last.seconds / before.seconds) / span, 1.0), 2.2)
        mem_exp = min(max(math.log(max(last.peak_bytes, 1) / max(before.peak_bytes, 1)) / span, 1.0), 2.2)
    else:
        time_exp = mem_exp = 2.0 if _quadratic(label) else 1.3  # assumed before two lengths are measured
    return last.seconds * ratio**time_exp, (last.peak_bytes or 0) * ratio**mem_exp


def _short(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    text = re.sub(r"^backend='[^']*' cannot run this call: ", "", text)
    return text if len(text) <= 160 else text[:157] + "..."


def run_benchmark(
    name: str,
    *,
    lengths: list[int],
    grad: bool = False,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    repeats: int = 3,
    engines: list[str] | None = None,
    params: dict | None = None,
    bare: bool = False,
    max_seconds: float = 60.0,
    progress: bool = True,
) -> BenchResult:
    """Measure benchmark ``name`` (a registered layer benchmark, else a pattern as a bare call) at every length.

    ``max_seconds`` bounds one variant's predicted time at one length (its repeats included); beyond it, or beyond
    half the free memory, the variant is skipped at that length and the longer ones.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    registry = get_registry()
    layer = None if bare else registry.benchmarks.get(name)
    pattern = None
    if layer is None:
        pattern = registry.get_pattern(name, **(params or {}))
    elif params:
        raise PatternError(f"pattern parameters {sorted(params)} are not allowed with layer benchmark {name!r}")
    labels = engine_labels(engines)
    result = BenchResult(name, "layer" if layer else "bare", grad, batch, dtype, device, repeats, max_seconds)
    history: dict[str, list[Measurement]] = {}
    stopped: dict[str, str] = {}
    total = len(lengths) * (len(labels) + (1 if layer else 0))
    with tqdm(total=total, desc=name, unit="run", file=sys.stderr, disable=not progress, leave=False) as bar:
        options = {"batch": batch, "device": device, "dtype": dtype, "grad": grad, "engines": labels}
        for length in lengths:
            if layer is not None:
                variants = layer_variants(layer, length, **options)
            else:
                variants = bare_variants(pattern, length, **options)
            for variant in variants:
                bar.set_postfix_str(f"length {length}: {variant.label}")
                measurement = _measure(variant, length, history.get(variant.label, []), stopped, result)
                result.measurements.append(measurement)
                history.setdefault(variant.label, []).append(measurement)
                bar.update(1)
            gc.collect()
    return result


def _measure(
    variant: Variant, length: int, history: list[Measurement], stopped: dict[str, str], result: BenchResult
) -> Measurement:
    """Measure one variant at one length, or say why not (a variant stopped once stays stopped at longer lengths)."""
    label = variant.label
    if label in stopped:
        return Measurement(length, label, note=stopped[label].split(":")[0] + " (as above)")
    reason = _skip_reason(label, length, _predict(history, label, length), result)
    if reason is None:
        try:
            peak = peak_bytes(variant.run, result.device)
            seconds = median_seconds(variant.run, result.device, repeats=result.repeats, warmup=0)
            return Measurement(length, label, seconds, peak)
        except PatternError as error:  # an engine that cannot run this call (the message says why)
            reason = f"n/a: {_short(error)}"
        except (RuntimeError, MemoryError) as error:
            if result.device.type == "cuda":
                torch.cuda.empty_cache()
            return Measurement(length, label, note=f"failed: {_short(error)}")
    stopped[label] = reason
    return Measurement(length, label, note=reason)


def _skip_reason(label: str, length: int, predicted: tuple[float, float] | None, result: BenchResult) -> str | None:
    """Why not to start ``label`` at ``length``: predicted too slow or too large, or quadratic with no prediction."""
    if predicted is None:
        if _quadratic(label) and length > _BLIND_QUADRATIC_LIMIT:
            return f"skipped: quadratic, not started above {_BLIND_QUADRATIC_LIMIT} without a shorter run"
        return None
    seconds, memory = predicted
    if seconds * (result.repeats + 1) > result.max_seconds:
        return f"skipped: ~{seconds:.0f} s per run predicted"
    if memory > _MEMORY_SHARE * available_bytes(result.device):
        return f"skipped: ~{memory / 2**30:.1f} GiB predicted"
    return None
