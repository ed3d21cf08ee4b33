"""Throughput of a model alone, on synthetic batches: `hvbench bench`.

Speed targets live here and in pytest-benchmark, never in timed unit tests
(nanoGPT's `bench.py`). No dataset is needed: the input shape and likelihood
are given, so a paper architecture (e.g. BIVA at 1×28×28) can be timed side by
side with its official code on the same machine.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from hvbench.device import peak_memory_mb, synchronize
from hvbench.task import TaskSpec


@dataclass(frozen=True)
class BenchResult:
    model: str
    mode: str  # "train" or "eval"
    shape: tuple[int, int, int]
    batch_size: int
    steps: int
    images_per_s: float
    median_step_ms: float
    parameters: int
    peak_memory_mb: float
    device: str
    threads: int

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def synthetic_batch(spec: TaskSpec, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Random data of the task's kind: binary, 8-bit or continuous."""
    shape = (batch_size, *spec.shape)
    if spec.likelihood == "bernoulli":
        return torch.randint(0, 2, shape, generator=generator, dtype=torch.uint8)
    if spec.likelihood == "dlogistic":
        return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    return torch.rand(shape, generator=generator)


def measure(
    name: str,
    model: torch.nn.Module,
    spec: TaskSpec,
    batch_size: int,
    steps: int,
    warmup: int,
    train: bool,
    device: torch.device,
    precision: str = "no",
) -> BenchResult:
    """Time `steps` optimiser steps (or forward passes) after `warmup` untimed ones."""
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4) if train else None
    x = synthetic_batch(spec, batch_size, torch.Generator().manual_seed(0)).to(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        with (
            torch.autocast(device.type, dtype=dtype, enabled=dtype is not None),
            torch.set_grad_enabled(train),
        ):
            model.train(train)
            out = model(x)
            if optimizer is not None:
                loss = -out.elbo.mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return BenchResult(
        model=name,
        mode="train" if train else "eval",
        shape=spec.shape,
        batch_size=batch_size,
        steps=steps,
        images_per_s=batch_size * len(times) / sum(times),
        median_step_ms=1000 * statistics.median(times),
        parameters=sum(p.numel() for p in model.parameters()),
        peak_memory_mb=peak_memory_mb(device),
        device=str(device),
        threads=torch.get_num_threads(),
    )
