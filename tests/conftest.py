"""Shared fixtures: every test writes into its own temp folders, never into the repo."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HVBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("WANDB_MODE", raising=False)


def free_port() -> int:
    """A localhost port free right now: parallel test workers each launch torchrun, and two
    process groups on torchrun's default port would meet each other."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def torchrun(processes: int) -> list[str]:
    """`torchrun --nproc_per_node N` on a port of its own."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
        "--master_port", str(free_port()),
    ]  # fmt: skip


def in_process(*args: str) -> None:
    """`hvbench ARGS` in this process, on one thread like the subprocesses (cheaper than a new
    interpreter; the numbers must not depend on where a run is resumed)."""
    from hvbench.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(list(args))
    finally:
        torch.set_num_threads(threads)


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Run `python -m hvbench ARGS` in a real subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "hvbench", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's smoke sweep, run once per test session by the CLI in a subprocess and
    logged to W&B offline (as the README's sweep → W&B Report sequence does): its results
    root. Its output is kept in `sweep.out` beside the root."""
    cwd = tmp_path_factory.mktemp("sweep")
    env = {"HVBENCH_CACHE": str(cwd / "cache"), "WANDB_DIR": str(cwd / "wandb"), "COLUMNS": "80"}
    result = run_cli(
        "sweep", str(CONFIGS / "sweeps" / "smoke.yaml"), "--out", "results", "--wandb", "offline",
        cwd=cwd, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "sweep smoke: 0 skipped, 4 finished, 0 failed, 0 interrupted" in result.stdout
    (cwd / "sweep.out").write_text(result.stdout)
    return cwd / "results"
