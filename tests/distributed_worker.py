"""One rank of the distributed check, launched by ``tests/test_distributed.py`` through ``torchrun``.

Why a script: ``torchrun`` starts fresh processes. Each rank takes its half of a global batch, runs one training
step of a built model under DDP and under FSDP2 ``fully_shard``, and rank 0 compares the gradients with a
single-process step on the whole batch, writing the largest differences as JSON to ``--out``. The same code runs
on many GPUs with ``--backend nccl`` (see ``docs/distributed.md``).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

import attnreg
from attnreg import Pattern, Window

GLOBAL_BATCH, LENGTH = 4, 24


class SwappedEncoder(nn.Module):
    """A small ``nn.TransformerEncoder`` with an attnreg window pattern swapped in (no plugin needed)."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.embed = nn.Embedding(50, 16)
        encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.encoder = attnreg.swap(encoder, Pattern(window=Window(3, 3)))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embed(input_ids), src_key_padding_mask=~attention_mask.bool())


def longt5_tglobal() -> nn.Module:
    """The longt5-tglobal builder's encoder, tiny (needs the longt5 plugin)."""
    config = {
        "vocab_size": 50,
        "d_model": 16,
        "d_kv": 4,
        "d_ff": 32,
        "num_layers": 2,
        "num_heads": 4,
        "local_radius": 3,
        "global_block_size": 4,
        "dropout_rate": 0.0,
    }
    return attnreg.build("longt5-tglobal", config, head="encoder")


def generic_encoder() -> nn.Module:
    """The core's generic ``encoder`` builder with a windowed pattern (no plugin needed)."""
    sizes = {"vocab_size": 50, "d_model": 16, "n_layers": 2, "num_heads": 4, "d_ff": 32, "max_length": 32}
    return attnreg.build("encoder", pattern=Pattern(window=Window(2, 3)), **sizes)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "encoder": generic_encoder,
    "swapped-encoder": SwappedEncoder,
    "longt5-tglobal": longt5_tglobal,
}


def make_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name]()


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 50, (GLOBAL_BATCH, LENGTH), generator=generator)
    real = torch.ones(GLOBAL_BATCH, LENGTH, dtype=torch.bool)
    real[1, -5:] = False
    real[2, -9:] = False
    return ids, real


def loss_of(model: nn.Module, name: str, ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of a per-example loss, so the average over ranks equals the whole batch's."""
    output = model(input_ids=ids, attention_mask=real.long())
    hidden = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
    hidden = output.last_hidden_state if hidden is None else hidden
    per_example = (hidden.square() * real[..., None]).sum(dim=(1, 2)) / real.sum(dim=1)
    return per_example.mean()


def full_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    grads = {}
    for name, param in model.named_parameters():
        grad = param.grad
        if grad is not None and hasattr(grad, "full_tensor"):
            grad = grad.full_tensor()
        grads[name.replace("_fsdp_wrapped_module.", "").replace("module.", "", 1)] = grad
    return grads


def step(model: nn.Module, name: str, ids: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
    """One SGD step; the gradients it used."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    loss_of(model, name, ids, real).backward()
    grads = full_grads(model)
    optimizer.step()
    return grads


def largest_difference(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    assert set(got) == set(expected), sorted(set(got) ^ set(expected))
    missing = [name for name, grad in got.items() if grad is None]
    assert not missing, f"no gradient for {missing}"
    return max(float((got[name] - expected[name]).abs().max()) for name in expected)


def run(name: str, wrap: str, device: torch.device) -> float:
    rank, world = dist.get_rank(), dist.get_world_size()
    ids, real = (t.to(device) for t in global_batch())
    share = GLOBAL_BATCH // world
    local = slice(rank * share, (rank + 1) * share)
    model = make_model(name).to(device)
    if wrap == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        for module in model.modules():
            if isinstance(module, nn.TransformerEncoderLayer):
                fully_shard(module)
        fully_shard(model)
    grads = step(model, name, ids[local], real[local])
    reference = make_model(name).to(device)
    expected = step(reference, name, ids, real)
    return largest_difference(grads, expected)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="swapped-encoder")
    parser.add_argument("--wraps", default="ddp,fsdp")
    parser.add_argument("--engine", default="blocked")
    parser.add_argument("--backend", default="gloo", help="torch.distributed backend: gloo (CPU) or nccl (GPUs)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    dist.init_process_group(args.backend)
    if args.backend == "nccl":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    torch.set_num_threads(1)
    results = {}
    for name in args.models.split(","):
        for wrap in args.wraps.split(","):
            try:
                with attnreg.backend(args.engine):
                    results[f"{name}/{wrap}"] = {"max_grad_diff": run(name, wrap, device)}
            except Exception as error:  # reported to the test, which fails with it
                results[f"{name}/{wrap}"] = {"error": f"{type(error).__name__}: {error}"}
    if dist.get_rank() == 0:
        text = json.dumps(results, indent=1)
        if args.out:
            with open(args.out, "w") as handle:
                handle.write(text)
        print(text)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
