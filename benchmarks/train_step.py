"""One training step with attention dropout: transformers against attnreg, with and without the dropout, side by side.

What it measures: one optimiser-free train step (train mode, forward, the loss ``last_hidden_state.sum()``, backward;
gradients dropped after) of (a) the LongT5-TGlobal encoder (``LongT5EncoderModel`` against
``attnreg.build("longt5-tglobal", pretrained=..., head="encoder")``) and (b) ``LongformerModel`` with one global token
(against ``attnreg.build("longformer", pretrained=...)``), all loaded from one random checkpoint per model. Dropout is
set explicitly to the configs' defaults: LongT5 ``dropout_rate=0.1`` (attention probabilities and hidden states),
Longformer ``attention_probs_dropout_prob=0.1`` and ``hidden_dropout_prob=0.1``. Three variants per length:

- ``transformers``: attention dropout 0.1;
- ``attnreg``: attention dropout 0.1;
- ``attnreg p=0``: attention dropout 0, hidden-state dropout still 0.1 (Longformer: built with
  ``attention_probs_dropout_prob=0``; LongT5, whose one ``dropout_rate`` drives both: built with ``dropout_rate=0``,
  then its ``nn.Dropout`` modules, the hidden-state ones, set back to 0.1). Its ratio to ``attnreg`` is what the
  attention dropout itself costs.

At each length the three run alternately, round after round (a shared machine's slow moments hit all of them), the
global seed reset before every step so both libraries see the same inputs and start from the same random state (their
dropout draws still differ: each library consumes the generator in its own order). Time is the median of ``--repeats``
steps; peak memory is the most bytes one step holds above the weights and inputs (``attnreg.bench.measure``: on CPU
from the profiler's allocation events, in a first, untimed run that doubles as the warm-up).

How to read it: one markdown table per model; ``dropout cost`` = attnreg / attnreg p=0 (target at most 1.3x for
Longformer at 8k and 16k), ``speed-up`` = transformers / attnreg (targets: Longformer at least 2.5x at 8k and 16k,
LongT5-TGlobal at least 3x at 16k), ``growth`` = attnreg's time against its time at half the length (target at most
2.2x from 8k to 16k), ``memory`` = attnreg's peak / transformers' (target at most 0.5, checked at 16k). A closing table
says which targets are met. ``--json FILE`` writes every figure, each step's time and the environment.

    python benchmarks/train_step.py --layers 2                                  # the issue's run: 4k, 8k, 16k
    python benchmarks/train_step.py --models longformer --lengths 8192,16384 --json train_step.json
    python benchmarks/train_step.py --size tiny --lengths 512 --layers 1 --repeats 1   # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from harness import (
    LONGFORMER_SIZES,
    alternate,
    begin,
    model_names,
    save_longformer,
    save_longt5,
    save_report,
    set_hidden_dropout,
)

import attnreg
from attnreg.bench.measure import peak_bytes

MODELS = ("longt5-tglobal", "longformer")
TRANSFORMERS, ATTNREG, NO_DROPOUT = "transformers", "attnreg", "attnreg p=0"
VARIANTS = (TRANSFORMERS, ATTNREG, NO_DROPOUT)


@dataclass(frozen=True)
class Target:
    """At ``length``, ``metric`` (a column of the table) must be at most (or at least) ``limit``."""

    model: str
    metric: str
    length: int
    limit: float
    at_most: bool

    def met(self, value: float) -> bool:
        return value <= self.limit if self.at_most else value >= self.limit


TARGETS = [
    Target("longformer", "dropout cost", 8192, 1.3, at_most=True),
    Target("longformer", "dropout cost", 16384, 1.3, at_most=True),
    Target("longformer", "speed-up", 8192, 2.5, at_most=False),
    Target("longformer", "speed-up", 16384, 2.5, at_most=False),
    Target("longt5-tglobal", "speed-up", 16384, 3.0, at_most=False),
    *(Target(model, "growth", 16384, 2.2, at_most=True) for model in MODELS),
    *(Target(model, "memory", 16384, 0.5, at_most=True) for model in MODELS),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--lengths", default="4096,8192,16384", help="comma-separated lengths (default 4k, 8k, 16k)")
    parser.add_argument("--layers", type=int, default=2, help="encoder layers (default 2)")
    parser.add_argument(
        "--size", choices=sorted(LONGFORMER_SIZES), default="base", help="widths: base (768, 12 heads) or tiny (64)"
    )
    parser.add_argument("--dropout", type=float, default=0.1, help="attention and hidden dropout (default 0.1)")
    parser.add_argument("--globals", type=int, default=1, dest="num_globals", help="Longformer global tokens (1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant, median reported (3)")
    parser.add_argument("--seed", type=int, default=0, help="global seed set before every step (0)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", help="pin an attnreg engine on every attnreg layer (default: the dispatcher)")
    parser.add_argument("--json", type=Path, help="write the figures and the environment here")
    args = parser.parse_args(argv)
    args.models = model_names(parser, args.models, MODELS)
    args.lengths = sorted({int(part) for part in args.lengths.split(",") if part.strip()})
    return args


def save_checkpoint(name: str, folder: str, args: argparse.Namespace) -> Any:
    """A random checkpoint of ``name`` with the configs' default dropouts set explicitly; returns its config."""
    if name == "longt5-tglobal":
        return save_longt5(folder, name, size=args.size, layers=args.layers, dropout_rate=args.dropout)
    sizes = {**LONGFORMER_SIZES[args.size], "layers": args.layers}
    dropouts = {"hidden_dropout_prob": args.dropout, "attention_probs_dropout_prob": args.dropout}
    return save_longformer(folder, **sizes, max_length=max(args.lengths), **dropouts)


def load_variants(name: str, folder: str, args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    """transformers' model, attnreg's, and attnreg's with attention dropout 0, from ``folder``, in train mode."""
    if name == "longt5-tglobal":
        theirs = transformers.LongT5EncoderModel.from_pretrained(folder)
        ours = attnreg.build(name, pretrained=folder, head="encoder")
        undropped = attnreg.build(name, pretrained=folder, head="encoder", dropout_rate=0.0)
        set_hidden_dropout(undropped, args.dropout)
    else:
        theirs = transformers.LongformerModel.from_pretrained(folder)
        ours = attnreg.build(name, pretrained=folder)
        undropped = attnreg.build(name, pretrained=folder, attention_probs_dropout_prob=0.0)
    models = {TRANSFORMERS: theirs, ATTNREG: ours, NO_DROPOUT: undropped}
    return {label: model.to(args.device).train() for label, model in models.items()}


def make_inputs(name: str, length: int, vocab_size: int, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """The same random tokens for every variant at ``length`` (Longformer: the first ``--globals`` tokens global)."""
    generator = torch.Generator().manual_seed(args.seed + length)
    input_ids = torch.randint(3, vocab_size, (1, length), generator=generator).to(args.device)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if name == "longformer":
        global_attention_mask = torch.zeros_like(input_ids)
        global_attention_mask[:, : args.num_globals] = 1
        inputs["global_attention_mask"] = global_attention_mask
    return inputs


def train_step(model: torch.nn.Module, inputs: dict[str, torch.Tensor], seed: int) -> Callable[[], None]:
    """Seed, forward in train mode, ``last_hidden_state.sum()``, backward, drop the gradients."""

    def step() -> None:
        torch.manual_seed(seed)
        model(**inputs).last_hidden_state.float().sum().backward()
        model.zero_grad(set_to_none=True)

    return step


def eval_difference(models: dict[str, torch.nn.Module], inputs: dict[str, torch.Tensor]) -> float:
    """The largest output difference between transformers' and attnreg's in eval mode: the same weights were loaded."""
    outputs = []
    with torch.no_grad():
        for label in (TRANSFORMERS, ATTNREG):
            model = models[label].eval()
            outputs.append(model(**inputs).last_hidden_state.float())
            model.train()
    return (outputs[0] - outputs[1]).abs().max().item()


def measure_length(
    models: dict[str, torch.nn.Module], inputs: dict[str, torch.Tensor], args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """Each variant's peak memory (the first, untimed step), then its step times, the variants alternating."""
    device = torch.device(args.device)
    steps = {label: train_step(model, inputs, args.seed) for label, model in models.items()}
    figures: dict[str, dict[str, Any]] = {}
    for label, step in steps.items():
        try:
            figures[label] = {"peak_mib": peak_bytes(step, device) / 2**20}
        except (RuntimeError, MemoryError) as error:  # out of memory, or an engine that refuses the call
            figures[label] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    runnable = {label: step for label, step in steps.items() if "error" not in figures[label]}
    for label, times in alternate(runnable, device, repeats=args.repeats, warmup=0).items():
        figures[label]["times_ms"] = [seconds * 1e3 for seconds in times]
        figures[label]["ms"] = statistics.median(times) * 1e3
    return figures


def ratios(figures: dict[str, dict[str, Any]], half: dict[str, dict[str, Any]] | None) -> dict[str, float | None]:
    """The table's ratios at one length; ``half``: the figures at half this length, for the growth."""

    def quotient(top: dict[str, Any] | None, bottom: dict[str, Any] | None, key: str) -> float | None:
        if top is None or bottom is None or key not in top or key not in bottom or not bottom[key]:
            return None
        return top[key] / bottom[key]

    return {
        "dropout cost": quotient(figures[ATTNREG], figures[NO_DROPOUT], "ms"),
        "speed-up": quotient(figures[TRANSFORMERS], figures[ATTNREG], "ms"),
        "growth": quotient(figures[ATTNREG], half and half[ATTNREG], "ms"),
        "memory": quotient(figures[ATTNREG], figures[TRANSFORMERS], "peak_mib"),
    }


HEADER = (
    "| length | transformers ms | attnreg ms | attnreg p=0 ms | dropout cost | speed-up | growth "
    "| transformers MiB | attnreg MiB | attnreg p=0 MiB | memory |"
)


def table_row(length: int, figures: dict[str, dict[str, Any]], found: dict[str, float | None]) -> str:
    def cell(label: str, key: str) -> str:
        figure = figures[label]
        return f"{figure[key]:,.0f}" if key in figure else "failed"

    def times(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    cells = [str(length), *(cell(label, "ms") for label in VARIANTS)]
    cells += [times(found[key]) for key in ("dropout cost", "speed-up", "growth")]
    cells += [cell(label, "peak_mib") for label in VARIANTS]
    cells.append("-" if found["memory"] is None else f"{found['memory']:.2f}")
    return "| " + " | ".join(cells) + " |"


def target_lines(results: dict[str, dict[int, dict[str, Any]]]) -> tuple[list[str], list[dict[str, Any]]]:
    """The targets whose model and length were run: the markdown table and the same as records."""
    lines = ["| model | metric | length | value | target | met |", "| --- | --- | --- | --- | --- | --- |"]
    records = []
    for target in TARGETS:
        entry = results.get(target.model, {}).get(target.length)
        if entry is None:
            continue
        value = entry["ratios"][target.metric]
        bound = f"{'<=' if target.at_most else '>='} {target.limit}"
        verdict = "n/a" if value is None else ("yes" if target.met(value) else "no")
        shown = "-" if value is None else f"{value:.2f}"
        lines.append(f"| {target.model} | {target.metric} | {target.length} | {shown} | {bound} | {verdict} |")
        records.append({**asdict(target), "value": value, "met": None if value is None else target.met(value)})
    return lines, records


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = begin(args.threads, torch.device(args.device))
    print(
        f"one train step (forward + backward of last_hidden_state.sum()), {args.size} widths, {args.layers} layers, "
        f"dropout {args.dropout} (attention and hidden), batch 1, float32, median of {args.repeats}; attnreg engine: "
        f"{args.backend or 'dispatcher'}\n",
        flush=True,
    )
    report: dict[str, Any] = {"environment": env, "settings": {**vars(args), "json": str(args.json)}, "models": {}}
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for name in args.models:
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            config = save_checkpoint(name, folder, args)
            models = load_variants(name, folder, args)
            report["models"][name] = {"config": config.to_diff_dict(), "lengths": results.setdefault(name, {})}
            print(f"## {name}\n\n{HEADER}\n|{' --- |' * (HEADER.count('|') - 1)}", flush=True)
            for index, length in enumerate(args.lengths):
                inputs = make_inputs(name, length, config.vocab_size, args)
                entry: dict[str, Any] = {}
                if index == 0:
                    entry["eval_max_abs_diff"] = eval_difference(models, inputs)
                with attnreg.backend(args.backend):
                    entry["variants"] = measure_length(models, inputs, args)
                half = results[name].get(length // 2)
                entry["ratios"] = ratios(entry["variants"], half and half["variants"])
                results[name][length] = entry
                print(table_row(length, entry["variants"], entry["ratios"]), flush=True)
                save_report(args.json, report)
            del models
        first = results[name][args.lengths[0]]
        print(f"\neval-mode output difference at {args.lengths[0]}: {first['eval_max_abs_diff']:.1e}")
        for message in dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught):
            print(f"warning during the run: {message}")
        print(flush=True)
    lines, records = target_lines(results)
    report["targets"] = records
    if records:
        print("## targets\n\n" + "\n".join(lines))
    save_report(args.json, report)
    if args.json:
        print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
