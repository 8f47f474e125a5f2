"""The versions, threads and hardware a benchmark figure was measured with, recorded beside the figures.

Why one module: figures from another machine, thread count or torch are not comparable, so ``attnreg bench --json``
/ ``--csv`` and the scripts in ``benchmarks/`` record the same fields, read the same way.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

#: The matrix-unit flags that change CPU figures most (AMX, AVX-512 bf16/VNNI).
_NOTABLE_FLAGS = {"amx_bf16", "amx_tile", "amx_int8", "avx512_bf16", "avx512f", "avx512_vnni", "avx_vnni"}


def _cpuinfo_field(name: str) -> str | None:
    """The first ``name : value`` line of ``/proc/cpuinfo`` (Linux), or None."""
    try:
        found = re.search(rf"^{name}\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:
        return None
    return found.group(1).strip() if found else None


def cpu_model() -> str:
    """The processor's name: ``/proc/cpuinfo``, else ``lscpu`` (ARM), else ``platform.processor()``, else unknown."""
    name = _cpuinfo_field("model name")
    if name:
        return name
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
        found = re.search(r"^Model name:\s*(.+)$", text, re.MULTILINE)
        if found:
            return found.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The notable matrix-unit flags this processor has (empty where ``/proc/cpuinfo`` is not readable)."""
    flags = _cpuinfo_field("flags")
    return sorted(set(flags.split()) & _NOTABLE_FLAGS) if flags else []


def package_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Versions, threads and hardware of this process for figures measured on ``device`` (``gpu``: None off CUDA)."""
    import attnreg

    device = torch.device(device)
    return {
        "attnreg": attnreg.__version__,
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "python": platform.python_version(),
        "platform": sys.platform,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def describe(env: Mapping[str, Any]) -> str:
    """One line of :func:`environment` for the top of a printed report."""
    text = (
        f"torch {env['torch']}, transformers {env['transformers'] or 'not installed'}, attnreg {env['attnreg']}; "
        f"{env['threads']} threads on {env['cpu_count']} CPUs ({env['cpu']}); device {env['device']}"
    )
    return text + (f" ({env['gpu']})" if env.get("gpu") else "")
