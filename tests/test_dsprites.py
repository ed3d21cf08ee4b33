"""dSprites: the official grid order, a generator faithful to the real sprites, the cache, the task."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hvbench.tasks
from hvbench.config import build
from hvbench.errors import UserError
from hvbench.registry import TASKS
from hvbench.tasks._common import sha256_file
from hvbench.tasks._sprites import (
    FACTOR_NAMES,
    GENERATOR_VERSION,
    N_IMAGES,
    factor_classes,
    factor_values,
    render_indices,
    sprite_positions,
)
from hvbench.tasks.dsprites import unpack
from tests.conftest import CONFIGS, built_once, cli_here

GIF = Path(hvbench.tasks.__file__).parent / "data" / "dsprites.gif"
ENTRY = TASKS.get("dsprites")
full_data = pytest.mark.skipif(
    os.environ.get("HVBENCH_BENCH") != "1", reason="needs 6 GB and ~20 s: set HVBENCH_BENCH=1"
)


def config(**options: object):
    return build(ENTRY.config, options, "task")


def load(cache: Path, **options: object):
    return ENTRY.build(config(**options), cache)


@pytest.fixture(scope="module")
def grid_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full generated grid, built once per session by the task's own `prepare` (377 MB,
    removed after)."""
    cache = built_once(tmp_path_factory, "dsprites-cache", lambda folder: ENTRY.prepare(config(), folder))
    return ENTRY.prepare(config(), cache)  # already built: only its folder is found


def test_index_order_and_values_are_the_official_ones() -> None:
    shape, scale, orientation, x, y = 2, 4, 17, 30, 5
    index = shape * 245760 + scale * 40960 + orientation * 1024 + x * 32 + y
    assert factor_classes(np.array([index])).tolist() == [[shape, scale, orientation, x, y]]
    values = factor_values(factor_classes(np.array([0, N_IMAGES - 1])))
    np.testing.assert_allclose(values[0], [1, 0.5, 0, 0, 0])
    np.testing.assert_allclose(values[1], [3, 1, 2 * math.pi, 1, 1], rtol=1e-6)
    assert N_IMAGES == 737_280 and FACTOR_NAMES == ("shape", "scale", "orientation", "posX", "posY")


def test_render_indices_gives_the_grid_pixels_exactly() -> None:
    """The subset path and the lattice path evaluate the same numbers: identical images."""
    rng = np.random.default_rng(0)
    for shape, scale, orientation in [(0, 0, 0), (1, 3, 7), (2, 5, 33), (2, 0, 39)]:
        block = sprite_positions(shape, scale, orientation).reshape(1024, 64, 64)
        picks = rng.choice(1024, 64, replace=False)
        first = ((shape * 6 + scale) * 40 + orientation) * 1024
        assert np.array_equal(render_indices(first + picks), block[picks])


def test_positions_move_the_sprite_right_and_down() -> None:
    """posX moves along columns, posY along rows; position 0..1 spans the middle half."""
    images = render_indices(np.array([0, 31 * 32, 31])).astype(bool)  # square, scale 0.5
    rows, cols = np.nonzero(images[0])
    assert (rows.mean(), cols.mean()) == (15.5, 15.5)
    assert np.nonzero(images[1])[1].mean() == 47.5 and np.nonzero(images[2])[0].mean() == 47.5


def reference_frames() -> np.ndarray:
    """The 320 real frames shipped with the package, thresholded at 127."""
    gif, frames = Image.open(GIF), []
    for i in range(gif.n_frames):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("L")) > 127)
    return np.stack(frames)


def best_match_iou(frames: np.ndarray, packed: np.ndarray) -> np.ndarray:
    """For each frame, the highest IoU over the generated grid.

    Only candidates that could reach IoU ≥ 0.8 are compared: IoU ≤ min/max of
    the two areas, so sprites outside [0.8, 1.25] × the frame's area are
    skipped, and positions are limited to those putting the sprite's centroid
    within 1 px of the frame's. The figures are therefore exact whenever they
    are ≥ 0.8, and a lower bound otherwise.
    """
    first = unpack(packed[::1024])[:, 0].astype(bool)  # every sprite at posX = posY = 0
    grid = np.arange(64)

    def stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        area = images.sum((1, 2))
        return area, (images.sum(1) * grid).sum(1) / area, (images.sum(2) * grid).sum(1) / area

    area0, cx0, cy0 = stats(first)
    area, cx, cy = stats(frames)
    words = np.packbits(frames.reshape(len(frames), -1), axis=1).view(np.uint64)
    grid_words = packed.view(np.uint64)
    shift = 32 * np.arange(32) / 31
    best = np.zeros(len(frames))
    for i in range(len(frames)):
        sprites = np.nonzero((area0 >= 0.8 * area[i]) & (area0 <= area[i] / 0.8))[0]
        near_x = np.abs(cx0[sprites, None] + shift - cx[i]) <= 1
        near_y = np.abs(cy0[sprites, None] + shift - cy[i]) <= 1
        s, x, y = np.nonzero(near_x[:, :, None] & near_y[:, None, :])
        candidates = grid_words[sprites[s] * 1024 + x * 32 + y]
        inter = np.bitwise_count(candidates & words[i]).sum(1)
        union = np.bitwise_count(candidates | words[i]).sum(1)
        best[i] = (inter / union).max(initial=0.0)
    return best


def test_generated_grid_matches_the_real_frames(grid_cache: Path) -> None:
    iou = best_match_iou(reference_frames(), np.load(grid_cache / "images.npy"))
    figures = f"median {np.median(iou):.3f}, worst {iou.min():.3f}, mean {iou.mean():.3f}"
    print(f"dSprites fidelity over 320 real frames: best-match IoU {figures}")
    assert len(iou) == 320 and np.median(iou) >= 0.9 and iou.min() >= 0.8, figures


def test_prepare_writes_a_generated_cache_and_loads_reuse_it(grid_cache: Path) -> None:
    meta = json.loads((grid_cache / "meta.json").read_text())
    assert meta["source"] == GENERATOR_VERSION == "dsprites-generated-v1"
    assert np.load(grid_cache / "images.npy", mmap_mode="r").shape == (N_IMAGES, 512)
    assert ENTRY.prepare(config(), grid_cache.parent.parent) == grid_cache  # already built
    cached = load(grid_cache.parent.parent, subset=500)
    rendered = load(Path("/nonexistent"), subset=500)
    for split in ("train", "val", "test"):
        assert torch.equal(cached.splits[split], rendered.splits[split])
        assert torch.equal(cached.factors[split], rendered.factors[split])


def test_task_contract(tmp_path: Path) -> None:
    task = load(tmp_path, subset=1000, val_fraction=0.1, test_fraction=0.2)
    sizes = {split: len(x) for split, x in task.splits.items()}
    assert sizes == {"train": 700, "val": 100, "test": 200}
    for split, images in task.splits.items():
        assert images.dtype == torch.uint8 and images.shape[1:] == (1, 64, 64)
        assert set(images.unique().tolist()) == {0, 1}
        assert task.factors[split].dtype == torch.float32 and task.factors[split].shape[1] == 5
    assert task.spec.likelihood == "bernoulli" and task.factor_names == FACTOR_NAMES
    assert task.discrete_factors == ("shape",) and task.eval_splits == ("test",)
    assert task.source == "dsprites-generated-v1(seed=0, subset=1000)"
    assert not (tmp_path / "dsprites").exists()  # a generated subset needs no cache
    rows = [tuple(f.tolist()) for f in torch.cat(list(task.factors.values()))]
    assert len(set(rows)) == 1000  # distinct grid points, no image in two splits


def test_split_is_seeded(tmp_path: Path) -> None:
    a, b = load(tmp_path, subset=300), load(tmp_path, subset=300)
    c = load(tmp_path, subset=300, seed=1)
    assert torch.equal(a.factors["test"], b.factors["test"])
    assert not torch.equal(a.factors["test"], c.factors["test"])


def test_the_first_rows_of_a_split_are_a_uniform_sample(tmp_path: Path) -> None:
    """Evaluation caps take a split's first rows; grid order would make them all squares."""
    task = load(tmp_path, subset=3000)
    for split, factors in task.factors.items():
        first = factors[:60]
        assert set(first[:, 0].tolist()) == {1.0, 2.0, 3.0}, split  # all three shapes
        assert first[:, 4].std() > 0.2, split  # posY spread over the image, not one row


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"subset": 2}, "task.subset must lie in [3, 737280], got 2"),
        ({"subset": 100, "val_fraction": 0.0}, "task.val_fraction must lie in (0, 1), got 0.0"),
        ({"subset": 10, "test_fraction": 0.01}, "10 examples are too few to split"),
        ({"source": "/nowhere/dsprites.npz"}, "dSprites file not found: /nowhere/dsprites.npz"),
    ],
)
def test_bad_options_are_one_line_user_errors(
    options: dict[str, object], message: str, tmp_path: Path
) -> None:
    with pytest.raises(UserError) as err:
        load(tmp_path, **options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_file_that_is_not_the_official_npz_is_refused(tmp_path: Path) -> None:
    wrong_keys = tmp_path / "wrong.npz"
    np.savez(wrong_keys, images=np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(UserError, match="is not the official dSprites file: no 'imgs' array"):
        ENTRY.prepare(config(source=str(wrong_keys)), tmp_path)
    not_npz = tmp_path / "broken.npz"
    not_npz.write_bytes(b"not a zip")
    with pytest.raises(
        UserError, match=r"cannot read .*broken\.npz as the dSprites npz: not a zip archive"
    ):
        ENTRY.prepare(config(source=str(not_npz)), tmp_path)
    small = tmp_path / "small.npz"
    np.savez(
        small,
        imgs=np.zeros((5, 64, 64), np.uint8),
        latents_values=np.zeros((5, 6)),
        latents_classes=np.zeros((5, 6), np.int64),
    )
    with pytest.raises(UserError, match="not the official dSprites file"):
        ENTRY.prepare(config(source=str(small)), tmp_path)


@full_data
def test_an_official_layout_file_is_read_packed_and_hashed(
    grid_cache: Path, tmp_path: Path
) -> None:
    """An npz in the official layout (made from the generated grid) round-trips through prepare."""
    packed = np.load(grid_cache / "images.npy")
    classes = factor_classes(np.arange(N_IMAGES))
    official = tmp_path / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
    np.savez_compressed(
        official,
        imgs=unpack(packed)[:, 0],
        latents_classes=np.concatenate([np.zeros((N_IMAGES, 1), np.int64), classes], 1),
        latents_values=np.concatenate([np.ones((N_IMAGES, 1)), factor_values(classes)], 1),
        metadata=np.array([{"never": "unpickled"}], dtype=object),
    )
    folder = ENTRY.prepare(config(source=str(official)), tmp_path / "cache")
    assert np.array_equal(np.load(folder / "images.npy"), packed)
    assert folder.name == f"official-{sha256_file(official)[:16]}"
    task = load(tmp_path / "cache", source=str(official), subset=500)
    assert task.source.startswith(f"dsprites-official-sha256:{sha256_file(official)}(")
    reference = load(Path("/nonexistent"), subset=500)
    assert all(torch.equal(task.splits[s], reference.splits[s]) for s in task.splits)


def test_cli_prepare_with_a_missing_source_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = cli_here(capsys, "data", "prepare", "--task", "dsprites", "--source", "gone.npz", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "hvbench: error: dSprites file not found: gone.npz; download "
        "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz from "
        "https://github.com/google-deepmind/dsprites-dataset and pass its path as task.source "
        "(or leave task.source unset for the generated grid)"
    ]


def test_smoke_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_file = CONFIGS / "smoke" / "dsprites-vae.yaml"
    result = cli_here(capsys,
        "run", "--config", str(config_file), "--wandb", "disabled",
        "--set", "output.figures=false",
        "--set", f"output.root={tmp_path / 'results'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (metrics,) = (tmp_path / "results" / "runs" / "dsprites" / "vae").glob("*/metrics.json")
    record = json.loads(metrics.read_text())
    assert record["run"]["data_source"] == "dsprites-generated-v1(seed=0, subset=2000)"
    assert record["run"]["likelihood"] == "bernoulli"
    assert math.isfinite(record["metrics"]["test/elbo_nats"])


