"""Faults (issue 18): a disk that fills up mid-run, a second Ctrl-C while hvbench shuts down,
and an empty checkpoint folder left behind.

A full disk fails the run with exit 1 and one line naming the cause, never a chain of
tracebacks, and status.json says `failed` (overwritten in place when there is no room for a
new file), not `running` for a dead process; once space is freed, `--resume` finishes with the
numbers of an uninterrupted run. The disk is a real 5 MB tmpfs (skipped, with the reason,
where mounting is not allowed). Runs are real subprocesses where the exit and stderr are what
is tested, in this process otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hvbench.results import read_status, write_status
from tests.conftest import ONE_THREAD, in_process, run_cli, smoke_vae_args


def run_args(run_id: str, root: Path, *sets: str) -> list[str]:
    """The smoke VAE as the resume tests run it (a checkpoint every 2 steps: a 5 MB disk
    fills up half-way), under `root`."""
    return smoke_vae_args(run_id, f"output.root={root}", *sets)


def hvbench_failing(cwd: Path, *args: str) -> str:
    """`python -m hvbench ARGS` in a real process that must fail as a fault of the machine:
    exit 1, no traceback, one `hvbench:` line (returned)."""
    result = run_cli(*args, cwd=cwd, env=ONE_THREAD)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("hvbench:")]
    return line


def copy_of(reference: Path, disk: Path) -> Path:
    """The reference run's folder (without its checkpoints) under `disk`'s results root."""
    run_dir = disk / "results" / "runs" / "toy-corr" / "vae" / "reference"
    shutil.copytree(reference, run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    return run_dir


def outcome(run_dir: Path) -> tuple[Any, ...]:
    record = json.loads((run_dir / "metrics.json").read_text())
    measured = {k: v for k, v in record["metrics"].items() if not k.startswith("perf/")}
    return measured, record["units"], (run_dir / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run on a roomy disk: what every resumed run must end with."""
    root = tmp_path_factory.mktemp("faults") / "results"
    in_process(*run_args("reference", root))
    return root / "runs" / "toy-corr" / "vae" / "reference"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 5 MB tmpfs, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.strip() or made.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path, limit: int | None = None) -> None:
    """Write zeros to `path` until the disk is full, to the last page (or `limit` bytes)."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        for size in (65536, 4096, 1):
            try:
                while limit is None or written < limit:
                    written += f.write(b"\0" * size)
            except OSError:
                continue


def test_disk_full_while_checkpointing_fails_in_one_line_and_resumes_identically(
    small_disk: Path, reference: Path
) -> None:
    fill(small_disk / "ballast", limit=3_500_000)  # ~1.5 MB left: a few checkpoints
    root = small_disk / "results"
    line = hvbench_failing(small_disk.parent, *run_args("full", root, "train.keep_checkpoints=100"))
    run_dir = root / "runs" / "toy-corr" / "vae" / "full"
    assert line.startswith("hvbench: run failed: No space left on device")
    assert f"resume from step {read_status(run_dir)['step']} with: hvbench run --resume" in line
    status = read_status(run_dir)
    assert status["status"] == "failed" and "No space left on device" in status["reason"]
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # the half-written one is gone

    (small_disk / "ballast").unlink()  # space freed
    in_process("run", "--resume", str(run_dir), "--set", "train.keep_checkpoints=2")
    assert read_status(run_dir)["status"] == "finished"
    assert outcome(run_dir) == outcome(reference)


def test_eval_on_a_full_disk_fails_in_one_line_and_loses_nothing(
    small_disk: Path, reference: Path
) -> None:
    """A full disk is a fault of the machine (exit 1), not a bad value (exit 2); the run's
    records are untouched and the same command works once space is freed."""
    run_dir = copy_of(reference, small_disk)
    before = sorted(p.name for p in run_dir.iterdir())
    fill(small_disk / "ballast")
    command = ["eval", str(run_dir), "--set", "eval.au_samples=4", "--set", "eval.iwae_k=0"]
    line = hvbench_failing(small_disk.parent, *command)
    assert line.startswith(f"hvbench: failed: cannot write a metrics version into {run_dir}")
    assert "No space left on device" in line
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert outcome(run_dir) == outcome(reference)

    (small_disk / "ballast").unlink()
    in_process(*command)
    assert (run_dir / "metrics.v2.json").is_file()


def test_a_disk_that_fills_while_figures_are_drawn_keeps_the_numbers(
    small_disk: Path, reference: Path
) -> None:
    """Room for the new record, none for its figures: exit 1 in one line, the record kept
    (written first), no half-written figure, the run's own files untouched."""
    run_dir = copy_of(reference, small_disk)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["output"]["figures"] = True  # the reference run drew none
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    room = 2 * len((run_dir / "metrics.json").read_bytes()) + 32768
    (small_disk / "ballast").write_bytes(bytes(shutil.disk_usage(small_disk).free - room))
    line = hvbench_failing(small_disk.parent, "eval", str(run_dir))
    assert line.startswith("hvbench: failed: No space left on device"), line
    assert (run_dir / "metrics.v2.json").is_file()
    assert outcome(run_dir) == outcome(reference)
    drawn = list((run_dir / "figures.v2").iterdir())
    assert all(p.suffix == ".png" and p.stat().st_size > 0 for p in drawn), drawn


def test_a_status_write_on_a_full_disk_still_says_how_the_run_ended(small_disk: Path) -> None:
    run_dir = small_disk / "run"
    run_dir.mkdir()
    write_status(run_dir, "running", 4, 40)
    fill(small_disk / "ballast")  # not a byte left for a temp file
    write_status(run_dir, "failed", 4, 40, "No space left on device: somewhere")
    status = read_status(run_dir)
    assert (status["status"], status["step"]) == ("failed", 4)
    assert sorted(p.name for p in run_dir.iterdir()) == ["status.json"]  # no temp file left


def test_second_ctrl_c_while_shutting_down_and_an_empty_leftover_checkpoint(
    tmp_path: Path, reference: Path
) -> None:
    """A second Ctrl-C after the one-line report (while W&B or Accelerate shut down; here an
    exit hook that sleeps) ends the process at once, without a KeyboardInterrupt traceback.
    The run then resumes past an empty step folder from the checkpoint before it."""
    root = tmp_path / "results"
    run_dir = root / "runs" / "toy-corr" / "vae" / "stopped"
    slow_exit = "import atexit, time; atexit.register(time.sleep, 20); import hvbench.cli as c; c.main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", slow_exit, *run_args("stopped", root)],
        cwd=tmp_path,
        env={**os.environ, **ONE_THREAD},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not list((run_dir / "checkpoints").glob("step-*")) and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        first = ""
        while not first.startswith("hvbench: interrupted"):
            first = proc.stderr.readline()
            assert first or proc.poll() is None, "the run ended without its one line"
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 130
        assert time.monotonic() - started < 15  # not after the 20 s exit hook
    finally:
        proc.kill()
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest
    assert read_status(run_dir)["status"] == "interrupted"

    steps = sorted(int(p.name[5:]) for p in (run_dir / "checkpoints").glob("step-*"))
    (run_dir / "checkpoints" / f"step-{steps[-1] + 2:08d}").mkdir()  # empty, newest
    in_process("run", "--resume", str(run_dir))
    assert read_status(run_dir)["status"] == "finished"
    assert outcome(run_dir) == outcome(reference)
