"""Run folders, their status and their records: where a run's numbers live and what produced them.

`results/runs/<task>/<model>/<run-id>/` holds `config.yaml`, `status.json`,
`metrics.json` (and `metrics.vN.json` for each re-evaluation), `figures/`,
`checkpoints/` and `model.safetensors`. A run id is one safe path component and
its folder is created exclusively, so two runs never write the same folder and
nothing saved is overwritten. This module is the one place that reads a run's
status and metrics records back (`read_status`, `load_metrics`), so every
reader treats an old, half-written or hand-edited folder the same way.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.metadata
import json
import os
import platform
import re
import secrets
import subprocess
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from hvbench import __version__
from hvbench.atomic import write_json, write_new, write_text
from hvbench.errors import UserError, shown

LIBRARIES = ("torch", "accelerate", "wandb", "datasets", "numpy")
STATUSES = ("running", "finished", "failed", "interrupted")
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"  # version 1; each re-evaluation adds metrics.v2.json, v3, ...
_SAFE_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_VERSION = re.compile(r"metrics\.v([1-9][0-9]*)\.json")
FLOAT_MAX = 1.7976931348623157e308
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class RunFailed(Exception):
    """The run is marked failed (it diverged); the message is one line naming the step."""

    def __init__(self, message: str, run_dir: Path):
        super().__init__(message)
        self.run_dir = run_dir


class RunInterrupted(Exception):
    """A signal stopped the run; it is marked interrupted and resumes from `step`."""

    def __init__(self, run_dir: Path, step: int, signum: int):
        super().__init__(f"interrupted at step {step}")
        self.run_dir, self.step, self.signum = run_dir, step, signum


class MalformedRecord(ValueError):
    """A metrics record that cannot be read as one: the message names the file and the fault."""


def new_run_id(seed: int) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-s{seed}-{secrets.token_hex(3)}"


def run_id_problem(run_id: str) -> str | None:
    """Why `run_id` cannot name a run folder (None if it can): one plain path component, so a
    run never lands outside results/runs/<task>/<model>/ or where the leaderboard never looks."""
    if not _SAFE_RUN_ID.fullmatch(run_id):
        return "use 1-128 letters, digits, '-', '_', '.' or '+', starting with a letter or digit"
    if ".." in run_id:
        return "'..' is not allowed"
    return None


RUNS = "runs"  # results/<RUNS>/<task>/<model>/<run-id>: every run folder's place
FOLDER_KEY = "run_dir"  # where a loaded record keeps the folder it was read from


def runs_dir(root: Path) -> Path:
    """The folder holding every run folder under an output root."""
    return Path(root) / RUNS


def run_dir_of(root: Path, task: str, model: str, run_id: str) -> Path:
    """Where a new run is written: the one place a run folder's path is built."""
    return runs_dir(root) / task / model / run_id


def with_folder(record: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A loaded record that remembers its folder, so readers of many runs (the board, the
    report, the W&B report) use the folder it was read from and never rebuild its path."""
    return {**record, FOLDER_KEY: Path(run_dir)}


def folder_of(run: dict[str, Any]) -> Path:
    """The folder a record loaded by `with_folder` was read from."""
    return run[FOLDER_KEY]


def check_writable_root(root: Path) -> None:
    """Refuse an output root that cannot take a run, before anything is loaded or written."""
    existing = Path(root).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"output root {root} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"output root {root} is not writable (no write permission on {existing})")


def create_run_dir(root: Path, task: str, model: str, run_id: str) -> Path:
    path = run_dir_of(root, task, model, run_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir()
    except FileExistsError:
        raise UserError(f"run folder {path} already exists; choose another output.run_id") from None
    except OSError as err:
        raise UserError(f"cannot create run folder {path}: {err.strerror}") from None
    return path


def save_config(run_dir: Path, config: dict[str, Any]) -> None:
    write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def git_revision() -> str | None:
    """The code version, with '-dirty' when the checkout has uncommitted changes."""
    here = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def provenance() -> dict[str, Any]:
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = None
    return {
        "hvbench": __version__,
        "git": git_revision(),
        "python": platform.python_version(),
        "host": platform.node(),
        "pid": os.getpid(),
        "libraries": versions,
    }


@contextlib.contextmanager
def hold_run(run_dir: Path) -> Iterator[None]:
    """Hold the run folder for one process at a time (an OS lock on `.lock`, released even by
    SIGKILL), so two `--resume`s of one run never train into the same folder."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): no lock
        yield
        return
    with open(Path(run_dir) / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"run {run_dir} is in use by another hvbench process") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_status(
    run_dir: Path, status: str, step: int, steps: int, reason: str | None = None
) -> None:
    """Record what the run is doing now; `reason` says why a run failed or stopped."""
    if status not in STATUSES:
        raise ValueError(f"unknown run status {status!r}")
    record = {
        "status": status,
        "reason": reason,
        "step": step,
        "steps": steps,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "pid": os.getpid(),
    }
    path = Path(run_dir) / STATUS_FILE
    try:
        write_json(path, record)
    except OSError as err:
        # A full disk has no room for the temp file of an atomic write, but an existing
        # status.json's own blocks take the new record: better a record that could be torn by a
        # crash in the next millisecond (read back as 'unknown') than 'running' for a dead run.
        if err.errno not in DISK_FULL or not path.is_file():
            raise
        with open(path, "r+b") as f:
            f.write((json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
            f.truncate()
            f.flush()
            os.fsync(f.fileno())


def read_status(run_dir: Path) -> dict[str, Any]:
    """The run's status record. A folder from before status.json existed counts as finished when
    it holds metrics.json, else as failed; an unreadable status.json reads as status 'unknown'."""
    run_dir = Path(run_dir)
    path = run_dir / STATUS_FILE
    if not path.exists():
        if (run_dir / METRICS_FILE).exists():
            return {"status": "finished", "reason": None, "step": None}
        return {"status": "failed", "reason": "no status.json or metrics.json", "step": None}
    try:
        record = json.loads(path.read_bytes().decode())
    except (OSError, ValueError) as err:
        return {"status": "unknown", "reason": f"unreadable status.json ({err})", "step": None}
    if not isinstance(record, dict) or record.get("status") not in STATUSES:
        return {"status": "unknown", "reason": "status.json names no known status", "step": None}
    return record


def run_status(run_dir: Path) -> str:
    """running | finished | failed | interrupted | unknown: what a sweep checks before it
    starts or resumes a run."""
    return read_status(run_dir)["status"]


def metrics_versions(run_dir: Path) -> list[Path]:
    """The run's metrics records, oldest first: metrics.json, then metrics.v2.json, ..."""
    run_dir = Path(run_dir)
    found = [(1, run_dir / METRICS_FILE)] if (run_dir / METRICS_FILE).is_file() else []
    for path in run_dir.glob("metrics.v*.json"):
        match = _VERSION.fullmatch(path.name)
        if match and int(match.group(1)) > 1:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def load_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's latest metrics record; MalformedRecord when there is none or it is not one."""
    versions = metrics_versions(run_dir)
    if not versions:
        raise MalformedRecord(f"{run_dir}: no {METRICS_FILE}")
    return read_record(versions[-1])


def read_record(path: Path) -> dict[str, Any]:
    """One metrics file, checked for the fields every reader relies on."""
    try:
        record = json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise MalformedRecord(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise MalformedRecord(f"{path}: not JSON ({err.msg}, line {err.lineno})") from None
    except ValueError as err:  # an integer of more digits than Python converts
        raise MalformedRecord(f"{path}: not a record ({shown(str(err))})") from None
    except RecursionError:
        raise MalformedRecord(f"{path}: nested too deeply to be a record") from None
    except OSError as err:
        raise MalformedRecord(f"{path}: cannot be read ({err.strerror})") from None
    problem = _record_problem(record)
    if problem:
        raise MalformedRecord(f"{path}: {problem}")
    return record


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"holds a JSON {type(record).__name__}, not a run record"
    for key in ("task", "model", "run_id"):
        if not isinstance(record.get(key), str):
            return f"has no {key!r} string"
    metrics, info = record.get("metrics"), record.get("run")
    if not isinstance(metrics, dict):
        return "has no 'metrics' mapping"
    for key, value in metrics.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"metric {shown(key)} is {shown(value)}, not a number"
        if isinstance(value, int) and abs(value) > FLOAT_MAX:  # NaN and ±inf are shown as such
            return f"metric {shown(key)} is an integer beyond any float ({shown(value)})"
    if not isinstance(info, dict):
        return "has no 'run' mapping"
    splits = info.get("eval_splits")
    if not (isinstance(splits, list) and splits and all(isinstance(s, str) for s in splits)):
        return "run.eval_splits is not a list of split names"
    return None


def unwritable(err: OSError, what: str) -> Exception:
    """A failed write of `what` as the CLI reports it: a full disk is a fault of the machine
    (exit 1: nothing is lost, and the same command works once space is freed); anything else,
    a read-only or foreign folder, is the user's to fix (exit 2)."""
    message = f"cannot write {what}: {err.strerror or type(err).__name__}"
    return OSError(err.errno, message) if err.errno in DISK_FULL else UserError(message)


def write_new_metrics(run_dir: Path, record: dict[str, Any]) -> Path:
    """Add `record` as the run's next metrics version, beside the old ones and never over them
    (two re-evaluations at once each get their own version)."""
    data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    while True:
        versions = metrics_versions(run_dir)
        latest = 1 if not versions else max(_version(p) for p in versions)
        path = Path(run_dir) / f"metrics.v{latest + 1}.json"
        try:
            write_new(path, data)
            return path
        except FileExistsError:
            continue


def figures_dir(metrics_path: Path) -> Path:
    """The figures drawn with one metrics version: `figures/` beside metrics.json,
    `figures.vN/` beside metrics.vN.json, so a re-evaluation never draws over the run's own."""
    metrics_path = Path(metrics_path)
    version = _version(metrics_path)
    return metrics_path.parent / ("figures" if version == 1 else f"figures.v{version}")


def _version(path: Path) -> int:
    match = _VERSION.fullmatch(path.name)
    return int(match.group(1)) if match else 1
