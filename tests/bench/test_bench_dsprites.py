"""dSprites data speed (pytest-benchmark): grid generation, cached reload, in-memory batches.

Budgets (issue 5, on a 2-core CPU): full grid ≤ 60 s, cached reload ≤ 5 s,
a random batch of 256 at ≥ 50,000 images/s. They are measured, not asserted:
run `HVBENCH_BENCH=1 pytest tests/bench/test_bench_dsprites.py --benchmark-enable`.
Without HVBENCH_BENCH the full-grid cases skip (they need 3 GB of memory) and
the batch case runs once on a small subset, as a smoke test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from hvbench.config import build
from hvbench.registry import TASKS
from hvbench.tasks._sprites import N_IMAGES

FULL = os.environ.get("HVBENCH_BENCH") == "1"
full_grid = pytest.mark.skipif(not FULL, reason="full-grid benchmark: set HVBENCH_BENCH=1")
ENTRY = TASKS.get("dsprites")
BATCH = 256


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("dsprites-bench")
    yield folder
    shutil.rmtree(folder)


@full_grid
def test_full_grid_generation(benchmark, cache: Path) -> None:
    def generate() -> Path:
        shutil.rmtree(cache / "dsprites", ignore_errors=True)
        return ENTRY.prepare(build(ENTRY.config, {}, "task"), cache)

    folder = benchmark.pedantic(generate, rounds=1, iterations=1)
    assert (folder / "meta.json").is_file()


@full_grid
def test_cached_reload(benchmark, cache: Path) -> None:
    """Each round frees its 3 GB before the next, so rounds do not pile up fresh memory."""
    ENTRY.prepare(build(ENTRY.config, {}, "task"), cache)

    def reload() -> int:
        return sum(
            len(x) for x in ENTRY.build(build(ENTRY.config, {}, "task"), cache).splits.values()
        )

    assert benchmark.pedantic(reload, rounds=3, iterations=1) == N_IMAGES


@pytest.mark.parametrize("threads", [1, torch.get_num_threads()])
@pytest.mark.parametrize("gather", ["getitem", "index_select"])
def test_random_batch_from_memory(benchmark, cache: Path, gather: str, threads: int) -> None:
    """`split[index]` is what the training loop does; `index_select` copies whole rows.

    Both run with torch's default threads and with one: on a busy 2-core
    machine two OpenMP threads waiting on each other cost up to 30×.
    """
    options = {} if FULL else {"subset": 5000}
    if FULL:
        ENTRY.prepare(build(ENTRY.config, {}, "task"), cache)
    train = ENTRY.build(build(ENTRY.config, options, "task"), cache).splits["train"]
    generator = torch.Generator().manual_seed(0)

    def batch() -> torch.Tensor:
        index = torch.randint(len(train), (BATCH,), generator=generator)
        return train[index] if gather == "getitem" else train.index_select(0, index)

    default = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert benchmark(batch).shape == (BATCH, 1, 64, 64)
    finally:
        torch.set_num_threads(default)
    if benchmark.stats:
        benchmark.extra_info["images_per_s"] = BATCH / benchmark.stats.stats.median
