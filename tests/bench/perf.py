"""Measuring ratios that hold on a noisy machine, and the baselines they are checked against.

Each check times two things that do the same work in one process, interleaved
round by round, on one torch thread, by CPU time (`time.process_time`): a
process that is descheduled by its neighbours loses wall time but not CPU time,
and a machine that is slower this minute slows both sides of a round alike.
The check is the median over rounds of the per-round ratio; the first round
(oneDNN builds its kernels there) is dropped.

`tests/bench/baseline.json` holds, per check, the ratio measured on the CI's
machines and how far above it a run may land (`tolerance`); README says how
those were chosen. `HVBENCH_PERF=quick|full` runs the checks (quick: what
`.ci/run` runs; full: three times the rounds), `HVBENCH_PERF_SAVE=1` writes the
measured ratios back as the new baselines.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from hvbench.probe import cpu_features

BASELINE = Path(__file__).with_name("baseline.json")
MODE = os.environ.get("HVBENCH_PERF", "")
ROUNDS = {"quick": 5, "full": 15}.get(MODE, 0)
SAVE = os.environ.get("HVBENCH_PERF_SAVE") == "1"

perf_check = pytest.mark.skipif(
    not ROUNDS, reason="performance check: set HVBENCH_PERF=quick or full (see .ci/run)"
)


def cpu_seconds(fn: Callable[[], object], repeats: int = 1) -> float:
    """CPU seconds of the process for one call of `fn` (mean over `repeats` calls)."""
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats


def machine_kind() -> str:
    """What decides a CPU's bf16 speed: bf16 baselines are kept per kind."""
    features = cpu_features()
    if features["amx_tile"]:
        return "amx"
    return "avx512_bf16" if features["avx512_bf16"] else "no_bf16_hardware"


class Rounds:
    """Interleaved rounds of named timings; `ratio(a, b)` is the median of the per-round a/b."""

    def __init__(self, timings: dict[str, Callable[[], float]]):
        self.timings = timings
        self.seen: dict[str, list[float]] = {name: [] for name in timings}

    def __call__(self) -> None:
        """One round; the order alternates so that drift within a round favours no side."""
        names = list(self.timings)
        if len(next(iter(self.seen.values()))) % 2:
            names.reverse()
        for name in names:
            self.seen[name].append(self.timings[name]())

    def ratio(self, a: str, b: str) -> float:
        pairs = list(zip(self.seen[a], self.seen[b], strict=True))[1:]  # round 0 warms up
        return statistics.median(x / y for x, y in pairs)


def run_rounds(benchmark: Any, rounds: Rounds) -> None:
    """ROUNDS measured rounds after a warm-up one, through pytest-benchmark when it is enabled
    (its report then holds each round's wall time) and directly when it is not."""
    torch.set_num_threads(1)
    if benchmark.enabled:
        benchmark.pedantic(rounds, rounds=ROUNDS + 1, iterations=1)
    else:
        for _ in range(ROUNDS + 1):
            rounds()


def check(benchmark: Any, name: str, value: float, kind: str | None = None) -> None:
    """Fail when `value` exceeds the baseline of `name` (for this machine `kind` if given) by
    more than its tolerance; with HVBENCH_PERF_SAVE=1 record it as the new baseline."""
    baselines = json.loads(BASELINE.read_text())
    entry = baselines[name]
    target = entry["kinds"].get(kind) if kind else entry
    benchmark.extra_info[name] = value
    if SAVE:
        measured = {"baseline": round(value, 4), "measured": f"{time.strftime('%Y-%m-%d')}: saved"}
        if kind:
            entry["kinds"][kind] = measured
        else:
            entry.update(measured)
        BASELINE.write_text(json.dumps(baselines, indent=2, ensure_ascii=False) + "\n")
        return
    if target is None:
        pytest.skip(f"{name}: no baseline for a {kind} machine; add one with HVBENCH_PERF_SAVE=1")
    limit = target["baseline"] * (1 + entry["tolerance"])
    benchmark.extra_info[f"{name} limit"] = limit
    assert value <= limit, (
        f"performance regression: {name} = {value:.3f}, above {limit:.3f} "
        f"(baseline {target['baseline']:.3f} + {entry['tolerance']:.0%}): {entry['what']}"
    )
