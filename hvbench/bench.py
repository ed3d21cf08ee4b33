"""Throughput of models alone, on synthetic batches: `hvbench bench`.

Speed targets live here and in pytest-benchmark, never in timed unit tests
(nanoGPT's `bench.py`). No dataset is needed: the input shape and likelihood
are given, so a paper architecture (e.g. BIVA at 1×28×28) can be timed side by
side with its official code on the same machine.

A bench is a matrix (models × precisions × batch sizes × speed options) timed in
interleaved rounds, each round opening with the machine's own conv and matmul
rates (`hvbench.probe`): a host that slows down mid-run slows every cell and
probe of a round alike, so the fractions of the machine's rate stay comparable.
A cell's step is the training loop's step (autocast forward, backward,
optimiser step), with the loop's own speed options applied the same way. With
`profile_steps`, each cell's step is then run under torch's profiler once timing is done
and its time split by category of op (`hvbench.breakdown`).
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from hvbench.atomic import write_atomic, write_json
from hvbench.breakdown import CATEGORIES, profile_steps
from hvbench.config import TrainConfig, build, read_yaml, section_overrides
from hvbench.device import device_name, peak_memory_mb, synchronize
from hvbench.errors import UserError
from hvbench.probe import CLOCKS, CONV_BATCH, DTYPES, count_flops, cpu_features, machine_rates
from hvbench.progress import StepReporter
from hvbench.registry import MODELS
from hvbench.task import Likelihood, TaskSpec
from hvbench.train import make_optimizer, with_speed_options

# train.channels_last / train.compile / both
OPTIONS = ("plain", "channels_last", "compile", "channels_last+compile")


def speed_config(option: str) -> TrainConfig:
    """The training loop's speed options that a bench option names, "+" joining two."""
    named = set(option.split("+"))
    return TrainConfig(channels_last="channels_last" in named, compile="compile" in named)


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


@dataclass
class Cell:
    """One (model, precision, batch size, option) of the matrix and what was measured."""

    model: str
    config: str | None
    precision: str
    batch_size: int
    option: str
    mode: str
    shape: tuple[int, int, int]
    parameters: int = 0
    gflop_per_image: float = float("nan")
    round_images_per_s: list[float] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    peak_memory_mb: float | None = None  # per cell on a GPU; a CPU has one process peak
    profile: dict[str, Any] | None = None  # hvbench.breakdown.profile_steps, when asked

    @property
    def images_per_s(self) -> float:
        return statistics.median(self.round_images_per_s)

    @property
    def gflop_per_s(self) -> float:
        return self.gflop_per_image * self.images_per_s

    def as_dict(self, rates: dict[str, dict[str, float]]) -> dict[str, Any]:
        record = asdict(self)
        rate = rates[self.precision]
        record.update(
            images_per_s=self.images_per_s,
            median_step_ms=statistics.median(self.step_ms),
            gflop_per_s=self.gflop_per_s,
            conv_fraction=self.gflop_per_s / rate["conv"],
            matmul_fraction=self.gflop_per_s / rate["matmul"],
        )
        return record


@dataclass(frozen=True)
class BenchModel:
    """A model to bench: its name, the config it came from, and how to build a fresh one."""

    name: str
    config: str | None
    spec: TaskSpec
    build: Callable[[], torch.nn.Module]


def bench_models(
    models: Sequence[str],
    configs: Sequence[Path],
    overrides: Sequence[str],
    shape: str,
    likelihood: Likelihood,
) -> list[BenchModel]:
    """One entry per --config and per --model (one of each: the config with its name replaced)."""
    if len(models) == 1 and len(configs) == 1:
        pairs = [(models[0], configs[0])]
    else:
        pairs = [(None, c) for c in configs] + [(m, None) for m in models]
    if not pairs:
        raise UserError(f"no model given: use --model NAME (one of: {', '.join(MODELS.names())})")
    found = []
    for model, config in pairs:
        name, _, spec = bench_model(model, config, overrides, shape, likelihood)

        def make(model=model, config=config) -> torch.nn.Module:
            torch.manual_seed(0)
            return bench_model(model, config, overrides, shape, likelihood)[1]

        found.append(BenchModel(name, str(config) if config else None, spec, make))
    return found


class Stepper:
    """The training loop's step (or an evaluation forward pass) on one synthetic batch."""

    def __init__(
        self, model: torch.nn.Module, spec: TaskSpec, cell: Cell, device: torch.device
    ) -> None:
        self.model, self.train = model, cell.mode == "train"
        self.optimizer = make_optimizer("adam", model.parameters(), 1e-4) if self.train else None
        generator = torch.Generator().manual_seed(0)
        self.x = synthetic_batch(spec, cell.batch_size, generator).to(device)
        self.dtype = DTYPES[cell.precision]
        self.device = device

    def __call__(self) -> None:
        autocast = torch.autocast(
            self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32
        )
        self.model.train(self.train)
        if self.optimizer is None:
            with torch.no_grad(), autocast:
                self.model(self.x)
            return
        with autocast:
            out = self.model(self.x)
        (-out.elbo.mean()).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


@dataclass
class BenchReport:
    machine: dict[str, Any]
    settings: dict[str, Any]
    probes: dict[str, dict[str, Any]]
    cells: list[Cell]

    def rates(self) -> dict[str, dict[str, float]]:
        return {p: {"conv": v["conv"], "matmul": v["matmul"]} for p, v in self.probes.items()}

    def as_dict(self) -> dict[str, Any]:
        rates = self.rates()
        return {
            "machine": self.machine,
            "settings": self.settings,
            "probes": self.probes,
            "cells": [c.as_dict(rates) for c in self.cells],
        }


def run_matrix(
    models: Sequence[BenchModel],
    precisions: Sequence[str],
    batches: Sequence[int],
    options: Sequence[str],
    *,
    train: bool = True,
    steps: int = 5,
    warmup: int = 2,
    rounds: int = 2,
    device: torch.device | None = None,
    probe_seconds: float = 0.5,
    probe_batch: int = CONV_BATCH,
    clock: str = "wall",
    profile: int = 0,
) -> BenchReport:
    """Time every cell for `steps` steps in each of `rounds` rounds (cells in reverse order
    on odd rounds, so a drifting machine biases no cell); every round opens with the probes
    of each precision in the matrix. `clock="cpu"` times by the process's CPU time: rates per
    core-second, which other processes on the machine barely move (use it with one thread).
    `profile` > 0: after the rounds, that many steps of each cell under torch's profiler give
    its time by category (outside the timed steps: the profiler slows what it records)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if clock == "cpu" and device.type == "cuda":
        raise UserError("--clock cpu times the host's work only; a GPU bench needs --clock wall")
    timer = CLOCKS[clock]
    bad = [o for o in options if o not in OPTIONS]
    if bad:
        raise UserError(f"unknown bench option {bad[0]!r}; choose from: {', '.join(OPTIONS)}")
    if min(batches) < 1 or steps < 1 or rounds < 1 or warmup < 0:
        raise UserError("--batch, --steps and --rounds must be positive and --warmup not negative")
    if profile < 0:
        raise UserError(f"--profile takes a positive number of steps, got {profile}")
    if profile and any(speed_config(o).compile for o in options):
        # inductor's fused C++ kernels then show in the profile by name, as element-wise work;
        # else their time is the compiled graph call's own ("other")
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
    mode = "train" if train else "eval"
    cells, steppers = [], []
    for entry in models:
        for option in options:
            model = entry.build().to(device)
            # the training loop's own options, applied its way
            with_speed_options(model, speed_config(option))
            for precision in precisions:
                for batch in batches:
                    cell = Cell(entry.name, entry.config, precision, batch, option, mode, entry.spec.shape)
                    cell.parameters = sum(p.numel() for p in model.parameters())
                    cells.append(cell)
                    steppers.append(Stepper(model, entry.spec, cell, device))
    probes: dict[str, list] = {p: [] for p in dict.fromkeys(["no", *precisions])}
    # progress on stderr: stdout ends with one JSON line per cell, which scripts read
    reporter = StepReporter(
        rounds * (len(probes) + len(cells)), True, "bench", lines=10, stream=sys.stderr
    )
    done = 0
    with reporter:
        for r in range(rounds):
            for precision, found in probes.items():
                found.append(machine_rates(precision, device, probe_seconds, probe_batch, timer))
                done += 1
                reporter.update(done)
            order = list(zip(cells, steppers, strict=True))
            for cell, step in order if r % 2 == 0 else reversed(order):
                if r == 0:
                    _warm(cell, step, warmup, device)
                times = []
                for _ in range(steps):
                    start = timer()
                    step()
                    synchronize(device)
                    times.append(timer() - start)
                cell.step_ms += [1000 * t for t in times]
                cell.round_images_per_s.append(cell.batch_size * steps / sum(times))
                if device.type == "cuda" and r == 0:
                    cell.peak_memory_mb = peak_memory_mb(device)
                done += 1
                reporter.update(done)
    if profile:
        for cell, step in zip(cells, steppers, strict=True):
            cell.profile = profile_steps(step, profile, device)
    return BenchReport(
        machine={
            "device": device_name(device),
            "torch": torch.__version__,
            "cpu_features": cpu_features(),
            "peak_memory_mb": peak_memory_mb(device) if device.type != "cuda" else None,
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        settings={
            "mode": mode,
            "steps": steps,
            "warmup": warmup,
            "rounds": rounds,
            "probe_batch": probe_batch,
            "clock": clock,
            "profile_steps": profile,
        },
        probes={p: _summary(found) for p, found in probes.items()},
        cells=cells,
    )


def _warm(cell: Cell, step: Stepper, warmup: int, device: torch.device) -> None:
    """FLOPs of one step (torch's counter, on the eager model: compiling changes no FLOP),
    then `warmup` untimed steps; a compiled model compiles in its first two."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.compiler.set_stance("force_eager"):
        cell.gflop_per_image = count_flops(step) / cell.batch_size / 1e9
    for _ in range(max(warmup, 2) if speed_config(cell.option).compile else warmup):
        step()
    synchronize(device)


def _summary(rates: list) -> dict[str, Any]:
    """Median conv and matmul rates over the rounds, and every round's numbers."""
    return {
        "conv": statistics.median(r.conv for r in rates),
        "matmul": statistics.median(r.matmul for r in rates),
        "rounds": [{"conv": r.conv, "matmul": r.matmul, "conv_shapes": r.conv_shapes} for r in rates],
    }


PRECISION_NAMES = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}
CLOCK_NAMES = {"wall": "wall-clock time", "cpu": "process CPU time: rates per core-second"}
COLUMNS = (
    ("model", lambda c: c["model"] + (f" ({Path(c['config']).stem})" if c["config"] else "")),
    ("prec", lambda c: PRECISION_NAMES[c["precision"]]),
    ("batch", lambda c: str(c["batch_size"])),
    ("option", lambda c: c["option"]),
    ("img/s", lambda c: f"{c['images_per_s']:,.1f}"),
    ("rounds", lambda c: " / ".join(f"{v:,.1f}" for v in c["round_images_per_s"])),
    ("GFLOP/img", lambda c: f"{c['gflop_per_image']:.3g}"),
    ("GFLOP/s", lambda c: f"{c['gflop_per_s']:,.1f}"),
    ("% conv", lambda c: f"{100 * c['conv_fraction']:.0f}"),
    ("% matmul", lambda c: f"{100 * c['matmul_fraction']:.0f}"),
    ("params", lambda c: f"{c['parameters'] / 1e6:.2f} M"),
)


def table_rows(record: dict[str, Any]) -> list[list[str]]:
    return [[fmt(c) for _, fmt in COLUMNS] for c in record["cells"]]


PROFILE_COLUMNS = (
    *COLUMNS[:4],
    ("ms/step", lambda c: f"{c['profile']['ms_per_step']:,.0f}"),
    *((f"% {k}", lambda c, k=k: f"{100 * c['profile']['shares'][k]:.1f}") for k in CATEGORIES),
    ("% non-conv", lambda c: f"{100 * c['profile']['non_convolution_share']:.1f}"),
)


def profile_rows(record: dict[str, Any]) -> list[list[str]]:
    """The profiled cells' time by category (`hvbench bench --profile`); none without it."""
    return [[fmt(c) for _, fmt in PROFILE_COLUMNS] for c in record["cells"] if c.get("profile")]


def probe_lines(record: dict[str, Any]) -> list[str]:
    lines = []
    for precision, probe in record["probes"].items():
        conv = " / ".join(f"{r['conv']:,.0f}" for r in probe["rounds"])
        matmul = " / ".join(f"{r['matmul']:,.0f}" for r in probe["rounds"])
        lines.append(
            f"{PRECISION_NAMES[precision]}: conv {probe['conv']:,.0f} GFLOP/s (rounds {conv}), "
            f"matmul {probe['matmul']:,.0f} GFLOP/s (rounds {matmul})"
        )
    return lines


def markdown(record: dict[str, Any]) -> str:
    machine, settings = record["machine"], record["settings"]
    features = ", ".join(k for k, v in machine["cpu_features"].items() if v) or "none"
    head = [
        f"# hvbench bench ({settings['mode']}, {settings['rounds']} interleaved rounds of "
        f"{settings['steps']} steps, {CLOCK_NAMES[settings['clock']]})",
        "",
        f"{machine['device']}, torch {machine['torch']}, CPU features: {features}; "
        f"{machine['when']}.",
        "",
        f"Machine rates measured in the same run (conv: batch {settings['probe_batch']}, "
        "64-channel 3×3/5×5 at 14/28 px, forward and backward; matmul: 1024², 8192² on a GPU):",
        "",
        *[f"- {line}" for line in probe_lines(record)],
        "",
    ]
    rows = _markdown_table([name for name, _ in COLUMNS], table_rows(record))
    profiled = profile_rows(record)
    if profiled:
        rows += [
            "",
            f"Step time by category of op (torch's profiler, self time per op, "
            f"{settings['profile_steps']} steps a cell after the timed ones; "
            "hvbench/breakdown.py maps ops to categories; non-conv: casts + random + "
            "element-wise):",
            "",
            *_markdown_table([name for name, _ in PROFILE_COLUMNS], profiled),
        ]
    return "\n".join(head + rows) + "\n"


def _markdown_table(names: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def write(record: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """`folder`/bench.json and bench.md, each written whole or not at all."""
    write_json(folder / "bench.json", record)
    text = markdown(record).encode()
    write_atomic(folder / "bench.md", lambda f: f.write(text))
    return folder / "bench.json", folder / "bench.md"
