"""What the benchmark scripts share: random checkpoints of the two anchors, alternating timings, the environment.

Why a module: the encoder, train-step and fine-tuning benchmarks all save a random transformers checkpoint that both
libraries then load, and time variants side by side; one copy of each keeps their figures comparable. The scripts
run as ``python benchmarks/NAME.py``, which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import transformers

from attnreg.bench.environment import describe, environment
from attnreg.bench.measure import median_seconds

LONGT5_SIZES: dict[str, dict[str, Any]] = {
    "base": {},  # google/long-t5-tglobal-base: d_model 768, 12 layers, 12 heads of 64, d_ff 2048
    "tiny": {"d_model": 64, "d_kv": 16, "num_heads": 4, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 2},
}
"""``LongT5Config`` fields over the plugin's base size (``attnreg_longt5.models.BASE_CONFIG``)."""

LONGFORMER_SIZES: dict[str, dict[str, int]] = {
    "base": {"hidden": 768, "layers": 12, "heads": 12, "window": 512},  # allenai/longformer-base-4096
    "tiny": {"hidden": 64, "layers": 2, "heads": 4, "window": 64},
}
"""``save_longformer`` sizes; the feed-forward width is four times the hidden size, as in the base model."""


def save_longt5(
    folder: str | Path, pattern: str, *, size: str = "base", layers: int | None = None, seed: int = 0, **fields: Any
) -> transformers.LongT5Config:
    """A random ``LongT5EncoderModel`` of ``size`` (``layers`` encoder layers if given) saved to ``folder``.

    ``fields`` are further ``LongT5Config`` fields (``dropout_rate=0.1``); the weights come from ``seed``.
    """
    from attnreg_longt5.models import make_config

    depth = {} if layers is None else {"num_layers": layers, "num_decoder_layers": layers}
    config = make_config(pattern, **{**LONGT5_SIZES[size], **depth, **fields})
    torch.manual_seed(seed)
    transformers.LongT5EncoderModel(config).save_pretrained(folder)
    return config


def save_longformer(
    folder: str | Path,
    *,
    hidden: int,
    layers: int,
    heads: int,
    window: int,
    max_length: int,
    model_class: type[transformers.PreTrainedModel] = transformers.LongformerModel,
    seed: int = 0,
    **fields: Any,
) -> transformers.LongformerConfig:
    """A random Longformer (``model_class``) with these sizes, positions for ``max_length`` tokens, saved to ``folder``.

    ``fields`` are further ``LongformerConfig`` fields; unless given, both dropouts are off (the same maths on both
    sides). transformers pads inputs to a multiple of the window, so the positions cover ``max_length + window``.
    """
    options: dict[str, Any] = {
        "vocab_size": 50265,
        "type_vocab_size": 1,
        "pad_token_id": 1,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        **fields,
    }
    config = transformers.LongformerConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        attention_window=window,
        max_position_embeddings=max_length + window + 2,
        **options,
    )
    torch.manual_seed(seed)
    model_class(config).save_pretrained(folder)
    return config


def set_hidden_dropout(model: torch.nn.Module, p: float) -> int:
    """Set ``p`` on every ``torch.nn.Dropout`` of ``model``; returns how many there were.

    In transformers' LongT5 and Longformer these modules are the hidden-state dropouts: attention-probability dropout
    is a float on the attention layer (``dropout``), taken from the config. LongT5 has one ``dropout_rate`` for both,
    so a model with attention dropout off but hidden dropout on is built with ``dropout_rate=0`` and then this.
    """
    modules = [module for module in model.modules() if isinstance(module, torch.nn.Dropout)]
    for module in modules:
        module.p = p
    return len(modules)


def model_names(parser: argparse.ArgumentParser, text: str, known: Iterable[str]) -> list[str]:
    """``--models``' comma-separated names, each one of ``known`` (otherwise the parser's usage error)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"--models: unknown {unknown}; expected some of {list(known)}")
    return names


def alternate(
    runs: Mapping[str, Callable[[], object]], device: torch.device, *, repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds of every call of each run, timed alternately: ``warmup`` untimed rounds, then ``repeats`` rounds.

    Alternating spreads a shared machine's slow moments over every variant instead of one. Each call is timed by
    ``attnreg.bench.measure.median_seconds`` (one call, synchronised on CUDA); take the median of each list.
    """
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(repeats):
        for label, run in runs.items():
            times[label].append(median_seconds(run, device, repeats=1, warmup=0))
    return times


def begin(threads: int | None, device: torch.device) -> dict[str, Any]:
    """Start a benchmark run: ``threads`` (None: torch's choice), transformers quiet, the environment printed and
    returned for the report."""
    if threads:
        torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    env = environment(device)
    print(describe(env))
    return env


def save_report(path: Path | None, report: Mapping[str, Any]) -> None:
    """Write ``report`` as JSON to ``path`` (nothing without one); rewritten as a run goes, so a cut-short run keeps
    what it measured."""
    if path is not None:
        path.write_text(json.dumps(report, indent=2, default=str))
