"""Performance checks that fail CI on a regression and hold on a noisy machine: each is a
ratio of two timings interleaved in one process (tests/bench/perf.py), or a ratio within
one profiled step (the non-convolution share), checked against tests/bench/baseline.json. Run by .ci/run as `HVBENCH_PERF=quick pytest
tests/bench/test_perf_checks.py --benchmark-enable`; skipped in a plain `pytest`."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from hvbench.bench import Cell, Stepper, synthetic_batch
from hvbench.breakdown import profile_steps
from hvbench.config import TrainConfig, build
from hvbench.probe import machine_rates
from hvbench.registry import MODELS, TASKS
from hvbench.task import TaskSpec
from hvbench.train import TEST_SLOWDOWN, BatchSampler, train
from tests.bench.perf import Rounds, check, cpu_seconds, machine_kind, perf_check, run_rounds

pytestmark = perf_check

SPEC = TaskSpec((1, 64, 64), "bernoulli")  # dSprites' shape: the Burgess et al. net
BATCH, STEPS = 64, 3
# a paper-like blocks model small enough for quick rounds: 64 filters, 5×5 then 3×3, dropout
BLOCKS = {"latents": [16, 8], "filters": 64, "blocks": 1, "kernels": [5, 3], "strides": [2, 1]}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)
    torch.set_num_threads(threads)


def model(name: str, options: dict | None = None, spec: TaskSpec = SPEC) -> torch.nn.Module:
    entry = MODELS.get(name)
    torch.manual_seed(0)
    return entry.build(build(entry.config, options or {}, "model"), spec)


def images(n: int = 512) -> torch.Tensor:
    return synthetic_batch(SPEC, n, torch.Generator().manual_seed(0))


def loop(net: torch.nn.Module, data: object, accelerator: Accelerator) -> Callable:
    """CPU seconds per step of hvbench's own training loop, STEPS steps a call."""
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    cfg = TrainConfig(steps=STEPS, batch_size=BATCH, eval_every=10**9, log_every=10**9)

    def run() -> None:
        train(net, optimizer, data, cfg, accelerator, dict, lambda *_: None)

    return lambda: cpu_seconds(run) / STEPS


def eager(net: torch.nn.Module, data: torch.Tensor) -> Callable:
    """CPU seconds per step of a plain PyTorch loop over the same network and data."""
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        x = data[torch.randint(len(data), (BATCH,), generator=generator)]
        loss = -net(x).elbo.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return lambda: cpu_seconds(step, STEPS)


def test_training_loop_and_bench_step_cost_what_a_plain_loop_does(benchmark) -> None:
    net, data = model("vae"), images()
    cell = Cell("vae", None, "no", BATCH, "plain", "train", SPEC.shape)
    stepper = Stepper(net, SPEC, cell, torch.device("cpu"))
    rounds = Rounds(
        {
            "eager": eager(net, data),
            "loop": loop(net, data, Accelerator(cpu=True)),
            "bench": lambda: cpu_seconds(stepper, STEPS),
        }
    )
    run_rounds(benchmark, rounds)
    check(benchmark, "loop_vs_eager", rounds.ratio("loop", "eager"))
    check(benchmark, "bench_vs_eager", rounds.ratio("bench", "eager"))


def test_bf16_gains_what_the_machines_convolutions_gain(benchmark) -> None:
    """(bf16 step / fp32 step) over (fp32 conv rate / bf16 conv rate): 1.0 when bf16 speeds
    the model up exactly as much as it speeds up the machine's convolutions."""
    spec = TaskSpec((1, 28, 28), "bernoulli")
    net = model("lvae", {**BLOCKS, "dropout": 0.5}, spec)
    cpu = torch.device("cpu")
    steps = {
        p: Stepper(net, spec, Cell("lvae", None, p, 16, "plain", "train", spec.shape), cpu)
        for p in ("no", "bf16")
    }

    def probe_time(precision: str) -> float:
        return 1 / machine_rates(precision, cpu, seconds=0.1, batch=8).conv

    rounds = Rounds(
        {
            "fp32": lambda: cpu_seconds(steps["no"], STEPS),
            "bf16": lambda: cpu_seconds(steps["bf16"], STEPS),
            "conv_fp32": lambda: probe_time("no"),
            "conv_bf16": lambda: probe_time("bf16"),
        }
    )
    run_rounds(benchmark, rounds)
    normalised = rounds.ratio("bf16", "fp32") / rounds.ratio("conv_bf16", "conv_fp32")
    check(benchmark, "bf16_vs_machine", normalised, machine_kind())


def test_non_convolution_work_keeps_its_share_of_a_step(benchmark) -> None:
    """Casts + random numbers + element-wise work as a share of a training step (torch's
    profiler, hvbench/breakdown.py), bf16 and fp32, of a BIVA with the paper's blocks and
    dropout. A share is a ratio within one step, so a busy or slower machine barely moves
    it; an extra cast, an fp32 residual stream or a costlier dropout mask raises it."""
    spec = TaskSpec((1, 28, 28), "bernoulli")
    net = model("biva", {**BLOCKS, "dropout": 0.5}, spec)
    cpu = torch.device("cpu")
    steps = {
        p: Stepper(net, spec, Cell("biva", None, p, 16, "plain", "train", spec.shape), cpu)
        for p in ("no", "bf16")
    }

    def share(precision: str) -> float:
        return profile_steps(steps[precision], 1, cpu)["non_convolution_share"]

    rounds = Rounds({"fp32": lambda: share("no"), "bf16": lambda: share("bf16")})
    run_rounds(benchmark, rounds)
    kind = machine_kind()
    for precision in ("fp32", "bf16"):
        measured = statistics.median(rounds.seen[precision][1:])  # round 0 warms up
        check(benchmark, f"non_conv_share_{precision}", measured, kind)


def test_fetching_a_batch_costs_little_of_a_step(benchmark) -> None:
    net, data = model("vae"), images(4096)
    sampler = BatchSampler(len(data), BATCH, Accelerator(cpu=True), 0)
    rounds = Rounds(
        {
            "fetch": lambda: cpu_seconds(lambda: data[sampler.next()], 50),
            "step": lambda: eager(net, data)(),
        }
    )
    run_rounds(benchmark, rounds)
    check(benchmark, "fetch_vs_step", rounds.ratio("fetch", "step"))


def test_memory_mapped_data_train_as_fast_as_in_memory(benchmark, tmp_path: Path) -> None:
    """The same images as a 🤗 dataset, once memory-mapped and once read whole."""
    import datasets
    import numpy as np

    x = images(2048).numpy()
    datasets.Dataset.from_dict({"images": x}).save_to_disk(str(tmp_path / "d"))
    entry = TASKS.get("file")

    def split(limit: float) -> object:
        cfg = build(entry.config, {"path": str(tmp_path / "d"), "memory_limit_mb": limit}, "task")
        return entry.build(cfg, tmp_path).splits["train"]

    mapped, memory = split(0), split(10**6)
    assert not isinstance(mapped, torch.Tensor) and isinstance(memory, torch.Tensor)
    assert np.array_equal(mapped[:8].numpy(), memory[:8].numpy())
    net, accelerator = model("vae"), Accelerator(cpu=True)
    rounds = Rounds({"mapped": loop(net, mapped, accelerator), "memory": loop(net, memory, accelerator)})
    run_rounds(benchmark, rounds)
    check(benchmark, "mapped_vs_memory", rounds.ratio("mapped", "memory"))


def test_an_injected_slowdown_fails_the_check(tmp_path: Path) -> None:
    """The hook makes every training step burn as much CPU again: the loop check must fail,
    and say why."""
    test = f"{__file__}::test_training_loop_and_bench_step_cost_what_a_plain_loop_does"
    env = {**os.environ, TEST_SLOWDOWN: "1.0", "HVBENCH_PERF": "quick"}
    env.pop("HVBENCH_PERF_SAVE", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", test, "-q", "-p", "no:cacheprovider"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stdout[-2000:]
    assert "performance regression: loop_vs_eager" in result.stdout, result.stdout[-2000:]
