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
image. Channel-first uint8 pixels, the split and the 40 attributes (0/1) go to
one Arrow IPC file per source under `$HVBENCH_CACHE/celeba/`; a run without
`task.source` uses the last one prepared. The data source a run records is
the sha256 of the stored bytes, so the same pixels carry the same name however
they arrived. Splits are the official partition (162,770 / 19,867 / 19,962);
the final evaluation reports validation (what NVAE and Efficient-VDVAE report)
and test.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from hvbench.atomic import write_atomic, write_json
from hvbench.errors import UserError
from hvbench.registry import register_task
from hvbench.task import TaskData, TaskSpec
from hvbench.tasks._common import SPLITS, finish_cache, open_hf_dataset, read_meta, track

PREPROCESSING = "celeba64-v1"  # crop box, resize filter, stored layout
CROP_BOX = (15, 40, 163, 188)
ALIGNED_SIZE = (178, 218)  # width, height of img_align_celeba
SIZE = 64
PIXELS = 3 * SIZE * SIZE
CHUNK = 256  # images per worker job and per Arrow record batch
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
    max_per_split: int | None = None  # the first N images of each split (smoke runs)
    workers: int = 0  # processes decoding JPEGs while preparing; 0 → one per CPU core


class Chunk(NamedTuple):
    """Consecutive images of one split, preprocessed."""

    split: int  # index into SPLITS
    names: list[str]
    pixels: np.ndarray  # (n, 3, 64, 64) uint8
    attributes: np.ndarray | None  # (n, 40) int8 in {0, 1}


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


def _load_files(paths: list[str]) -> np.ndarray:
    """A worker's job: decode and preprocess image files (module level, so it pickles)."""
    return np.stack([to_64(path, path) for path in paths])


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


def _decode(paths: list[list[str]], workers: int) -> Iterator[np.ndarray]:
    """Preprocessed chunks in order, decoded by `workers` processes (1: in this one)."""
    if workers == 1:
        yield from map(_load_files, paths)
        return
    pool = ProcessPoolExecutor(workers or os.cpu_count())
    try:
        yield from pool.map(_load_files, paths)
    finally:  # on an error, drop the queued jobs instead of decoding them all first
        pool.shutdown(cancel_futures=True)


def _folder_chunks(folder: Path, workers: int) -> tuple[Iterator[Chunk], int]:
    """Check the official layout, then (chunks in split order, image count)."""
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
    jobs: list[tuple[int, list[str]]] = []
    for split, split_name in enumerate(SPLITS):
        names = [name for name, s in partition if s == split]
        if not names:
            raise UserError(f"{folder / PARTITION_FILE} puts no image in the {split_name} split")
        jobs += [(split, names[i : i + CHUNK]) for i in range(0, len(names), CHUNK)]

    def chunks() -> Iterator[Chunk]:
        decoded = _decode([[str(images / n) for n in names] for _, names in jobs], workers)
        for (split, names), pixels in zip(jobs, decoded, strict=True):
            yield Chunk(split, names, pixels, np.stack([attributes[n] for n in names]))

    return chunks(), len(partition)


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
        raise UserError(f"🤗 dataset {source} needs exactly one image column, found {images}")
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


def _hf_chunk(
    split: int, start: int, images: list[dict], batch: dict, attrs: list[str] | None
) -> Chunk:
    """Preprocess one batch of undecoded 🤗 rows ({"bytes", "path"} image dicts)."""
    names = [
        f"{SPLITS[split]} row {start + i}" + (f" ({image['path']})" if image["path"] else "")
        for i, image in enumerate(images)
    ]
    pixels = np.stack(
        [to_64(image["bytes"] or image["path"], n) for image, n in zip(images, names, strict=True)]
    )
    values = None if attrs is None else (np.array([batch[a] for a in attrs]).T > 0)
    return Chunk(split, names, pixels, None if values is None else values.astype(np.int8))


def _hf_chunks(source: str) -> tuple[Iterator[Chunk], int, bool]:
    """(chunks in split order, image count, has attributes) for a 🤗 dataset."""
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

    def chunks() -> Iterator[Chunk]:
        for code, (split, (image, attrs)) in enumerate(zip(splits, columns, strict=True)):
            raw = split.cast_column(image, datasets.Image(decode=False))
            for start, batch in zip(range(0, len(raw), CHUNK), raw.iter(CHUNK), strict=True):
                yield _hf_chunk(code, start, batch[image], batch, attrs)

    return chunks(), sum(len(s) for s in splits), columns[0][1] is not None


# ---- the cache --------------------------------------------------------------------------


def _schema(with_attributes: bool) -> pa.Schema:
    fields = [
        pa.field("image", pa.binary(PIXELS)),
        pa.field("split", pa.int8()),
        pa.field("name", pa.string()),
    ]
    if with_attributes:
        fields.append(pa.field("attributes", pa.list_(pa.int8(), len(ATTRIBUTES))))
    return pa.schema(fields)


def _write_arrow(path: Path, chunks: Iterator[Chunk], total: int, with_attributes: bool) -> dict:
    """Stream chunks into one Arrow IPC file; return the counts and the content hash."""
    digest, counts = hashlib.sha256(), dict.fromkeys(SPLITS, 0)
    schema = _schema(with_attributes)

    def write(f: Any) -> None:
        with pa.ipc.new_file(f, schema) as writer:
            for chunk in track(chunks, total, "CelebA: preprocessing", lambda c: len(c.names)):
                n = len(chunk.names)
                pixels = pa.py_buffer(np.ascontiguousarray(chunk.pixels))
                columns = [
                    pa.Array.from_buffers(pa.binary(PIXELS), n, [None, pixels]),
                    pa.array(np.full(n, chunk.split, np.int8)),
                    pa.array(chunk.names),
                ]
                digest.update(chunk.pixels.tobytes() + bytes([chunk.split]) * n)
                if with_attributes:
                    flat = pa.array(chunk.attributes.reshape(-1))
                    columns.append(pa.FixedSizeListArray.from_arrays(flat, len(ATTRIBUTES)))
                    digest.update(chunk.attributes.tobytes())
                writer.write_batch(pa.record_batch(columns, schema=schema))
                counts[SPLITS[chunk.split]] += n

    write_atomic(path, write)
    return {"source": f"{PREPROCESSING} sha256:{digest.hexdigest()}", "counts": counts}


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
    key = hashlib.sha256(f"{PREPROCESSING}|{origin}".encode()).hexdigest()[:16]
    folder = Path(cache_dir) / "celeba" / key
    if read_meta(folder) is None:
        saved = any((local / f).is_file() for f in ("dataset_dict.json", "state.json"))
        if local.is_dir() and not saved:
            chunks, total = _folder_chunks(local, cfg.workers)
            with_attributes = True
        else:
            chunks, total, with_attributes = _hf_chunks(cfg.source)
        written = _write_arrow(folder / "celeba64.arrow", chunks, total, with_attributes)
        attributes = list(ATTRIBUTES) if with_attributes else []
        finish_cache(folder, {**written, "origin": origin, "attributes": attributes})
    write_json(_current(cache_dir), {"cache": key, "origin": origin})
    return folder


def _read_arrow(path: Path, counts: dict[str, int], limit: int | None) -> dict[str, tuple]:
    """split → (pixels (n, 3, 64, 64) uint8, attributes (n, 40) int8 or None), copied once."""
    sizes = {s: counts[s] if limit is None else min(counts[s], limit) for s in SPLITS}
    reader = pa.ipc.open_file(pa.memory_map(str(path)))
    with_attributes = "attributes" in reader.schema.names
    out = {
        s: (
            np.empty((n, 3, SIZE, SIZE), np.uint8),
            np.empty((n, len(ATTRIBUTES)), np.int8) if with_attributes else None,
        )
        for s, n in sizes.items()
    }
    filled = dict.fromkeys(SPLITS, 0)
    for i in range(reader.num_record_batches):
        batch = reader.get_batch(i)
        split = SPLITS[batch.column("split")[0].as_py()]
        take = min(batch.num_rows, sizes[split] - filled[split])
        if take <= 0:
            continue
        image = batch.column("image")
        pixels = np.frombuffer(image.buffers()[1], np.uint8, PIXELS * take, PIXELS * image.offset)
        start = filled[split]
        out[split][0][start : start + take] = pixels.reshape(take, 3, SIZE, SIZE)
        if with_attributes:
            values = batch.column("attributes").flatten().to_numpy()[: take * len(ATTRIBUTES)]
            out[split][1][start : start + take] = values.reshape(take, -1)
        filled[split] += take
    return out


@register_task(
    "celeba",
    config=CelebAConfig,
    description="CelebA 64×64 RGB faces, official partition, 40 binary attributes",
    prepare=prepare_celeba,
)
def load_celeba(cfg: CelebAConfig, cache_dir: Path) -> TaskData:
    if cfg.max_per_split is not None and cfg.max_per_split < 1:
        raise UserError(f"task.max_per_split must be at least 1, got {cfg.max_per_split}")
    folder = prepare_celeba(cfg, cache_dir)
    meta = read_meta(folder)
    if meta is None:
        raise UserError(f"CelebA cache {folder} is incomplete: prepare it again")
    data = _read_arrow(folder / "celeba64.arrow", meta["counts"], cfg.max_per_split)
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
        discrete_factors=names,
    )
