"""Distributed training: 2 ``torchrun`` processes (gloo, loopback) give the gradients of one process on the whole batch.

DDP and FSDP2 ``fully_shard`` both run on CPU with gloo. The worker is ``tests/distributed_worker.py``; one launch
checks every model and wrapper, to pay the process start-up once.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("distributed_worker.py")
MODELS = ["encoder", "swapped-encoder"] + (["longt5-tglobal"] if importlib.util.find_spec("attnreg_longt5") else [])
WRAPS = ["ddp", "fsdp"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("distributed") / "results.json"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(WORKER),
        "--models",
        ",".join(MODELS),
        "--wraps",
        ",".join(WRAPS),
        "--engine",
        "blocked",
        "--backend",
        "gloo",
        "--out",
        str(out),
    ]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, check=False)
    assert done.returncode == 0 and out.exists(), f"torchrun failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return json.loads(out.read_text())


@pytest.mark.parametrize("wrap", WRAPS)
@pytest.mark.parametrize("model", MODELS)
def test_two_process_step_has_the_single_process_gradients(results, model, wrap):
    result = results[f"{model}/{wrap}"]
    assert "error" not in result, result.get("error")
    assert result["max_grad_diff"] <= 1e-5
