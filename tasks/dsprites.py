"""`dsprites`: the dSprites grid (Matthey et al. 2017), from the official file or generated.

Source. `task.source=PATH` reads the official
`dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`; its runs record the file's
sha256. Without it the grid is generated to the same factors and order
(`tasks/_sprites.py`, geometry fitted to real frames) and its runs record
`dsprites-generated-v1`: a generated grid is never passed off as the official
data.

Cache. `hvbench data prepare --task dsprites [--source FILE]` (or the first
run that needs it) stores the whole grid once, bit-packed with np.packbits
(512 bytes an image, 377 MB), with its factor values, under
`$HVBENCH_CACHE/dsprites/<generated-v1 | official-SHA256[:16]>/`; runs unpack
it with in-place bit shifts. A generated `subset` run without a cache
renders only its own images, so smoke runs need no preparation.

Split. `numpy.random.default_rng(seed)` first draws `subset` distinct grid
indices uniformly (when set), then one permutation of the chosen images gives
the test, validation and training splits (`_common.seeded_split`), each in
that permutation's order, so the first rows of a split are a uniform sample.
Factors are the official values (shape 1–3, scale, orientation in radians,
posX, posY); `shape` is categorical.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hvbench.atomic import write_atomic
from hvbench.errors import UserError
from hvbench.options import AT_LEAST_1, SEED, option
from hvbench.registry import register_task
from hvbench.task import TaskData, TaskSpec
from hvbench.tasks._common import (
    SPLITS,
    finish_cache,
    read_meta,
    seeded_split,
    sha256_file,
    track,
)
from hvbench.tasks._sprites import (
    FACTOR_NAMES,
    GENERATOR_VERSION,
    IMAGE,
    N_IMAGES,
    factor_classes,
    factor_values,
    iter_grid,
    render_indices,
)

OFFICIAL_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
OFFICIAL_URL = "https://github.com/google-deepmind/dsprites-dataset"
PACK_CHUNK = 16_384  # images packed per step when reading the official file
# bit j of a byte, most significant first: np.packbits' order
_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)


@dataclass(frozen=True)
class DSpritesConfig:
    source: str | None = None  # path to the official npz; None → the generated grid
    subset: int | None = option(None, range=AT_LEAST_1)  # a seeded random subset of the grid (smoke runs); None → all
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    seed: int = option(0, range=SEED)  # subset and split seed


def unpack(packed: np.ndarray) -> np.ndarray:
    """(N, 512) np.packbits rows → (N, 1, 64, 64) uint8 {0, 1}.

    In place, into one output array, with torch's threads: on a VM the first
    touch of fresh memory dominates a full-grid reload (3 GB), and two cores
    fault pages in about twice as fast as one (a numpy lookup-table gather took
    6.8 s cold here, this 2.0 s).
    """
    rows = torch.from_numpy(np.ascontiguousarray(packed))
    bits = torch.empty(len(packed), packed.shape[1], 8, dtype=torch.uint8)
    torch.bitwise_right_shift(rows.unsqueeze(-1), _SHIFTS, out=bits)
    return bits.bitwise_and_(1).numpy().reshape(len(packed), 1, IMAGE, IMAGE)


def _official_path(cfg: DSpritesConfig) -> Path:
    path = Path(cfg.source).expanduser()
    if not path.is_file():
        raise UserError(
            f"dSprites file not found: {path}; download {OFFICIAL_FILE} from {OFFICIAL_URL} "
            "and pass its path as task.source (or leave task.source unset for the generated grid)"
        )
    return path


def _official_digest(cfg: DSpritesConfig) -> str:
    return sha256_file(_official_path(cfg))


def cache_folder(cfg: DSpritesConfig, cache_dir: Path, digest: str | None = None) -> Path:
    """Where this source's grid is cached; `digest` saves re-hashing the official file."""
    if cfg.source is None:
        return Path(cache_dir) / "dsprites" / GENERATOR_VERSION.removeprefix("dsprites-")
    digest = digest or _official_digest(cfg)
    return Path(cache_dir) / "dsprites" / f"official-{digest[:16]}"


def _read_official(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(imgs, factor values without the colour column), checked against the official layout.

    The official recipe passes allow_pickle=True, but only for the file's
    `metadata` entry, which hvbench never reads: refusing pickles means a
    wrong or hostile file can fail, never run code.
    """
    if not zipfile.is_zipfile(path):
        raise UserError(f"cannot read {path} as the dSprites npz: not a zip archive")
    try:
        with np.load(path, encoding="latin1", allow_pickle=False) as data:
            missing = [k for k in ("imgs", "latents_values", "latents_classes") if k not in data]
            if missing:
                raise UserError(
                    f"{path} is not the official dSprites file: no {missing[0]!r} array"
                )
            imgs, values, classes = (data[k] for k in ("imgs", "latents_values", "latents_classes"))
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise UserError(f"cannot read {path} as the dSprites npz: {err}") from None
    if imgs.shape != (N_IMAGES, IMAGE, IMAGE) or values.shape != (N_IMAGES, 6):
        raise UserError(
            f"{path}: imgs {imgs.shape} / latents_values {values.shape}, expected "
            f"({N_IMAGES}, {IMAGE}, {IMAGE}) / ({N_IMAGES}, 6): not the official dSprites file"
        )
    if not np.array_equal(classes[:, 1:], factor_classes(np.arange(N_IMAGES))):
        raise UserError(f"{path}: latents_classes are not in the official dSprites order")
    return imgs, values[:, 1:].astype(np.float32)


def _pack_official(imgs: np.ndarray) -> np.ndarray:
    packed = np.empty((N_IMAGES, IMAGE * IMAGE // 8), dtype=np.uint8)
    starts = range(0, N_IMAGES, PACK_CHUNK)
    for start in track(starts, len(starts), "dSprites: packing the official file"):
        chunk = imgs[start : start + PACK_CHUNK].reshape(-1, IMAGE * IMAGE)
        if chunk.max() > 1:
            raise UserError("the dSprites file holds pixel values above 1: not binary images")
        packed[start : start + len(chunk)] = np.packbits(chunk, axis=1)
    return packed


def _generate() -> np.ndarray:
    packed = np.empty((N_IMAGES, IMAGE * IMAGE // 8), dtype=np.uint8)
    blocks = track(iter_grid(), N_IMAGES, "dSprites: generating the grid", lambda b: len(b[1]))
    for start, block in blocks:
        packed[start : start + len(block)] = np.packbits(block.reshape(len(block), -1), axis=1)
    return packed


def prepare_dsprites(cfg: DSpritesConfig, cache_dir: Path) -> Path:
    """Build the bit-packed grid cache once (`hvbench data prepare --task dsprites`)."""
    digest = None if cfg.source is None else _official_digest(cfg)
    folder = cache_folder(cfg, cache_dir, digest)
    if read_meta(folder) is not None:
        return folder
    if digest is None:
        packed, source = _generate(), GENERATOR_VERSION
        values = factor_values(factor_classes(np.arange(N_IMAGES)))
    else:
        imgs, values = _read_official(_official_path(cfg))
        packed, source = _pack_official(imgs), f"dsprites-official-sha256:{digest}"
    write_atomic(folder / "images.npy", lambda f: np.save(f, packed))
    write_atomic(folder / "factors.npy", lambda f: np.save(f, values))
    finish_cache(folder, {"source": source, "images": N_IMAGES, "layout": "np.packbits rows"})
    return folder


def _check(cfg: DSpritesConfig) -> None:
    if cfg.subset is not None and not 3 <= cfg.subset <= N_IMAGES:
        raise UserError(f"task.subset must lie in [3, {N_IMAGES}], got {cfg.subset}")


def _readers(
    cfg: DSpritesConfig, cache_dir: Path
) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray], str]:
    """(images of grid indices, factors of grid indices, source), from the cache or rendered."""
    if cfg.source is None and cfg.subset is not None:
        folder = cache_folder(cfg, cache_dir)
        if read_meta(folder) is None:  # identical pixels to the cache (tests pin it)
            return render_indices, lambda i: factor_values(factor_classes(i)), GENERATOR_VERSION
    folder = prepare_dsprites(cfg, cache_dir)
    packed = np.load(folder / "images.npy", mmap_mode="r")
    values = np.load(folder / "factors.npy", mmap_mode="r")
    source = read_meta(folder)["source"]
    return lambda i: unpack(packed[i]), lambda i: np.array(values[i]), source


def sample_dsprites(folder: Path) -> dict[str, object]:
    """400 images of the generated grid (40 test): enough for every metric to be computed."""
    return {"subset": 400, "val_fraction": 0.1, "test_fraction": 0.1}


@register_task(
    "dsprites",
    config=DSpritesConfig,
    description="dSprites: 737,280 binary 64×64 sprites, 5 factors (official file or generated)",
    prepare=prepare_dsprites,
    sample=sample_dsprites,
)
def load_dsprites(cfg: DSpritesConfig, cache_dir: Path) -> TaskData:
    _check(cfg)
    rng = np.random.default_rng(cfg.seed)
    chosen = np.arange(N_IMAGES)
    if cfg.subset is not None:
        chosen = np.sort(rng.choice(N_IMAGES, cfg.subset, replace=False))
    parts = seeded_split(len(chosen), cfg.val_fraction, cfg.test_fraction, rng)
    images_of, factors_of, source = _readers(cfg, cache_dir)
    indices = {split: chosen[parts[split]] for split in SPLITS}
    subset = "" if cfg.subset is None else f", subset={cfg.subset}"
    return TaskData(
        name="dsprites",
        spec=TaskSpec(shape=(1, IMAGE, IMAGE), likelihood="bernoulli"),
        splits={
            s: torch.from_numpy(images_of(i).reshape(-1, 1, IMAGE, IMAGE))
            for s, i in indices.items()
        },
        factors={s: torch.from_numpy(factors_of(i)) for s, i in indices.items()},
        factor_names=FACTOR_NAMES,
        source=f"{source}(seed={cfg.seed}{subset})",
        discrete_factors=("shape",),
    )
