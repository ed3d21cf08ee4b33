"""Task `file` on a 🤗 dataset larger than the memory a run may take: the images stay
memory-mapped on disk and a split is gathered batch by batch through the tensor contract."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState

from hvbench.config import build, resolve
from hvbench.errors import UserError
from hvbench.registry import TASKS
from hvbench.run import execute
from hvbench.tasks._arrow import MappedSplit
from tests.conftest import CONFIGS

ENTRY = TASKS.get("file")
MIB = 2**20


def make_dataset(folder: Path, n: int, side: int, chunk: int = 4096) -> int:
    """Binary images with one factor, written by a separate process (this process's memory
    stays as it was); returns the images' size in bytes."""
    code = f"""
import datasets, numpy as np
features = datasets.Features({{
    "images": datasets.Array3D(shape=(1, {side}, {side}), dtype="uint8"),
    "size": datasets.Value("float32"),
}})
rng = np.random.default_rng(0)
parts = [
    datasets.Dataset.from_dict(
        {{
            "images": (rng.random((min({chunk}, {n} - s), 1, {side}, {side})) < 0.3).astype(np.uint8),
            "size": np.arange(s, min(s + {chunk}, {n}), dtype=np.float32),
        }},
        features=features,
    )
    for s in range(0, {n}, {chunk})
]
datasets.concatenate_datasets(parts).save_to_disk({str(folder / "data")!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    return n * side * side


def rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


class PeakAnon:
    """The highest RssAnon this process reaches while the block runs, sampled every 5 ms."""

    def __enter__(self) -> PeakAnon:
        self.start = self.peak = rss_anon()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_anon())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def test_mapped_split_keeps_the_tensor_contract(tmp_path: Path) -> None:
    make_dataset(tmp_path, 600, 8, chunk=100)
    options = {"path": str(tmp_path / "data")}
    loaded = ENTRY.build(build(ENTRY.config, options, "task"), tmp_path)
    mapped = ENTRY.build(build(ENTRY.config, {**options, "memory_limit_mb": 0}, "task"), tmp_path)
    assert mapped.source == loaded.source  # the same data carry the same name either way
    assert mapped.spec == loaded.spec
    for name, split in mapped.splits.items():
        tensor = loaded.splits[name]
        assert isinstance(split, MappedSplit) and isinstance(tensor, torch.Tensor)
        assert len(split) == len(tensor) and split.shape == tensor.shape
        assert split.dtype == tensor.dtype and split.to("cpu") is split
        index = torch.randperm(len(tensor), generator=torch.Generator().manual_seed(0))[:50]
        assert torch.equal(split[index], tensor[index])
        assert torch.equal(split[3:9], tensor[3:9]) and torch.equal(split[2], tensor[2])
        assert torch.equal(mapped.factors[name], loaded.factors[name])


def smoke_run(data: Path, root: Path) -> Path:
    cfg = resolve(
        config_file=CONFIGS / "smoke" / "file-vae.yaml",
        overrides=[
            f"task.path={data}",
            "task.memory_limit_mb=16",
            "eval.batch_size=32",
            f"output.root={root}",
            "output.figures=false",
        ],
    )
    AcceleratorState._reset_state(True)
    return execute(cfg)


def test_trains_on_data_several_times_larger_than_its_memory(tmp_path: Path) -> None:
    """128 MiB of images; the run may grow its anonymous memory by 32 MiB (a quarter; it grew
    9 MiB here, and 384 MiB with the images read whole). Read whole, the images alone take
    128 MiB; memory-mapped, their pages are the page
    cache's (RssFile), and only batches and one block at a time are the run's own. A run on
    a small mapped dataset first imports and allocates what any run does once."""
    make_dataset(tmp_path / "small", 600, 64)
    size = make_dataset(tmp_path / "large", 32768, 64)
    budget = 32 * MIB
    assert size >= 4 * budget
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        smoke_run(tmp_path / "small" / "data", tmp_path / "results")
        with PeakAnon() as anon:
            run_dir = smoke_run(tmp_path / "large" / "data", tmp_path / "results")
    finally:
        torch.set_num_threads(threads)
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert np.isfinite(metrics["test/elbo_nats"]) and metrics["test/examples"] == 256
    assert anon.growth < budget, f"RssAnon grew {anon.growth / MIB:.0f} MiB"


@pytest.mark.parametrize("bad", ["ragged", "bool"])
def test_columns_that_cannot_be_mapped_are_read_whole(tmp_path: Path, bad: str) -> None:
    import datasets

    if bad == "ragged":
        images = [np.zeros((1, 4, 4), np.uint8).tolist()] * 5 + [np.zeros((1, 4, 5), np.uint8).tolist()]
    else:
        images = [np.ones((1, 4, 4), bool)] * 6
    datasets.Dataset.from_dict({"images": images}).save_to_disk(str(tmp_path / "d"))
    options = {"path": str(tmp_path / "d"), "memory_limit_mb": 0}
    if bad == "ragged":  # the in-memory path's own refusal, one line
        with pytest.raises(UserError, match="images"):
            ENTRY.build(build(ENTRY.config, options, "task"), tmp_path)
    else:
        task = ENTRY.build(build(ENTRY.config, options, "task"), tmp_path)
        assert all(isinstance(x, torch.Tensor) for x in task.splits.values())
