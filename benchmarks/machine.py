"""One line describing the machine a benchmark ran on, for its JSON and markdown.

Why: a figure without its machine cannot be compared; every benchmark states the CPU, its
cores, memory, GPU (if any), the Python and numpy versions and the load when it started.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the architecture where that is missing)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError):
        pass
    return None


def gpu_name() -> str | None:
    """The first CUDA device torch sees, if torch is importable and sees one."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def describe_machine(note: str = "") -> str:
    """E.g. "AMD EPYC 7B13, 2 cores, 23.4 GiB, no GPU, load 1.9; Python 3.11.9, numpy 2.1"."""
    import numpy as np

    memory = memory_gib()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = gpu_name()
    text = (f"{cpu_model()}, {os.cpu_count()} cores"
            f"{'' if memory is None else f', {memory:.1f} GiB'}, "
            f"{'GPU ' + gpu if gpu else 'no GPU'}, load average {load:.1f} at start "
            f"(shared with other jobs); Python {platform.python_version()}, "
            f"numpy {np.__version__}")
    return f"{text}; {note}" if note else text
