"""Multi-process runs: torchrun with 2 CPU processes gives Accelerate a real gloo group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import CONFIGS


def test_torchrun_two_processes_share_one_run(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "hvbench",
        "run",
    ]
    command += ["--config", str(CONFIGS / "smoke" / "toy-vae.yaml"), "--set", "task.n_test=255"]
    result = subprocess.run(
        command, cwd=tmp_path, env=os.environ.copy(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    runs = list((tmp_path / "results" / "runs" / "toy-corr" / "vae").iterdir())
    assert len(runs) == 1  # one folder, written by the main process only
    record = json.loads((runs[0] / "metrics.json").read_text())
    assert record["run"]["world_size"] == 2
    # an odd split is sharded with padding; the gathered evaluation still counts each image once
    assert record["metrics"]["test/examples"] == 255
    assert result.stdout.count("run finished") == 1


def test_accelerate_launch_runs_the_module(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "-m",
        "hvbench",
        "run",
    ]
    command += ["--config", str(CONFIGS / "smoke" / "toy-vae.yaml")]
    result = subprocess.run(
        command, cwd=tmp_path, env=os.environ.copy(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = (tmp_path / "results" / "runs" / "toy-corr" / "vae").iterdir()
    assert (run / "metrics.json").is_file()
