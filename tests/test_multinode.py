"""Beyond one machine: two torchrun "nodes" (c10d rendezvous on localhost, gloo) give the
same numbers as two processes on one node, and every launcher gives a process its share of
the cores (end to end under `accelerate launch`: tests/test_gpu_check.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hvbench import cpu
from tests.conftest import free_port, smoke_vae_args

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def launch(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen) -> str:
    try:
        out, err = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    assert process.returncode == 0, err[-3000:]
    return out


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_two_nodes_match_two_processes_on_one_node(tmp_path: Path, two_process_run: Path) -> None:
    """One thread per process in both layouts (a user's OMP_NUM_THREADS is respected), so the
    two layouts differ only in how the processes meet: the numbers must agree."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = free_port()
    nodes = [
        launch(
            [
                *TORCHRUN,
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"localhost:{port}",
                "--rdzv-id",
                "hvbench-test",
                "-m",
                "hvbench",
                *smoke_vae_args("reference", f"output.root={tmp_path / 'two-nodes'}"),
            ],
            tmp_path / f"node{i}",
            env,
        )
        for i in range(2)
    ]
    for process in nodes:
        finish(process)
    two = record(tmp_path / "two-nodes" / "runs/toy-corr/vae/reference")
    one = record(two_process_run)  # torchrun, 2 processes on this node
    assert two["run"]["world_size"] == one["run"]["world_size"] == 2
    test = {k: v for k, v in one["metrics"].items() if k.startswith("test/")}
    assert test and test.keys() == {k for k in two["metrics"] if k.startswith("test/")}
    for key, value in test.items():
        if isinstance(value, float):
            assert two["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        else:
            assert two["metrics"][key] == value, key


LAUNCHED = {"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize(
    ("env", "parent", "launcher_default"),
    [
        (LAUNCHED, {"": "torchrun --nproc_per_node 2"}, True),  # torchrun's default
        ({"ACCELERATE_DYNAMO_BACKEND": "NO", "OMP_NUM_THREADS": "1"}, {"": "accelerate"}, True),
        (LAUNCHED, {"OMP_NUM_THREADS": "1", "": "torchrun"}, False),  # the user's own 1
        (LAUNCHED, {"": "accelerate launch --num_cpu_threads_per_process 1"}, False),
        (LAUNCHED, None, False),  # launcher unreadable: the value stands
        ({"OMP_NUM_THREADS": "1"}, {"": "bash"}, False),  # not launched: `python -m hvbench`
        ({**LAUNCHED, "OMP_NUM_THREADS": "3"}, {"": "torchrun"}, False),
    ],
)
def test_launcher_default_told_from_user_choice(
    env: dict[str, str], parent: dict[str, str] | None, launcher_default: bool
) -> None:
    assert cpu.launcher_set_threads(env, parent) is launcher_default


def test_thread_share_divides_cores_among_local_processes() -> None:
    assert cpu.thread_share(LAUNCHED, {"": "torchrun"}) == max(1, cpu.cores() // 2)
    assert cpu.thread_share({**LAUNCHED, "LOCAL_WORLD_SIZE": "1"}, {"": "accelerate"}) == cpu.cores()
    assert cpu.thread_share(LAUNCHED, {"OMP_NUM_THREADS": "1"}) is None  # the user's: kept
