"""Device helpers: the CPU's peak memory is in MiB whatever unit the OS reports it in."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from hvbench.device import device_name, peak_memory_mb, synchronize

CPU = torch.device("cpu")


@pytest.mark.skipif(sys.platform != "linux", reason="reads the kernel's VmHWM from /proc")
def test_cpu_peak_memory_is_the_resident_high_water_mark_in_mib() -> None:
    torch.ones(64 * 2**20, dtype=torch.uint8).add_(1)  # touch 64 MiB, raising the peak
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    high_water_kib = int(fields["VmHWM"].split()[0])
    assert peak_memory_mb(CPU) == pytest.approx(high_water_kib / 1024, rel=0.05)
    assert peak_memory_mb(CPU) > 64


def test_cpu_name_and_synchronize() -> None:
    synchronize(CPU)  # a no-op on a CPU, and no error
    name = device_name(CPU)
    assert name.startswith("cpu (") and f"{torch.get_num_threads()} threads" in name
