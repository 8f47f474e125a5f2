"""Longformer encoder: attnreg's build against transformers on one checkpoint, forward and forward + backward.

Why a script and not a test: it times whole encoders at 4k and 16k tokens (minutes on a CPU). Each case runs in a
fresh subprocess so that its peak memory (CUDA: max allocated; CPU: peak RSS above the loaded model) is its own.

    python benchmarks/longformer_encoder.py                       # base size, 4k and 16k, 1 and 64 global tokens
    python benchmarks/longformer_encoder.py --lengths 64 --globals 1 --layers 2 --hidden 64 --heads 4 --window 16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from harness import save_longformer

import attnreg

MODES = ("forward", "forward+backward")
IMPLEMENTATIONS = ("transformers", "attnreg")


def save_checkpoint(args: argparse.Namespace, path: Path) -> None:
    """A random ``LongformerModel`` with the requested sizes, saved by transformers (dropout off: same maths)."""
    sizes = {"hidden": args.hidden, "layers": args.layers, "heads": args.heads, "window": args.window}
    save_longformer(path, **sizes, max_length=max(args.lengths))


def load(implementation: str, path: str) -> torch.nn.Module:
    if implementation == "transformers":
        return transformers.LongformerModel.from_pretrained(path)
    return attnreg.build("longformer", pretrained=path)


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_case(args: argparse.Namespace) -> dict:
    """One implementation, length, global count and mode: median seconds and peak memory above the loaded model."""
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    model = load(args.implementation, args.checkpoint).to(device=device, dtype=dtype).eval()
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 50000, (args.batch, args.length), generator=generator).to(device)
    global_attention_mask = torch.zeros_like(input_ids)
    global_attention_mask[:, : args.num_globals] = 1
    backward = args.mode == "forward+backward"

    def step() -> None:
        with torch.set_grad_enabled(backward), attnreg.backend(args.backend):
            output = model(input_ids, global_attention_mask=global_attention_mask).last_hidden_state
            if backward:
                output.float().sum().backward()
                model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = peak_bytes(device)
    times = []
    for _ in range(args.warmup + args.repeat):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times[args.warmup :]), "peak_bytes": peak_bytes(device) - before}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--globals", type=int, nargs="+", default=[1, 64], dest="global_counts")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--backend", default=None, help="attnreg engine to pin (default: the dispatcher's choice)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in each case")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    # one case, in a subprocess
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--implementation", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--num-globals", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.implementation:
        print(json.dumps(run_case(args)))
        return 0

    shared = [f"--{k}={getattr(args, k)}" for k in ("batch", "repeat", "warmup", "device", "dtype")]
    shared += [f"--backend={args.backend}"] if args.backend else []
    shared += [f"--threads={args.threads}"] if args.threads else []
    results = []
    with tempfile.TemporaryDirectory() as checkpoint:
        save_checkpoint(args, Path(checkpoint))
        print(
            f"{'mode':<17}{'length':>7}{'globals':>8} | {'transformers s':>14}{'MiB':>8} | {'attnreg s':>10}"
            f"{'MiB':>8} | {'speed-up':>8}"
        )
        for mode in args.modes:
            for length in args.lengths:
                for count in args.global_counts:
                    row = {"mode": mode, "length": length, "globals": count}
                    for implementation in IMPLEMENTATIONS:
                        command = [
                            sys.executable,
                            __file__,
                            f"--checkpoint={checkpoint}",
                            *shared,
                            f"--implementation={implementation}",
                            f"--length={length}",
                            f"--num-globals={count}",
                            f"--mode={mode}",
                        ]
                        done = subprocess.run(command, capture_output=True, text=True)
                        if done.returncode:
                            row[implementation] = {"error": done.stderr.strip().splitlines()[-1:]}
                        else:
                            row[implementation] = json.loads(done.stdout.strip().splitlines()[-1])
                    results.append(row)
                    print(format_row(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def format_row(row: dict) -> str:
    cells = []
    for implementation in IMPLEMENTATIONS:
        result = row[implementation]
        if "error" in result:
            cells.append(f"{'failed':>14}{'':>8}" if implementation == "transformers" else f"{'failed':>10}{'':>8}")
            continue
        width = 14 if implementation == "transformers" else 10
        cells.append(f"{result['seconds']:>{width}.3f}{result['peak_bytes'] / 2**20:>8.0f}")
    theirs, ours = row["transformers"], row["attnreg"]
    speedup = f"{theirs['seconds'] / ours['seconds']:.2f}x" if "seconds" in theirs and "seconds" in ours else "-"
    return f"{row['mode']:<17}{row['length']:>7}{row['globals']:>8} | {cells[0]} | {cells[1]} | {speedup:>8}"


if __name__ == "__main__":
    raise SystemExit(main())
