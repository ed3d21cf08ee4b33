"""Shared fixtures: every test writes into its own temp folders, never into the repo."""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
SMOKE_VAE = str(CONFIGS / "smoke" / "toy-vae.yaml")
# the smoke VAE as the resume and multi-process tests run it: 40 steps, a checkpoint every 2
# (a kill lands at any step), no figures (not what they test), and an odd test split that two
# processes shard with padding and must still count each image once
# a test's own subprocesses run torch on one thread: two OpenMP threads per process crawl on
# 2 shared cores (pytest_configure sets the same in every xdist worker's environment)
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
RESUME_SETS = ("train.steps=40", "train.checkpoint_every=2", "output.figures=false", "task.n_test=255")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, one thread per worker for torch here and for every process a test
    starts (OMP_NUM_THREADS, which hvbench respects as the user's choice): the workers already
    take one core each, and OpenMP threads beyond the cores spin waiting on each other (a
    seconds-long check then takes minutes beside a subprocess test). A test that gives its
    processes every core on purpose (the launchers' thread share) gets OpenMP threads that
    sleep while they wait instead of spinning on a core the other workers need."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `slow` (tens of seconds: several processes each) run first, so under
    pytest-xdist none of them starts when the other workers are about to finish."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def _shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every pytest-xdist worker of this session sees (their base temps' parent)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]
) -> Path:
    """`build(folder)` run once per test session even across xdist workers: the first worker
    to ask builds it under a lock, the others wait and reuse it (the full dSprites grid is
    built once, not once per worker). Removed when the session ends."""
    root = _shared_root(tmp_path_factory)
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The controller (or a run without workers) removes what `built_once` built."""
    if os.environ.get("PYTEST_XDIST_WORKER") or not hasattr(session.config, "_tmp_path_factory"):
        return
    base = session.config._tmp_path_factory.getbasetemp()
    for done in base.glob("*.done"):
        shutil.rmtree(done.with_suffix(""), ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HVBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("WANDB_MODE", raising=False)


def load_script(name: str) -> ModuleType:
    """A script under scripts/ as a module (scripts/ is not a package: it is run, not
    installed), so a test calls its `main(argv)` without a second interpreter."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def cli_here(capsys: pytest.CaptureFixture[str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`hvbench ARGS` from `cwd` in this process, read back as `run_cli` reads a subprocess:
    checks of what the CLI prints and its exit status need no second interpreter (a second
    of start-up each); tests/test_bad_input.py keeps sending such cases through real ones."""
    capsys.readouterr()
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        in_process(*args)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        os.chdir(previous)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["hvbench", *args], code, out, err)


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


def smoke_vae_args(run_id: str, *sets: str) -> list[str]:
    """`hvbench run` of the smoke VAE with RESUME_SETS, as `run_id`."""
    every = [*RESUME_SETS, f"output.run_id={run_id}", *sets]
    return ["run", "--config", SMOKE_VAE, *[arg for s in every for arg in ("--set", s)]]


@pytest.fixture(scope="session")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke VAE trained by torchrun with 2 CPU processes of one thread each, once per
    session (across workers): its run folder. The reference of a 2-process run killed and
    resumed, and of the same run across two torchrun nodes."""

    def train(cwd: Path) -> None:
        result = subprocess.run(
            [*torchrun(2), "-m", "hvbench", *smoke_vae_args("reference")],
            cwd=cwd,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.count("run finished") == 1  # the main process reports, alone

    return built_once(tmp_path_factory, "two-process-run", train) / "results/runs/toy-corr/vae/reference"


@contextmanager
def stdout_into(path: Path) -> Iterator[None]:
    """What this process and the processes it starts print, into `path`: Python's stdout and
    file descriptor 1 (which a subprocess inherits) both point at the file for the block."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(path, "w") as file, redirect_stdout(file):
            os.dup2(file.fileno(), 1)
            try:
                yield
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
    finally:
        os.close(saved)


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's smoke sweep, run once per test session (across workers) by the CLI and
    logged to W&B offline (as the README's sweep → W&B Report sequence does): its results
    root. The sweep itself runs in this process (each of its runs is a subprocess, as always);
    what it prints is kept in `sweep.out` beside the root."""

    def sweep(cwd: Path) -> None:
        env = {"HVBENCH_CACHE": str(cwd / "cache"), "WANDB_DIR": str(cwd / "wandb"), "COLUMNS": "80"}
        printed = cwd / "sweep.out"
        with pytest.MonkeyPatch.context() as patch, stdout_into(printed):
            for key, value in env.items():
                patch.setenv(key, value)
            patch.chdir(cwd)
            in_process("sweep", str(CONFIGS / "sweeps" / "smoke.yaml"), "--out", "results",
                       "--wandb", "offline")  # fmt: skip
        summary = "sweep smoke: 0 skipped, 4 finished, 0 failed, 0 interrupted"
        assert summary in printed.read_text()

    return built_once(tmp_path_factory, "smoke-sweep", sweep) / "results"
