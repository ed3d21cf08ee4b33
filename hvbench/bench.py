"""Throughput of a model alone, on synthetic batches: `hvbench bench`.

Speed targets live here and in pytest-benchmark, never in timed unit tests
(nanoGPT's `bench.py`). No dataset is needed: the input shape and likelihood
are given, so a paper architecture (e.g. BIVA at 1×28×28) can be timed side by
side with its official code on the same machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hvbench.config import build, read_yaml, section_overrides
from hvbench.device import peak_memory_mb, synchronize
from hvbench.errors import UserError
from hvbench.registry import MODELS
from hvbench.task import Likelihood, TaskSpec


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


def bench_model(
    model: str | None,
    config_file: Path | None,
    overrides: Sequence[str],
    shape: str,
    likelihood: Likelihood,
) -> tuple[str, torch.nn.Module, TaskSpec]:
    """(name, model, input spec) of `hvbench bench`: a run config's `model` section, then
    `--set model.KEY=VALUE` overrides, `model` naming it unless None, built for `shape` (C,H,W)."""
    base = read_yaml(config_file).get("model", {}) if config_file else {}
    raw = section_overrides(overrides, "model", "bench", base)
    name = model or raw.get("name")
    if not name:
        raise UserError(f"no model given: use --model NAME (one of: {', '.join(MODELS.names())})")
    entry = MODELS.get(name)
    spec = TaskSpec(shape=_shape(shape), likelihood=likelihood)
    options = build(entry.config, {k: v for k, v in raw.items() if k != "name"}, "model")
    return name, entry.build(options, spec), spec


def _shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"--shape must be C,H,W (e.g. 1,28,28), got {text!r}")
    return shape


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
