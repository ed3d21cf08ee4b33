"""Atomic file writes: a crash or a full disk never leaves a half-written result.

Everything is written to a temporary file in the destination folder and then
renamed over the target, which POSIX makes atomic. `write_new` links the file
into place instead, which fails rather than replace an existing one; folders
(checkpoints) are filled under a temporary name and renamed with
`publish_folder`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temp file beside `path` with the permissions a plain open() would give it: mkstemp
    makes files owner-only, and a leaderboard or a report is meant to be read by others."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


def write_atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(file)` on a temp file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_new(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically; FileExistsError if `path` exists (never over it)."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # atomic, and refuses an existing target (os.replace would not)
    finally:
        Path(tmp).unlink(missing_ok=True)


def sync_folder(folder: Path) -> None:
    """fsync every file in `folder` and the folder itself, so a rename publishes whole files."""
    for path in Path(folder).iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _sync_dir(folder)


def publish_folder(tmp: Path, final: Path) -> None:
    """Rename the finished folder `tmp` to `final`, replacing an older `final` if one exists."""
    if final.exists():
        old = final.with_name(f".old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _sync_dir(final.parent)


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def out_of_space(path: Path) -> bool:
    """Whether the filesystem holding `path` (or its nearest existing parent) has less than
    1 MiB left: what a write that failed without an errno (torch.save, safetensors) ran into."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stats = os.statvfs(path)
    except (OSError, AttributeError):  # no statvfs (Windows)
        return False
    return stats.f_bavail * stats.f_frsize < 2**20


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
