"""What a figure was measured on: CPU model or GPU name, thread count. Recorded in every run's metrics.json so a
result read later (the README's results table, BENCHMARKS.md) always names its hardware."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by the caller; benchmarks that only read the CPU name stay torch-free
    import torch


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else whatever the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_description(device: "torch.device", processes: int = 1) -> str:
    """e.g. "CPU: AMD EPYC 7B13, 1 torch thread" or "CUDA: NVIDIA H100 80GB HBM3 ×2"."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"CUDA: {name}" + (f" ×{processes}" if processes > 1 else "")
    threads = torch.get_num_threads()
    where = f"CPU: {cpu_model()}, {threads} torch thread{'s' if threads != 1 else ''}"
    return where + (f" × {processes} processes" if processes > 1 else "")
