"""Decoder LLMs: attnreg (``attn_implementation="attnreg"``) against transformers' sdpa and eager, side by side.

What it measures, on one random sliding-window Mistral (``--layers`` 2, hidden 512, 8 heads of 64, window 512 by
default, the issue's set-up):

- prefill: one forward over the prompt without a cache (``use_cache=False``, logits of the last token only), at each
  ``--lengths``; the variants alternate round after round; time is the median of ``--repeats``; peak memory is the most
  bytes the forward holds above the weights and inputs (``attnreg.bench.measure``, a first untimed run);
- decode: the cost of one new token with the cache at a ``--context``-token prompt: each variant prefills the prompt
  once (with the cache), then its ``--steps`` cached single-token steps are timed (the median step).

eager is run only where its ``length²`` scores fit (``--eager-max``); sdpa is tried at every length and reported as
failed where it does not fit. Targets (issue 14): sliding-window prefill at 16k at least 3x faster than sdpa with peak
memory at most 0.3x of it; 32k runs; decode per token at 16k no slower than sdpa.

    python benchmarks/decoder.py                                   # 4k, 16k, 32k prefill; decode at 16k
    python benchmarks/decoder.py --lengths 4096 --context 4096 --json decoder.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers
from harness import alternate, begin, save_report

from attnreg.bench.measure import cpu_peak_bytes, cuda_peak_bytes, median_seconds
from attnreg.integrations import transformers_bridge

IMPLEMENTATIONS = ("attnreg", "sdpa", "eager")
PREFILL_SPEEDUP, PREFILL_MEMORY, TARGET_LENGTH = 3.0, 0.3, 16384


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="4096,16384,32768", help="prefill lengths (default 4096,16384,32768)")
    parser.add_argument("--context", type=int, default=16384, help="the decode benchmark's prompt length")
    parser.add_argument("--steps", type=int, default=8, help="cached decode steps timed per variant")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eager-max", type=int, default=8192, help="longest prefill eager is run at")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--json", type=Path, help="write every figure and the environment here")
    return parser.parse_args(argv)


def make_model(args: argparse.Namespace, folder: Path) -> transformers.MistralForCausalLM:
    """A random sliding-window Mistral, saved and loaded back as a user would load a checkpoint."""
    config = transformers.MistralConfig(
        vocab_size=1000, hidden_size=512, intermediate_size=1024, num_hidden_layers=args.layers,
        num_attention_heads=8, num_key_value_heads=8, sliding_window=args.window,
        max_position_embeddings=max(args.context, *map(int, args.lengths.split(","))) + args.steps + 1,
    )
    torch.manual_seed(0)
    transformers.MistralForCausalLM(config).save_pretrained(folder)
    model = transformers.MistralForCausalLM.from_pretrained(folder, dtype=getattr(torch, args.dtype))
    return model.to(args.device).eval()


def _peak(fn, device: torch.device) -> int:
    return cuda_peak_bytes(fn, device) if device.type == "cuda" else cpu_peak_bytes(fn)


def prefill(model, length: int, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each implementation's prefill at ``length``: peak memory from a first run, then alternating timed runs."""
    device = torch.device(args.device)
    ids = torch.randint(3, 999, (1, length), generator=torch.Generator().manual_seed(length)).to(device)

    def forward(implementation: str):
        def run() -> None:
            model.set_attn_implementation(implementation)
            with torch.no_grad():
                model(ids, use_cache=False, logits_to_keep=1)

        return run

    figures: dict[str, dict[str, Any]] = {}
    runs = {}
    for implementation in IMPLEMENTATIONS:
        if implementation == "eager" and length > args.eager_max:
            figures[implementation] = {"skipped": f"length {length} > --eager-max {args.eager_max}"}
            continue
        try:
            figures[implementation] = {"peak_mib": _peak(forward(implementation), device) / 2**20}
            runs[implementation] = forward(implementation)
        except (RuntimeError, MemoryError) as error:  # out of memory above all
            figures[implementation] = {"failed": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
    for implementation, times in alternate(runs, device, repeats=args.repeats, warmup=0).items():
        figures[implementation]["ms"] = statistics.median(times) * 1e3
    return figures


def decode(model, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each implementation's cached step at ``--context`` tokens of prompt: the median of ``--steps`` single steps."""
    device = torch.device(args.device)
    prompt = torch.randint(3, 999, (1, args.context), generator=torch.Generator().manual_seed(1)).to(device)
    figures = {}
    for implementation in ("attnreg", "sdpa"):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            out = model(prompt, use_cache=True, logits_to_keep=1)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            times = []
            for _ in range(args.steps):
                step = {}

                def one(token=token, step=step, cache=cache) -> None:
                    step["out"] = model(token, past_key_values=cache, use_cache=True)

                times.append(median_seconds(one, device, repeats=1, warmup=0))
                token = step["out"].logits[:, -1:].argmax(-1)
        figures[implementation] = {"ms_per_token": statistics.median(times) * 1e3, "steps_ms": [t * 1e3 for t in times]}
    return figures


def table(report: dict[str, Any]) -> str:
    """The prefill and decode figures as markdown, with the ratios the targets are about."""
    lines = ["| prefill length | implementation | ms | peak MiB | vs sdpa (time) | vs sdpa (memory) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for length, figures in report["prefill"].items():
        sdpa = figures.get("sdpa", {})
        for implementation, f in figures.items():
            if "ms" not in f:
                lines.append(f"| {length} | {implementation} | {f.get('skipped') or f.get('failed')} | | | |")
                continue
            speed = f"{sdpa['ms'] / f['ms']:.2f}x faster" if "ms" in sdpa else ""
            memory = f"{f['peak_mib'] / sdpa['peak_mib']:.2f}" if "peak_mib" in sdpa else ""
            cells = f"{f['ms']:,.0f} | {f['peak_mib']:,.0f} | {speed} | {memory}"
            lines.append(f"| {length} | {implementation} | {cells} |")
    decode_figures = report.get("decode", {})
    if decode_figures:
        lines += ["", f"| decode at {report['context']} tokens | ms per token |", "| --- | --- |"]
        lines += [f"| {name} | {f['ms_per_token']:.1f} |" for name, f in decode_figures.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {"environment": begin(args.threads, torch.device(args.device)), "args": vars(args)}
    transformers_bridge.register_all()
    with tempfile.TemporaryDirectory() as folder:
        model = make_model(args, Path(folder))
    report["prefill"], report["context"] = {}, args.context
    for length in (int(part) for part in args.lengths.split(",") if part.strip()):
        report["prefill"][length] = prefill(model, length, args)
        print(f"prefill {length}: {report['prefill'][length]}", flush=True)
        save_report(args.json, report)
    if args.context:
        report["decode"] = decode(model, args)
        save_report(args.json, report)
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
