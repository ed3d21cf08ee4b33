"""`celeba`: CelebA faces at 64×64 (Liu et al. 2015), from the official folder or a 🤗 dataset.

Sources (`task.source`):
- the official layout: FOLDER/img_align_celeba/*.jpg (aligned, 178×218),
  FOLDER/list_eval_partition.txt and FOLDER/list_attr_celeba.txt;
- a 🤗 dataset: a `save_to_disk` folder, or a hub id read offline from the
  local Hugging Face cache, with train / validation (or valid, val) / test
  splits, one image column and, optionally, the 40 attribute columns.

Preprocessing, once (`hvbench data prepare --task celeba --source PATH`, or the
first run): crop the box (15, 40, 163, 188) (PIL's left, upper, right, lower;
148×148) and resize to 64×64 with PIL's antialiased bilinear filter, which is
what NVAE's `CropCelebA64` followed by torchvision's `Resize(64)` do to a PIL
image. 🤗 `datasets` does the work: `map(num_proc=task.workers)` decodes and
preprocesses the images in worker processes, and `save_to_disk` stores
channel-first uint8 pixels and the 40 attributes (0/1) per split under
`$HVBENCH_CACHE/celeba/<key>/`; a run without `task.source` uses the last one
prepared. A run memory-maps that Arrow data (`load_from_disk`) and copies its
pixels out once, in seconds. The data source a run records is the sha256 of
the stored bytes, so the same pixels carry the same name however they
arrived. Splits are the official partition (162,770 / 19,867 / 19,962);
the final evaluation reports validation (what NVAE and Efficient-VDVAE report)
and test.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from hvbench.atomic import write_json
from hvbench.errors import UserError
from hvbench.options import AT_LEAST_1, option
from hvbench.registry import register_task
from hvbench.task import TaskData, TaskSpec
from hvbench.tasks._common import SPLITS, finish_cache, open_hf_dataset, read_meta

if TYPE_CHECKING:  # imported on use: it is slow, and most runs never need it
    import datasets

PREPROCESSING = "celeba64-v1"  # crop box and resize filter: names the pixels a run reads
CACHE_FORMAT = "datasets-1"  # how a cache stores them: part of its key, so old caches are rebuilt
CROP_BOX = (15, 40, 163, 188)
ALIGNED_SIZE = (178, 218)  # width, height of img_align_celeba
SIZE = 64
PIXELS = 3 * SIZE * SIZE
CHUNK = 256  # images per `map` batch, and per block of the content hash
DATASET = "celeba64"  # the save_to_disk folder inside a cache
HOMEPAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
PARTITION_FILE, ATTRIBUTE_FILE, IMAGE_FOLDER = (
    "list_eval_partition.txt",
    "list_attr_celeba.txt",
    "img_align_celeba",
)
HF_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "valid", "val"), "test": ("test",)}
ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip
HOW_TO_GET = (
    f"download img_align_celeba.zip, {PARTITION_FILE} and {ATTRIBUTE_FILE} from {HOMEPAGE}, "
    f"unzip the images so that FOLDER/{IMAGE_FOLDER}/000001.jpg exists, then run "
    "`hvbench data prepare --task celeba --source FOLDER` (or pass a 🤗 dataset folder or id)"
)


@dataclass(frozen=True)
class CelebAConfig:
    # official folder, 🤗 save_to_disk folder or hub id; None → the last prepared cache
    source: str | None = None
    max_per_split: int | None = option(None, range=AT_LEAST_1)  # the first N images of each split (smoke runs)
    workers: int = 0  # processes decoding JPEGs while preparing; 0 → one per CPU core


class Rows(NamedTuple):
    """One split before preprocessing: a 🤗 dataset whose `image` column holds file paths or
    undecoded 🤗 images ({"bytes", "path"}), and its attribute columns in ATTRIBUTES order."""

    dataset: datasets.Dataset
    image: str
    attributes: list[str] | None


def to_64(data: str | bytes, name: str) -> np.ndarray:
    """One aligned CelebA image (a path or encoded bytes) → (3, 64, 64) uint8."""
    try:
        with Image.open(data if isinstance(data, str) else io.BytesIO(data)) as image:
            image.load()
            rgb = image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:  # how PIL reports a broken file
        raise UserError(f"corrupt image {name}: {err}") from None
    if rgb.size != ALIGNED_SIZE:
        raise UserError(
            f"{name} is {rgb.size[0]}×{rgb.size[1]}, not an aligned "
            f"{ALIGNED_SIZE[0]}×{ALIGNED_SIZE[1]} CelebA image ({IMAGE_FOLDER})"
        )
    small = rgb.crop(CROP_BOX).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(small).transpose(2, 0, 1)


def _preprocess(
    batch: dict[str, list], indices: list[int], rows: Rows, split: str
) -> dict[str, np.ndarray]:
    """A `map` job: a batch of rows → (n, 3, 64, 64) uint8 pixels and (n, 40) int8 attributes."""
    pixels = []
    for value, index in zip(batch[rows.image], indices, strict=True):
        if isinstance(value, str):  # a file of the official folder
            pixels.append(to_64(value, value))
        else:
            name = f"{split} row {index}" + (f" ({value['path']})" if value["path"] else "")
            pixels.append(to_64(value["bytes"] or value["path"], name))
    out = {"image": np.stack(pixels)}
    if rows.attributes is not None:
        out["attributes"] = (np.array([batch[a] for a in rows.attributes]).T > 0).astype(np.int8)
    return out


# ---- the official folder ---------------------------------------------------------------


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise UserError(f"CelebA {what} is missing: expected {path}; {HOW_TO_GET}")
    return path


def _partition(folder: Path) -> list[tuple[str, int]]:
    path = _require(folder / PARTITION_FILE, "partition file")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise UserError(f"{path}:{number}: expected 'NAME.jpg 0|1|2', got {line!r}")
        rows.append((fields[0], int(fields[1])))
    return rows


def _attributes(folder: Path) -> dict[str, np.ndarray]:
    path = _require(folder / ATTRIBUTE_FILE, "attribute file")
    lines = path.read_text().splitlines()
    if len(lines) < 2 or tuple(lines[1].split()) != ATTRIBUTES:
        raise UserError(f"{path}: line 2 must name the 40 CelebA attributes in the official order")
    rows = {}
    for number, line in enumerate(lines[2:], 3):
        fields = line.split()
        if fields and (len(fields) != 41 or any(v not in ("1", "-1") for v in fields[1:])):
            raise UserError(f"{path}:{number}: expected a file name and 40 values of ±1")
        if fields:
            rows[fields[0]] = (np.array(fields[1:], dtype=np.int8) > 0).astype(np.int8)
    return rows


def _folder_rows(folder: Path) -> dict[str, Rows]:
    """Check the official layout, then each split's image paths and attributes."""
    import datasets

    images = _require(folder / IMAGE_FOLDER, "image folder")
    partition, attributes = _partition(folder), _attributes(folder)
    present = set(os.listdir(images))
    for name, _ in partition:
        if name not in present:
            raise UserError(
                f"CelebA image {images / name} is missing (listed in {PARTITION_FILE}): "
                f"re-extract img_align_celeba.zip into {folder}"
            )
        if name not in attributes:
            raise UserError(f"{folder / ATTRIBUTE_FILE} has no row for {name}")
    rows = {}
    for split, split_name in enumerate(SPLITS):
        names = [name for name, s in partition if s == split]
        if not names:
            raise UserError(f"{folder / PARTITION_FILE} puts no image in the {split_name} split")
        table = np.stack([attributes[n] for n in names])
        columns = {a: table[:, k] for k, a in enumerate(ATTRIBUTES)}
        paths = [str(images / n) for n in names]
        dataset = datasets.Dataset.from_dict({"image": paths, **columns})
        rows[split_name] = Rows(dataset, "image", list(ATTRIBUTES))
    return rows


# ---- a 🤗 dataset ---------------------------------------------------------------------------


def _hf_split(dataset: Any, split: str, source: str) -> Any:
    for name in HF_SPLIT_NAMES[split]:
        if name in dataset:
            return dataset[name]
    raise UserError(
        f"🤗 dataset {source} has no {'/'.join(HF_SPLIT_NAMES[split])} split "
        f"(it has: {', '.join(dataset)}); CelebA needs the official train/validation/test"
    )


def _hf_columns(split: Any, source: str) -> tuple[str, list[str] | None]:
    """(image column, attribute columns in ATTRIBUTES order, or None when it has none)."""
    import datasets

    images = [n for n, f in split.features.items() if isinstance(f, datasets.Image)]
    if len(images) != 1:
        kinds = ", ".join(f"{n} ({getattr(f, 'dtype', type(f).__name__)})" for n, f in split.features.items())
        raise UserError(
            f"🤗 dataset {source} needs exactly one column of datasets.Image, found {images}; "
            f"its columns: {kinds}"
        )
    by_lower = {name.lower(): name for name in split.column_names}
    found = [by_lower.get(a.lower()) for a in ATTRIBUTES]
    if not any(found):
        return images[0], None
    if not all(found):
        missing = next(a for a, f in zip(ATTRIBUTES, found, strict=True) if f is None)
        raise UserError(
            f"🤗 dataset {source} has some CelebA attribute columns but not {missing!r}"
        )
    return images[0], found


def _hf_rows(source: str) -> dict[str, Rows]:
    """Each split of a 🤗 dataset, its image column left undecoded."""
    import datasets

    dataset = open_hf_dataset(source)
    if not isinstance(dataset, datasets.DatasetDict):
        raise UserError(
            f"🤗 dataset {source} is a single split; CelebA needs train/validation/test"
        )
    splits = [_hf_split(dataset, split, source) for split in SPLITS]
    for name, split in zip(SPLITS, splits, strict=True):
        if len(split) == 0:
            raise UserError(f"🤗 dataset {source}: the {name} split is empty")
    columns = [_hf_columns(split, source) for split in splits]
    if len({attrs is None for _, attrs in columns}) > 1:
        raise UserError(f"🤗 dataset {source}: only some splits have the attribute columns")
    return {
        name: Rows(split.cast_column(image, datasets.Image(decode=False)), image, attrs)
        for name, split, (image, attrs) in zip(SPLITS, splits, columns, strict=True)
    }


# ---- the cache --------------------------------------------------------------------------


def _processes(workers: int, rows: int) -> int | None:
    """`map`'s num_proc: one per CPU core for 0, never more than there are rows."""
    processes = min(workers or os.cpu_count() or 1, rows)
    return processes if processes > 1 else None


def _build(folder: Path, rows: dict[str, Rows], workers: int) -> None:
    """Preprocess every split with `map` in worker processes and `save_to_disk` the result."""
    import datasets

    features = {"image": datasets.Array3D((3, SIZE, SIZE), "uint8")}
    if rows["train"].attributes is not None:
        features["attributes"] = datasets.Sequence(datasets.Value("int8"), length=len(ATTRIBUTES))
    shutil.rmtree(folder, ignore_errors=True)  # what an interrupted prepare left (no meta.json)
    scratch = folder / "map"
    scratch.mkdir(parents=True)
    try:
        processed = {
            split: r.dataset.map(
                _preprocess,
                batched=True,
                batch_size=CHUNK,
                with_indices=True,
                fn_kwargs={"rows": r, "split": split},
                remove_columns=r.dataset.column_names,
                features=datasets.Features(features),
                num_proc=_processes(workers, len(r.dataset)),
                cache_file_name=str(scratch / f"{split}.arrow"),
                load_from_cache_file=False,
                desc=f"CelebA: preprocessing {split}",
            )
            for split, r in rows.items()
        }
        datasets.DatasetDict(processed).save_to_disk(str(folder / DATASET))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # a broken image: nothing half-built stays
        raise
    del processed  # let go of the map outputs before removing them
    shutil.rmtree(scratch)


def _arrays(split: datasets.Dataset, limit: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A split's first `limit` images (None: all) as (n, 3, 64, 64) uint8 and its attributes as
    (n, 40) int8 or None, copied once out of the memory-mapped Arrow table."""
    table = split.with_format("arrow")[: len(split) if limit is None else limit]
    pixels = np.concatenate([chunk.to_numpy() for chunk in table.column("image").chunks])
    if "attributes" not in table.column_names:
        return pixels, None
    flat = [chunk.flatten().to_numpy() for chunk in table.column("attributes").chunks]
    return pixels, np.concatenate(flat).reshape(len(pixels), len(ATTRIBUTES))


def _load(folder: Path, limit: int | None) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    import datasets

    saved = datasets.load_from_disk(str(folder / DATASET))
    return {split: _arrays(saved[split], limit) for split in SPLITS}


def _digest(data: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> str:
    """sha256 of the stored bytes, in the order celeba64-v1 has always hashed them: per block
    of CHUNK images of a split, the pixels, the split's code once per image, the attributes."""
    digest = hashlib.sha256()
    for code, split in enumerate(SPLITS):
        pixels, attributes = data[split]
        for start in range(0, len(pixels), CHUNK):
            block = pixels[start : start + CHUNK]
            digest.update(block.tobytes() + bytes([code]) * len(block))
            if attributes is not None:
                digest.update(attributes[start : start + CHUNK].tobytes())
    return digest.hexdigest()


def _current(cache_dir: Path) -> Path:
    return Path(cache_dir) / "celeba" / "current.json"


def prepare_celeba(cfg: CelebAConfig, cache_dir: Path) -> Path:
    """Preprocess CelebA once into `$HVBENCH_CACHE/celeba/<key>/` (`hvbench data prepare`)."""
    if cfg.workers < 0:
        raise UserError(f"task.workers must be 0 (one per CPU core) or more, got {cfg.workers}")
    if cfg.source is None:
        pointer = _current(cache_dir)
        if not pointer.is_file():
            raise UserError(f"CelebA is not prepared yet: {HOW_TO_GET}")
        return pointer.parent / json.loads(pointer.read_text())["cache"]
    local = Path(cfg.source).expanduser()
    hub_id = cfg.source.count("/") == 1 and not cfg.source.startswith(("/", ".", "~"))
    if not local.exists() and not hub_id:
        raise UserError(f"CelebA folder not found: {local}; {HOW_TO_GET}")
    origin = str(local.resolve()) if local.exists() else cfg.source
    key = hashlib.sha256(f"{PREPROCESSING}|{CACHE_FORMAT}|{origin}".encode()).hexdigest()[:16]
    folder = Path(cache_dir) / "celeba" / key
    if read_meta(folder) is None:
        saved = any((local / f).is_file() for f in ("dataset_dict.json", "state.json"))
        rows = _folder_rows(local) if local.is_dir() and not saved else _hf_rows(cfg.source)
        _build(folder, rows, cfg.workers)
        data = _load(folder, None)
        finish_cache(
            folder,
            {
                "source": f"{PREPROCESSING} sha256:{_digest(data)}",
                "counts": {split: len(pixels) for split, (pixels, _) in data.items()},
                "origin": origin,
                "attributes": list(ATTRIBUTES) if rows["train"].attributes else [],
            },
        )
    write_json(_current(cache_dir), {"cache": key, "origin": origin})
    return folder


SAMPLE_SPLITS = [0] * 24 + [1] * 6 + [2] * 6  # the sample's 36 images: 24 train, 6 valid, 6 test


def write_sample(root: Path) -> np.ndarray:
    """A tiny CelebA in the official layout under `root`: 36 aligned 178×218 JPEGs of seeded
    patterns, the partition file and the attribute table; returns the ±1 attributes. The real
    preprocessing (crop, resize, split, cache) runs on it exactly as on the real folder."""
    (root / "img_align_celeba").mkdir(parents=True)
    y, x = np.mgrid[:218, :178]
    names = [f"{i:06d}.jpg" for i in range(1, len(SAMPLE_SPLITS) + 1)]
    for i, name in enumerate(names):
        image = np.stack([(x * (i + 1)) % 256, (y * 3 + 7 * i) % 256, (x + y) % 256], -1)
        Image.fromarray(image.astype(np.uint8)).save(root / "img_align_celeba" / name)
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{n} {s}\n" for n, s in zip(names, SAMPLE_SPLITS, strict=True))
    )
    table = np.random.default_rng(0).choice([-1, 1], size=(len(names), len(ATTRIBUTES)))
    rows = [f"{n} " + " ".join(f"{v:2d}" for v in row) for n, row in zip(names, table, strict=True)]
    lines = [str(len(names)), " ".join(ATTRIBUTES), *rows]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    return table


def sample_celeba(folder: Path) -> dict[str, object]:
    write_sample(folder / "celeba")
    return {"source": str(folder / "celeba"), "workers": 1}


@register_task(
    "celeba",
    config=CelebAConfig,
    description="CelebA 64×64 RGB faces, official partition, 40 binary attributes",
    prepare=prepare_celeba,
    sample=sample_celeba,
)
def load_celeba(cfg: CelebAConfig, cache_dir: Path) -> TaskData:
    if cfg.max_per_split is not None and cfg.max_per_split < 1:
        raise UserError(f"task.max_per_split must be at least 1, got {cfg.max_per_split}")
    folder = prepare_celeba(cfg, cache_dir)
    meta = read_meta(folder)
    if meta is None or not (folder / DATASET).is_dir():
        raise UserError(
            f"CelebA cache {folder} is incomplete or from an older hvbench: prepare it again "
            "(hvbench data prepare --task celeba --source FOLDER)"
        )
    data = _load(folder, cfg.max_per_split)
    names = tuple(meta["attributes"])
    limit = "" if cfg.max_per_split is None else f"(max_per_split={cfg.max_per_split})"
    return TaskData(
        name="celeba",
        spec=TaskSpec(shape=(3, SIZE, SIZE), likelihood="dlogistic"),
        splits={s: torch.from_numpy(pixels) for s, (pixels, _) in data.items()},
        factors={s: torch.from_numpy(a.astype(np.float32)) for s, (_, a) in data.items() if names},
        factor_names=names,
        source=meta["source"] + limit,
        eval_splits=("val", "test"),
        reference_split="val",  # NVAE, Efficient-VDVAE and BIVA report CelebA-64 on valid
        discrete_factors=names,
    )
