"""Runs that survive: a SIGKILL at a random step or a Ctrl-C, then `--resume`, ends with the
numbers of an uninterrupted run; `hvbench eval` re-scores a finished run without retraining;
a diverged run is failed and never ranked; concurrent runs all reach the leaderboard.

Each run is a real subprocess (`python -m hvbench`, or torchrun with 2 CPU processes) killed
for real. "Identical" means every metrics.json number except perf/* (throughput, memory:
timings) and the final weights byte for byte; wall time and dates differ by nature.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from hvbench.cli import main
from hvbench.leaderboard import load_runs
from tests.conftest import ONE_THREAD, SMOKE_VAE, in_process, smoke_vae_args, torchrun

STEPS = 40


def hvbench(nproc: int, *args: str) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "hvbench", *args]
    return [*torchrun(nproc), "-m", "hvbench", *args]


def start(nproc: int, cwd: Path, run_id: str) -> subprocess.Popen:
    return subprocess.Popen(
        hvbench(nproc, *smoke_vae_args(run_id)),
        cwd=cwd,
        env={**os.environ, **ONE_THREAD},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(nproc: int, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        hvbench(nproc, *args),
        cwd=cwd,
        env={**os.environ, **ONE_THREAD},
        capture_output=True,
        text=True,
        timeout=300,
    )



def wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, step: int) -> None:
    """Until a checkpoint of `step` or later is published (or the run ends)."""
    folder = run_dir / "checkpoints"
    while proc.poll() is None:
        if folder.is_dir() and any(
            p.name.startswith("step-") and int(p.name[5:]) >= step for p in folder.iterdir()
        ):
            return
        time.sleep(0.001)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every worker at once: nothing gets to clean up."""
    parent = psutil.Process(proc.pid)
    for p in [parent, *parent.children(recursive=True)]:
        p.kill()
    proc.wait()


def outcome(run_dir: Path) -> tuple[Any, ...]:
    record = json.loads((run_dir / "metrics.json").read_text())
    weights = (run_dir / "model.safetensors").read_bytes()
    return measured(record), record["units"], record["factor_unit"], weights


def status(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "status.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 1-process run: what every resumed run must end with."""
    root = tmp_path_factory.mktemp("resume") / "results"
    in_process(*smoke_vae_args("reference"), "--set", f"output.root={root}")
    return root / "runs" / "toy-corr" / "vae" / "reference"


def kill_and_resume(nproc: int, cwd: Path, run_id: str) -> tuple[Path, int]:
    step = random.randrange(2, STEPS)
    run_dir = cwd / "results" / "runs" / "toy-corr" / "vae" / run_id
    proc = start(nproc, cwd, run_id)
    wait_for_checkpoint(proc, run_dir, step)
    assert proc.poll() is None, f"the run ended before step {step}: {proc.stderr.read()[-2000:]}"
    kill_tree(proc)
    killed = status(run_dir)
    assert killed["status"] == "running" and killed["step"] < STEPS, killed
    if nproc == 1:
        in_process("run", "--resume", str(run_dir))
    else:
        resumed = run(nproc, cwd, "run", "--resume", str(run_dir))
        assert resumed.returncode == 0, f"killed at step {step}: {resumed.stderr[-2000:]}"
    return run_dir, step


def test_sigkill_at_a_random_step_then_resume_is_identical(reference: Path) -> None:
    run_dir, step = kill_and_resume(1, reference.parents[4], "killed")
    assert outcome(run_dir) == outcome(reference), f"killed after checkpoint {step}"
    assert status(run_dir)["status"] == "finished"
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == ["step-00000038", "step-00000040"]  # train.keep_checkpoints=2


@pytest.mark.slow
def test_two_processes_share_one_run_and_resume_it_identically_after_sigkill(
    tmp_path: Path, two_process_run: Path
) -> None:
    reference = two_process_run
    assert sorted(p.name for p in reference.parent.iterdir()) == ["reference"]  # one folder
    record = json.loads((reference / "metrics.json").read_text())
    assert record["run"]["world_size"] == 2 and record["metrics"]["test/examples"] == 255
    run_dir, step = kill_and_resume(2, tmp_path, "killed")
    assert outcome(run_dir) == outcome(reference), f"killed after checkpoint {step}"
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["run"]["world_size"] == 2
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["killed"]


def test_ctrl_c_checkpoints_marks_interrupted_and_resumes_identically(reference: Path) -> None:
    cwd = reference.parents[4]
    run_dir = cwd / "results" / "runs" / "toy-corr" / "vae" / "ctrl-c"
    proc = start(1, cwd, "ctrl-c")
    wait_for_checkpoint(proc, run_dir, 10)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("hvbench: interrupted") and "Traceback" not in stderr
    assert lines[-1].endswith(f"resume with: hvbench run --resume {run_dir.relative_to(cwd)}")
    stopped = status(run_dir)
    assert stopped["status"] == "interrupted" and stopped["reason"].startswith("SIGINT")
    assert (run_dir / "checkpoints" / f"step-{stopped['step']:08d}").is_dir()
    in_process("run", "--resume", str(run_dir))
    assert outcome(run_dir) == outcome(reference)


def test_resume_of_a_finished_run_is_refused(reference: Path) -> None:
    """In-process: refused before anything loads, and the finished run is left as it was."""
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--resume", str(reference)])
    assert exit_.value.code == 2  # already finished: `hvbench eval` is the way to re-score
    assert status(reference)["status"] == "finished"


def test_eval_rescores_a_finished_run_without_retraining(reference: Path) -> None:
    before = {p.name: p.read_bytes() for p in reference.iterdir() if p.is_file()}
    in_process("eval", str(reference))
    first = json.loads((reference / "metrics.json").read_text())
    same = json.loads((reference / "metrics.v2.json").read_text())
    # the RNGs start where the run's own evaluation started: the same numbers come back
    assert measured(same) == measured(first)
    in_process("eval", str(reference), "--set", "eval.iwae_k=64")
    bigger = json.loads((reference / "metrics.v3.json").read_text())
    assert bigger["metrics"]["test/iwae_k"] == 64 and first["metrics"]["test/iwae_k"] == 16
    assert bigger["metrics"]["test/elbo_nats"] == first["metrics"]["test/elbo_nats"]
    assert bigger["metrics"]["test/iwae_nats"] != first["metrics"]["test/iwae_nats"]
    assert bigger["reevaluation"]["overrides"] == ["eval.iwae_k=64"]
    for name, data in before.items():  # nothing saved was overwritten
        if name != "status.json":
            assert (reference / name).read_bytes() == data, name
    (ranked,) = [r for r in load_runs(reference.parents[3]) if r["run_id"] == "reference"]
    assert ranked["metrics"]["test/iwae_k"] == 64  # the leaderboard reads the latest version


def measured(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record["metrics"].items() if not k.startswith("perf/")}


def test_sigterm_during_evaluation_marks_interrupted_and_resumes_identically(
    tmp_path: Path,
) -> None:
    """A scheduler's SIGTERM after training (the final checkpoint is whole, evaluation is
    running) is recorded, not left as `running`; the resume evaluates from the final checkpoint
    and gives the uninterrupted run's numbers. A larger IWAE makes the evaluation last seconds,
    so the signal lands inside it."""
    longer = ["--set", "eval.iwae_k=500"]
    in_process(*smoke_vae_args("whole"), *longer, "--set", f"output.root={tmp_path / 'results'}")
    whole = tmp_path / "results" / "runs" / "toy-corr" / "vae" / "whole"
    run_dir = tmp_path / "results" / "runs" / "toy-corr" / "vae" / "term"
    proc = subprocess.Popen(
        hvbench(1, *smoke_vae_args("term"), *longer),
        cwd=tmp_path,
        env={**os.environ, **ONE_THREAD},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    while proc.poll() is None and not (run_dir / "model.safetensors").is_file():
        time.sleep(0.001)  # written after training, before evaluation
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines()[-1].startswith("hvbench: interrupted after step 40")
    stopped = status(run_dir)
    assert stopped["status"] == "interrupted", stopped
    assert stopped["reason"] == "SIGTERM after the checkpoint of step 40"
    assert not (run_dir / "metrics.json").exists()
    in_process("run", "--resume", str(run_dir))
    assert status(run_dir)["status"] == "finished"
    assert outcome(run_dir) == outcome(whole)


def test_eval_redraws_the_evaluation_figures_beside_the_runs_own(tmp_path: Path) -> None:
    root = tmp_path / "results"
    in_process("run", "--config", SMOKE_VAE, "--set", f"output.root={root}", "--set", "output.run_id=f")
    run_dir = root / "runs" / "toy-corr" / "vae" / "f"
    own = {p.name: p.read_bytes() for p in (run_dir / "figures").iterdir()}
    assert "training_curves.png" in own and "kl_per_unit.png" in own
    in_process("eval", str(run_dir), "--set", "eval.au_samples=4")
    redrawn = {p.name for p in (run_dir / "figures.v2").iterdir()}
    # what the evaluation draws, again; training did not change, so no curves
    assert redrawn == set(own) - {"training_curves.png"}
    assert {p.name: p.read_bytes() for p in (run_dir / "figures").iterdir()} == own
