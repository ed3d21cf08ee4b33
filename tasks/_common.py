"""Helpers the dataset tasks share: seeded splits, file hashes, progress, cache markers.

Kept apart from any one task so that dSprites, CelebA and the user's own files
split, hash and report the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from hvbench.atomic import write_json
from hvbench.errors import UserError, shown

SPLITS = ("train", "val", "test")
T = TypeVar("T")


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 1:
            raise UserError(f"task.{name} must lie in (0, 1), got {value}")
    if val_fraction + test_fraction >= 1:
        raise UserError(
            f"task.val_fraction + task.test_fraction must be < 1, got {val_fraction + test_fraction}"
        )


def seeded_split(
    n: int, val_fraction: float, test_fraction: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Positions 0..n-1 → train/val/test positions, each in a seeded random order.

    One permutation from `rng`: its first round(n·test_fraction) positions are
    the test split, the next round(n·val_fraction) the validation split, the
    rest training. Not sorted: evaluation caps (`eval.max_examples`,
    `iwae_examples`, `val_examples`) take a split's first rows, which must then
    be a uniform sample, not (on dSprites' factor grid) all squares.
    """
    check_fractions(val_fraction, test_fraction)
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    if min(n_test, n_val, n - n_test - n_val) < 1:
        raise UserError(
            f"{n} examples are too few to split with val_fraction={val_fraction} "
            f"and test_fraction={test_fraction}: every split needs at least one"
        )
    order = rng.permutation(n)
    parts = {
        "test": order[:n_test],
        "val": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }
    return {name: parts[name] for name in SPLITS}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def track(
    items: Iterable[T], total: int, description: str, size: Callable[[T], int] = lambda _: 1
) -> Iterator[T]:
    """Iterate with a rich progress bar advancing by `size(item)` (plain when not on a terminal)."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task, size(item))


def read_meta(folder: Path) -> dict[str, Any] | None:
    """A cache folder's `meta.json`, written last by its builder: None means no finished cache."""
    path = folder / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else None


def finish_cache(folder: Path, meta: dict[str, Any]) -> None:
    write_json(folder / "meta.json", meta)


def open_hf_dataset(source: str) -> Any:
    """A 🤗 `Dataset`/`DatasetDict` from a `save_to_disk` folder, or a hub id used offline.

    A hub id never touches the network, whatever HF_HUB_OFFLINE says: its
    snapshot is looked up with local_files_only=True and loaded as a local
    folder, so a machine without network fails at once with a clear message.
    """
    import datasets  # import on use: it is slow, and most runs never need it
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    path = Path(source).expanduser()
    if path.is_dir():
        try:
            return datasets.load_from_disk(str(path))
        except FileNotFoundError:
            raise UserError(
                f"{path} is not a 🤗 dataset folder: save one with Dataset.save_to_disk"
            ) from None
        except Exception as err:  # a damaged dataset_info.json or state.json fails in many types
            lines = str(err).strip().splitlines() or [""]
            raise UserError(
                f"{path} is a damaged 🤗 dataset folder ({type(err).__name__}: {shown(lines[0])})"
            ) from None
    try:
        snapshot = snapshot_download(source, repo_type="dataset", local_files_only=True)
    except (LocalEntryNotFoundError, ValueError):  # ValueError: not a valid repo id
        raise UserError(
            f"{source!r} is neither a folder nor a 🤗 dataset in the local Hugging Face cache; "
            f"fetch it once where there is network (huggingface-cli download --repo-type "
            f"dataset {source}) or pass a folder written by save_to_disk"
        ) from None
    return datasets.load_dataset(snapshot)
