"""The device-specific calls behind a run's timings and memory figures, in one place.

CUDA kernels run asynchronously, so a clock read is only meaningful after the
device's queue is drained. Peak memory is the CUDA allocator's peak on a GPU
and the process's peak resident set size on a CPU, which `getrusage` reports
in KiB on Linux but in bytes on macOS.
"""

from __future__ import annotations

import platform
import resource
import sys

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device`, so that a clock read afterwards includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: allocated on a GPU, resident (the whole process) on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def device_name(device: torch.device) -> str:
    """The GPU's model, or the CPU's architecture and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
