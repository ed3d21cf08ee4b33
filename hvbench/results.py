"""Run folders and provenance: where a run's numbers live and what produced them.

`results/runs/<task>/<model>/<run-id>/` holds `config.yaml`, `metrics.json` and
`figures/`. A run id is unique and its folder is created exclusively, so two
runs never write the same folder and nothing saved is overwritten.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import secrets
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from hvbench import __version__
from hvbench.atomic import write_text
from hvbench.errors import UserError

LIBRARIES = ("torch", "accelerate", "wandb", "datasets", "numpy")


def new_run_id(seed: int) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-s{seed}-{secrets.token_hex(3)}"


def create_run_dir(root: Path, task: str, model: str, run_id: str) -> Path:
    path = Path(root) / "runs" / task / model / run_id
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        raise UserError(f"run folder {path} already exists; choose another output.run_id") from None
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
