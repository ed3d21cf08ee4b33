"""`file`: the user's own images, benchmarked without writing code.

`--task file --set task.path=DATA.npz`, or a folder written by 🤗
`save_to_disk`. Arrays (npz keys, or dataset columns):

- `images` (required; a dataset may call it `image`): N×H×W or N×C×H×W.
  Every value 0 or 1 (bool or any number type) → binary images, kept as uint8
  {0, 1}, Bernoulli likelihood; other integers within 0..255 → 8-bit images,
  uint8, discretised logistic likelihood (bits/dim); floating point →
  continuous data, float32, Gaussian likelihood.
- `factors` (optional): N×K ground truth, named by `factor_names` (K strings,
  default factor0, factor1, …). In a dataset every other numeric column is a
  factor named after it.
- `split` (optional): N labels, train/val/test (validation and valid are read
  as val) or 0/1/2. A DatasetDict's train/validation/test splits count as
  labels. Without labels: a seeded split (`_common.seeded_split` with
  task.seed, task.val_fraction, task.test_fraction).

Anything else is refused with one line naming the bad value. The data source a
run records is the sha256 of the validated arrays, so the same data carry the
same name in either container.
"""

from __future__ import annotations

import hashlib
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hvbench.errors import UserError
from hvbench.options import SEED, option
from hvbench.registry import register_task
from hvbench.task import Likelihood, TaskData, TaskSpec
from hvbench.tasks._arrow import MappedImages, column_views
from hvbench.tasks._common import SPLITS, open_hf_dataset, seeded_split

ARRAYS = ("images", "factors", "factor_names", "split")
SPLIT_ALIASES = {"train": 0, "val": 1, "valid": 1, "validation": 1, "test": 2}


@dataclass(frozen=True)
class FileConfig:
    path: str = ""  # an .npz file, or a folder written by 🤗 save_to_disk
    val_fraction: float = 0.1  # used only when the data have no split labels
    test_fraction: float = 0.1
    seed: int = option(0, range=SEED)
    discrete_factors: tuple[str, ...] = ()  # categorical factors, for the disentanglement metrics
    # a 🤗 dataset whose images take more memory than this stays memory-mapped on disk
    memory_limit_mb: float = 2048.0


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an npz, each header checked against the bytes the member holds before
    anything is allocated: a damaged or hostile file is one line, not a 1 PiB allocation."""
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not an .npz file (write one with numpy.savez)")
    try:
        with zipfile.ZipFile(path) as archive:
            return {
                info.filename.removesuffix(".npy"): _read_member(archive, info, path)
                for info in archive.infolist()
                if not info.is_dir()
            }
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as err:
        raise UserError(f"{path} is a damaged npz: {err}") from None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    name = info.filename
    if not name.endswith(".npy"):
        raise UserError(f"{path}: member {name!r} is not a .npy array (numpy.savez writes those)")
    with archive.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(f)
        except ValueError as err:
            raise UserError(f"{path}: member {name!r} is not a .npy array ({err})") from None
    if dtype.hasobject:
        raise UserError(
            f"{path}: member {name!r}: Object arrays cannot be loaded when allow_pickle=False "
            "(store factor_names as np.array(names, dtype=str))"
        )
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > info.file_size:
        raise UserError(
            f"{path}: member {name!r} claims shape {shape} of {dtype} ({claimed:,} bytes) but "
            f"holds {info.file_size:,} bytes"
        )
    with archive.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _decoded_images(images: Any, origin: str) -> np.ndarray:
    """PIL images of one size → (N, H, W) or (N, C, H, W)."""
    arrays = [np.asarray(image) for image in images]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise UserError(f"{origin}: images differ in size ({sorted(shapes)[:2]}, …)")
    stacked = np.stack(arrays)
    return stacked.transpose(0, 3, 1, 2) if stacked.ndim == 4 else stacked


def _read_dataset(source: str) -> dict[str, np.ndarray | MappedImages]:
    """A 🤗 Dataset or DatasetDict → the same arrays an npz would hold."""
    import datasets

    data = open_hf_dataset(source)
    if isinstance(data, datasets.DatasetDict):
        unknown = [name for name in data if name not in SPLIT_ALIASES]
        if unknown:
            raise UserError(f"{source}: split {unknown[0]!r} is none of train, validation, test")
        labels = np.concatenate([np.full(len(d), name) for name, d in data.items()])
        data = datasets.concatenate_datasets(list(data.values()))
        if "split" in data.column_names:
            raise UserError(f"{source}: give split labels as dataset splits or a column, not both")
        arrays: dict[str, np.ndarray | MappedImages] = {"split": labels}
    else:
        arrays = {}
    image_columns = [c for c in ("images", "image") if c in data.column_names]
    if len(image_columns) != 1:
        raise UserError(
            f"{source}: needs one 'images' (or 'image') column, has {data.column_names}"
        )
    image = image_columns[0]
    others = [c for c in data.column_names if c != image]
    for name in others:
        if not isinstance(data.features[name], datasets.Value):
            raise UserError(f"{source}: column {name!r} is neither images, split nor a number")
    columns = data.with_format("numpy", columns=others)[:] if others else {}
    if isinstance(data.features[image], datasets.Image):
        arrays["images"] = _decoded_images(data[image], source)
    else:
        views = column_views(data, image)
        arrays["images"] = (
            MappedImages(views)
            if views is not None
            else data.with_format("numpy", columns=[image])[:][image]
        )
    if "split" in columns:
        arrays["split"] = columns.pop("split")
    if columns:
        arrays["factors"] = np.stack([v.astype(np.float64) for v in columns.values()], 1)
        arrays["factor_names"] = np.array(list(columns))
    return arrays


def _images(images: np.ndarray, origin: str) -> tuple[np.ndarray, Likelihood]:
    """Validated (N, C, H, W) images and the likelihood their values call for."""
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise UserError(f"{origin}: images have shape {images.shape}; expected N×H×W or N×C×H×W")
    if images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
        raise UserError(
            f"{origin}: images have shape {images.shape}, channels last?; expected N×C×H×W "
            "(use images.transpose(0, 3, 1, 2))"
        )
    if images.size == 0:
        raise UserError(f"{origin}: images hold no image (shape {images.shape}); nothing to train on")
    if images.dtype.kind not in "biuf":
        raise UserError(f"{origin}: images must be a bool or number array, got {images.dtype}")
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        first = np.argwhere(~np.isfinite(images))[0]
        raise UserError(
            f"{origin}: image {first[0]} holds {images[tuple(first)]}, not a finite value"
        )
    if ((images == 0) | (images == 1)).all():  # np.isin's temporaries take 8 bytes a value
        return images.astype(np.uint8), "bernoulli"
    if images.dtype.kind == "f":
        return images.astype(np.float32), "gaussian"
    if images.min() < 0 or images.max() > 255:
        bad = images.min() if images.min() < 0 else images.max()
        raise UserError(f"{origin}: integer images must lie in 0..255, found {bad}")
    return images.astype(np.uint8), "dlogistic"


def _factors(arrays: dict[str, np.ndarray], n: int, origin: str) -> tuple[np.ndarray | None, tuple]:
    factors, names = arrays.get("factors"), arrays.get("factor_names")
    if factors is None:
        if names is not None:
            raise UserError(f"{origin}: factor_names given without factors")
        return None, ()
    if factors.ndim != 2 or len(factors) != n or factors.dtype.kind not in "biuf":
        raise UserError(
            f"{origin}: factors have shape {factors.shape} and dtype {factors.dtype}; "
            f"expected numbers of shape ({n}, K)"
        )
    if not np.isfinite(factors).all():
        raise UserError(f"{origin}: factors hold a non-finite value")
    k = factors.shape[1]
    if names is None:
        names = np.array([f"factor{i}" for i in range(k)])
    if names.shape != (k,) or names.dtype.kind not in "US":
        raise UserError(f"{origin}: factor_names must be {k} strings, got {names!r}")
    labels = tuple(str(name) for name in names)
    if len(set(labels)) != k:
        raise UserError(f"{origin}: factor_names repeat a name: {labels}")
    return factors.astype(np.float32), labels


def _split(arrays: dict[str, np.ndarray], n: int, cfg: FileConfig, origin: str) -> dict:
    """split name → row positions, from the labels or seeded."""
    labels = arrays.get("split")
    if labels is None:
        return seeded_split(n, cfg.val_fraction, cfg.test_fraction, np.random.default_rng(cfg.seed))
    if labels.shape != (n,):
        raise UserError(f"{origin}: split has shape {labels.shape}, expected ({n},)")
    if labels.dtype.kind in "US":
        codes = np.array([SPLIT_ALIASES.get(str(v).lower(), -1) for v in labels])
    elif labels.dtype.kind in "iu":
        codes = np.where(np.isin(labels, (0, 1, 2)), labels, -1)
    else:
        raise UserError(f"{origin}: split labels must be strings or 0/1/2, got {labels.dtype}")
    if (codes < 0).any():
        first = int(np.argmax(codes < 0))
        raise UserError(
            f"{origin}: split label {labels[first].item()!r} at row {first} is none of "
            "train/val/test (or 0/1/2)"
        )
    parts = {name: np.nonzero(codes == code)[0] for code, name in enumerate(SPLITS)}
    empty = [name for name, rows in parts.items() if len(rows) == 0]
    if empty:
        raise UserError(f"{origin}: the split labels put no row in {empty[0]!r}")
    return parts


def _digest(
    images: np.ndarray | MappedImages, factors: np.ndarray | None, names: tuple, split: dict
) -> str:
    digest = hashlib.sha256(str((images.shape, images.dtype.str, names)).encode())
    for chunk in images.chunks() if isinstance(images, MappedImages) else [images]:
        digest.update(np.ascontiguousarray(chunk).tobytes())
    if factors is not None:
        digest.update(factors.tobytes())
    for name in SPLITS:
        digest.update(split[name].astype(np.int64).tobytes())
    return digest.hexdigest()


def sample_file(folder: Path) -> dict[str, object]:
    """120 seeded 8-bit 3×16×16 images with two continuous factors, as a user's npz."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sample.npz"
    images = rng.integers(0, 256, (120, 3, 16, 16), dtype=np.uint8)
    np.savez(path, images=images, factors=rng.random((120, 2)))
    return {"path": str(path)}


@register_task(
    "file",
    config=FileConfig,
    description="your own images: task.path=DATA.npz or a 🤗 save_to_disk folder",
    sample=sample_file,
)
def load_file(cfg: FileConfig, cache_dir: Path) -> TaskData:
    if not cfg.path:
        raise UserError("task 'file' needs task.path=DATA.npz (or a 🤗 save_to_disk folder)")
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if not (path.is_dir() or path.is_file()):  # reading a FIFO or a device never ends
        raise UserError(f"task.path {path} is neither a file nor a folder (a FIFO or device?)")
    arrays = _read_dataset(str(path)) if path.is_dir() else _read_npz(path)
    unknown = sorted(set(arrays) - set(ARRAYS))
    if unknown:
        raise UserError(f"{path}: unexpected array {unknown[0]!r}; allowed: {', '.join(ARRAYS)}")
    if "images" not in arrays:
        raise UserError(f"{path}: no 'images' array")
    images = arrays["images"]
    if isinstance(images, MappedImages) and images.nbytes <= cfg.memory_limit_mb * 2**20:
        images = images.read()
    if isinstance(images, MappedImages):  # validated, hashed and gathered chunk by chunk
        images, likelihood = images.validated(_images, str(path))
    else:
        images, likelihood = _images(images, str(path))
    factors, names = _factors(arrays, len(images), str(path))
    missing = [name for name in cfg.discrete_factors if name not in names]
    if missing:
        raise UserError(f"task.discrete_factors names {missing[0]!r}, not a factor of {path}")
    split = _split(arrays, len(images), cfg, str(path))
    if "split" in arrays:
        how = "labelled split"
    else:
        how = f"seed={cfg.seed}, val={cfg.val_fraction}, test={cfg.test_fraction}"
    factor_splits = {} if factors is None else {s: factors[r] for s, r in split.items()}
    return TaskData(
        name="file",
        spec=TaskSpec(shape=tuple(images.shape[1:]), likelihood=likelihood),
        splits={
            s: images.split(rows)
            if isinstance(images, MappedImages)
            else torch.from_numpy(images[rows])
            for s, rows in split.items()
        },
        factors={s: torch.from_numpy(f) for s, f in factor_splits.items()},
        factor_names=names,
        source=f"file {path.name} sha256:{_digest(images, factors, names, split)}({how})",
        discrete_factors=tuple(cfg.discrete_factors),
    )
