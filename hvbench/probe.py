"""What the machine itself can do, measured in the same process as the model it is compared
with: convolution and matmul rates per precision, and the FLOPs a step costs.

Machines sharing a host change speed from one minute to the next, so a model's GFLOP/s
only means something as a fraction of rates taken in the same run. The conv probe uses the layers that dominate the
paper architectures (64 channels, 3×3 and 5×5, at 14 and 28 px, forward and both
backward convolutions); the matmul probe is one 1024² product (8192² on a GPU, which a
smaller one leaves mostly idle).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from hvbench.device import synchronize

# lscpu flags that decide bf16 speed (and the vector width fp32 runs at)
LSCPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2")
CONV_SHAPES = ((3, 14), (3, 28), (5, 14), (5, 28))  # (kernel, side), 64 → 64 channels
CONV_BATCH, CONV_CHANNELS, MATMUL_SIZE = 64, 64, 1024
DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn` as torch's FLOP counter sees them (matmuls and convolutions,
    forward and backward; elementwise work is not counted)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def timed_rate(
    fn: Callable[[], object],
    flops: int,
    device: torch.device,
    seconds: float,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """GFLOP/s of `fn` (costing `flops` per call) by `clock`: one untimed call, then as many
    calls as fit in `seconds` (at least one)."""
    fn()
    synchronize(device)
    calls, start = 0, clock()
    while calls < 1 or clock() - start < seconds:
        fn()
        calls += 1
    synchronize(device)
    return flops * calls / (clock() - start) / 1e9


def conv_step(
    kernel: int, side: int, dtype: torch.dtype, device: torch.device, batch: int = CONV_BATCH
) -> Callable[[], None]:
    conv = torch.nn.Conv2d(CONV_CHANNELS, CONV_CHANNELS, kernel, padding=kernel // 2)
    conv = conv.to(device=device, dtype=dtype)
    x = torch.randn(batch, CONV_CHANNELS, side, side, device=device, dtype=dtype)
    x.requires_grad_(True)

    def step() -> None:
        y = conv(x)
        y.backward(torch.ones_like(y))  # grad input and grad weight: a training step's convs

    return step


@dataclass(frozen=True)
class MachineRates:
    """GFLOP/s of the conv probe (all its shapes together, and each) and the matmul probe."""

    precision: str
    conv: float
    conv_shapes: dict[str, float]
    matmul: float


def machine_rates(
    precision: str,
    device: torch.device,
    seconds: float = 0.5,
    batch: int = CONV_BATCH,
    clock: Callable[[], float] = time.perf_counter,
) -> MachineRates:
    """The conv and matmul probes in `precision`'s dtype ("no" is fp32), `seconds` each shape
    by `clock`; a smaller conv `batch` only to keep tests quick (small batches use a machine
    less well)."""
    dtype = DTYPES[precision]
    shapes, total_flops, total_time = {}, 0, 0.0
    for kernel, side in CONV_SHAPES:
        step = conv_step(kernel, side, dtype, device, batch)
        flops = count_flops(conv_step(kernel, side, dtype, torch.device("meta"), batch))
        rate = timed_rate(step, flops, device, seconds, clock)
        shapes[f"{kernel}x{kernel}@{side}"] = rate
        total_flops += flops
        total_time += flops / rate
    size = MATMUL_SIZE if device.type == "cpu" else 8 * MATMUL_SIZE  # a GPU needs 8192² to fill
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    matmul = timed_rate(lambda: a @ b, 2 * size**3, device, seconds, clock)
    return MachineRates(precision, total_flops / total_time, shapes, matmul)


def cpu_features() -> dict[str, bool]:
    """The instruction sets that decide a CPU's bf16 speed: without AVX512-BF16 or AMX, oneDNN
    converts bf16 to fp32 around fp32 arithmetic and bf16 convolutions run slower than fp32."""
    names = ("avx512_bf16", "amx_tile", "avx512", "avx2")
    return {name: bool(getattr(torch.cpu, f"_is_{name}_supported", lambda: False)()) for name in names}


def lscpu() -> dict[str, Any]:
    """The CPU's model name and bf16-relevant flags as `lscpu` reports them, for results that
    name the machine they were measured on (None where there is no lscpu). The same machine
    kind has bf16 units on some days and not on others, so a record says which it had."""
    if shutil.which("lscpu") is None:
        return {"model": None, "flags": None}
    fields = {}
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    flags = set(fields.get("Flags", "").split())
    return {"model": fields.get("Model name"), "flags": {f: f in flags for f in LSCPU_FLAGS}}
