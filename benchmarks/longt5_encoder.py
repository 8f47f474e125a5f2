"""LongT5 encoder, forward and forward+backward, attnreg against transformers on the same checkpoint, side by side.

Both models load one checkpoint (``--pretrained``, or a random one of ``--size`` saved to a temporary folder): plain
``LongT5EncoderModel`` and ``attnreg.build(..., head="encoder")``. For each length it reports the median time and the
peak working memory (above weights and inputs) of each, and the largest output difference at real positions.

    python benchmarks/longt5_encoder.py --lengths 4096,16384
    python benchmarks/longt5_encoder.py --pretrained google/long-t5-tglobal-base --device cuda --dtype bfloat16
    python benchmarks/longt5_encoder.py --size tiny --lengths 256 --repeats 1     # smoke run
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable

import torch
from harness import LONGT5_SIZES, save_longt5
from transformers import LongT5EncoderModel

import attnreg
from attnreg.bench.measure import median_seconds, peak_bytes

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", choices=["longt5-tglobal", "longt5-local"], default="longt5-tglobal")
    parser.add_argument("--pretrained", help="a checkpoint folder or hub id (default: a random one of --size)")
    parser.add_argument(
        "--size", choices=sorted(LONGT5_SIZES), default="base", help="random checkpoint size (default base)"
    )
    parser.add_argument("--layers", type=int, help="encoder layers of the random checkpoint (default: the size's)")
    parser.add_argument("--lengths", default="4096,16384", help="comma-separated lengths (default 4096,16384)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case, median reported (default 3)")
    parser.add_argument("--backend", help="pin an attnreg engine (default: the dispatcher chooses)")
    parser.add_argument("--forward-only", action="store_true", help="skip forward+backward")
    return parser.parse_args(argv)


def load_models(args: argparse.Namespace, folder: str) -> dict[str, torch.nn.Module]:
    """transformers' encoder and attnreg's, from the same checkpoint folder or hub id."""
    dtype = DTYPES[args.dtype]
    theirs = LongT5EncoderModel.from_pretrained(folder, dtype=dtype)
    ours = attnreg.build(args.pattern, pretrained=folder, head="encoder", dtype=dtype, backend=args.backend)
    return {"transformers": theirs.to(args.device).eval(), "attnreg": ours.to(args.device).eval()}


def step(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, backward: bool) -> Callable[[], object]:
    """One forward (no grad), or one forward+backward of the summed output with the gradients dropped after."""

    def forward() -> object:
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).last_hidden_state

    def forward_backward() -> object:
        model(input_ids=ids, attention_mask=mask).last_hidden_state.float().sum().backward()
        model.zero_grad(set_to_none=True)

    return forward_backward if backward else forward


def measure(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[str, str]:
    """``(seconds, MiB)`` as text, or ``("OOM", "OOM")``."""
    try:
        seconds = median_seconds(fn, device, repeats=repeats)
        mib = peak_bytes(fn, device) / 2**20
    except torch.OutOfMemoryError:
        return "OOM", "OOM"
    return f"{seconds:.3f}", f"{mib:.0f}"


def ratio(theirs: str, ours: str) -> str:
    try:
        return f"{float(theirs) / float(ours):.2f}x"
    except (ValueError, ZeroDivisionError):
        return "-"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    lengths = [int(part) for part in args.lengths.split(",") if part.strip()]
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.pretrained
        if checkpoint is None:
            save_longt5(folder, args.pattern, size=args.size, layers=args.layers)
            checkpoint = folder
        models = load_models(args, checkpoint)
        config = models["attnreg"].config
        print(
            f"{args.pattern} encoder, {checkpoint if args.pretrained else 'random ' + args.size}: d_model "
            f"{config.d_model}, {config.num_layers} layers, {config.num_heads} heads, radius {config.local_radius}, "
            f"global blocks {config.global_block_size}; batch {args.batch}, {args.dtype} on {device}, "
            f"attnreg engine: {args.backend or 'dispatcher'}"
        )
        header = ("length", "mode", "hf s", "attnreg s", "speed-up", "hf MiB", "attnreg MiB", "mem ratio", "max diff")
        print(" | ".join(header))
        print(" | ".join("---" for _ in header))
        generator = torch.Generator().manual_seed(0)
        for length in lengths:
            ids = torch.randint(2, config.vocab_size, (args.batch, length), generator=generator).to(device)
            mask = torch.ones_like(ids)
            with torch.no_grad():
                outputs = [step(models[label], ids, mask, False)() for label in ("transformers", "attnreg")]
            diff = (outputs[0].float() - outputs[1].float()).abs().max().item()
            del outputs
            for backward in [False] if args.forward_only else [False, True]:
                theirs = measure(step(models["transformers"], ids, mask, backward), device, args.repeats)
                ours = measure(step(models["attnreg"], ids, mask, backward), device, args.repeats)
                row = (length, "fwd+bwd" if backward else "fwd", theirs[0], ours[0], ratio(theirs[0], ours[0]))
                row += (theirs[1], ours[1], ratio(theirs[1], ours[1]), f"{diff:.1e}")
                print(" | ".join(str(cell) for cell in row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
