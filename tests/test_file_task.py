"""Task `file`: the user's own arrays, from an npz or a 🤗 folder, validated line by line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hvbench.config import build
from hvbench.errors import UserError
from hvbench.registry import MODELS, TASKS
from tests.conftest import CONFIGS, cli_here
from tests.task_runs import train_briefly

ENTRY = TASKS.get("file")
RNG = np.random.default_rng(0)


def load(path: Path, **options: object):
    return ENTRY.build(build(ENTRY.config, {"path": str(path), **options}, "task"), Path("/x"))


def npz(tmp_path: Path, name: str = "data.npz", **arrays: object) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("images", "likelihood", "dtype"),
    [
        (RNG.integers(0, 256, (40, 3, 8, 8), dtype=np.uint8), "dlogistic", torch.uint8),
        (RNG.integers(0, 256, (40, 8, 8)), "dlogistic", torch.uint8),  # int64 within 0..255
        (RNG.random((40, 8, 8)) > 0.5, "bernoulli", torch.uint8),
        ((RNG.random((40, 1, 8, 8)) > 0.5).astype(np.float32), "bernoulli", torch.uint8),
        (RNG.normal(size=(40, 2, 8, 8)), "gaussian", torch.float32),
    ],
)
def test_value_types_choose_the_likelihood(
    images: np.ndarray, likelihood: str, dtype: torch.dtype, tmp_path: Path
) -> None:
    task = load(npz(tmp_path, images=images))
    channels = 1 if images.ndim == 3 else images.shape[1]
    assert task.spec.shape == (channels, 8, 8) and task.spec.likelihood == likelihood
    assert {s: len(x) for s, x in task.splits.items()} == {"train": 32, "val": 4, "test": 4}
    assert all(x.dtype == dtype for x in task.splits.values())
    every = torch.cat(list(task.splits.values()))
    assert sorted(every.flatten().tolist()) == sorted(np.asarray(images).astype(np.float32).flat)


def test_factors_names_and_split_labels(tmp_path: Path) -> None:
    factors = RNG.normal(size=(12, 2))
    split = np.array(["train"] * 8 + ["validation"] * 2 + ["test"] * 2)
    path = npz(
        tmp_path,
        images=RNG.integers(0, 2, (12, 6, 6)),
        factors=factors,
        factor_names=np.array(["size", "kind"]),
        split=split,
    )
    task = load(path, discrete_factors=["kind"])
    assert task.factor_names == ("size", "kind") and task.discrete_factors == ("kind",)
    assert torch.allclose(task.factors["val"], torch.tensor(factors[8:10], dtype=torch.float32))
    assert len(task.splits["test"]) == 2 and task.source.endswith("(labelled split)")
    numbered = load(
        npz(tmp_path, "n.npz", images=RNG.integers(0, 2, (6, 4, 4)), split=[0, 0, 0, 0, 1, 2])
    )
    assert [len(numbered.splits[s]) for s in ("train", "val", "test")] == [4, 1, 1]


def test_seeded_split_without_labels(tmp_path: Path) -> None:
    path = npz(tmp_path, images=RNG.normal(size=(50, 4, 4)), factors=np.arange(50.0)[:, None])
    a, b, c = load(path), load(path), load(path, seed=1)
    assert torch.equal(a.factors["test"], b.factors["test"])
    assert not torch.equal(a.factors["test"], c.factors["test"])
    assert a.factor_names == ("factor0",) and "(seed=0, val=0.1, test=0.1)" in a.source


def test_the_same_data_get_the_same_source_in_either_container(tmp_path: Path) -> None:
    images = RNG.integers(0, 256, (10, 5, 5), dtype=np.uint8)
    split = np.array(["train"] * 6 + ["val"] * 2 + ["test"] * 2)
    from_npz = load(npz(tmp_path, images=images, split=split))
    datasets.Dataset.from_dict(
        {"images": images.tolist(), "split": split.tolist()},
        features=datasets.Features(
            {"images": datasets.Array2D((5, 5), "uint8"), "split": datasets.Value("string")}
        ),
    ).save_to_disk(str(tmp_path / "hf"))
    from_hf = load(tmp_path / "hf")
    assert from_npz.source.split(" ", 2)[2] == from_hf.source.split(" ", 2)[2]
    assert torch.equal(from_npz.splits["train"], from_hf.splits["train"])


def test_a_hf_folder_with_an_image_column_and_dataset_splits(tmp_path: Path) -> None:
    def split(n: int, offset: int) -> datasets.Dataset:
        images = [Image.fromarray(np.full((6, 6, 3), offset + i, np.uint8)) for i in range(n)]
        return datasets.Dataset.from_dict(
            {"image": images, "brightness": [offset + i for i in range(n)]},
            features=datasets.Features(
                {"image": datasets.Image(), "brightness": datasets.Value("int32")}
            ),
        )

    datasets.DatasetDict(
        {"train": split(8, 0), "validation": split(2, 100), "test": split(2, 200)}
    ).save_to_disk(str(tmp_path / "hf"))
    task = load(tmp_path / "hf")
    assert task.spec.shape == (3, 6, 6) and task.spec.likelihood == "dlogistic"
    assert task.factor_names == ("brightness",)
    assert task.factors["test"].flatten().tolist() == [200.0, 201.0]
    assert int(task.splits["val"][1, 0, 0, 0]) == 101


def bad_cases(tmp_path: Path) -> list[tuple[Path, dict, str]]:
    """(data, options, the one line expected) for every refusal."""
    ok = RNG.integers(0, 2, (10, 4, 4))
    object_names = tmp_path / "object.npz"
    np.savez(
        object_names,
        images=ok,
        factors=np.zeros((10, 1)),
        factor_names=np.array(["a"], dtype=object),
    )
    not_npz = tmp_path / "plain.npz"
    not_npz.write_text("hello")
    return [
        (tmp_path / "none.npz", {}, f"data file not found: {tmp_path / 'none.npz'}"),
        (not_npz, {}, "plain.npz is not an .npz file (write one with numpy.savez)"),
        (object_names, {}, "Object arrays cannot be loaded when allow_pickle=False"),
        (npz(tmp_path, "a.npz", images=ok, labels=ok), {}, "unexpected array 'labels'; allowed: images, factors, factor_names, split"),
        (npz(tmp_path, "b.npz", pictures=ok), {}, "unexpected array 'pictures'"),
        (npz(tmp_path, "c.npz", images=np.zeros((10, 8, 8, 3))), {}, "images have shape (10, 8, 8, 3), channels last?"),
        (npz(tmp_path, "d.npz", images=np.zeros((10, 8))), {}, "images have shape (10, 8); expected N×H×W or N×C×H×W"),
        (npz(tmp_path, "e.npz", images=np.full((10, 4, 4), "x")), {}, "images must be a bool or number array, got <U1"),
        (npz(tmp_path, "f.npz", images=np.where(ok > 0, np.nan, 0.5)), {}, "image 0 holds nan, not a finite value"),
        (npz(tmp_path, "g.npz", images=ok * 300), {}, "integer images must lie in 0..255, found 300"),
        (npz(tmp_path, "h.npz", images=ok - 1), {}, "integer images must lie in 0..255, found -1"),
        (npz(tmp_path, "i.npz", images=ok, factors=np.zeros(10)), {}, "factors have shape (10,) and dtype float64; expected numbers of shape (10, K)"),
        (npz(tmp_path, "j.npz", images=ok, factors=np.zeros((10, 2)), factor_names=np.array(["a"])), {}, "factor_names must be 2 strings"),
        (npz(tmp_path, "k.npz", images=ok, factors=np.zeros((10, 2)), factor_names=np.array(["a", "a"])), {}, "factor_names repeat a name"),
        (npz(tmp_path, "l.npz", images=ok, factor_names=np.array(["a"])), {}, "factor_names given without factors"),
        (npz(tmp_path, "m.npz", images=ok, split=np.array(["train"] * 9 + ["dev"])), {}, "split label 'dev' at row 9 is none of train/val/test (or 0/1/2)"),
        (npz(tmp_path, "n.npz", images=ok, split=np.array([0] * 9 + [1])), {}, "the split labels put no row in 'test'"),
        (npz(tmp_path, "o.npz", images=ok, split=np.zeros(3, int)), {}, "split has shape (3,), expected (10,)"),
        (npz(tmp_path, "p.npz", images=ok), {"discrete_factors": ["shape"]}, "task.discrete_factors names 'shape', not a factor"),
        (npz(tmp_path, "q.npz", images=ok[:2]), {}, "2 examples are too few to split"),
    ]  # fmt: skip


def test_bad_data_is_refused_in_one_line_naming_the_value(tmp_path: Path) -> None:
    for path, options, message in bad_cases(tmp_path):
        with pytest.raises(UserError) as err:
            load(path, **options)
        assert message in str(err.value) and "\n" not in str(err.value), (path.name, err.value)


def test_a_missing_path_option_says_how_to_give_one() -> None:
    with pytest.raises(UserError, match=r"task 'file' needs task.path=DATA\.npz"):
        ENTRY.build(build(ENTRY.config, {}, "task"), Path("/x"))


def test_smoke_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = (RNG.random((300, 16, 16)) > 0.7).astype(np.uint8)
    path = npz(
        tmp_path,
        images=images,
        factors=RNG.random((300, 3)),
        factor_names=np.array(["a", "b", "c"]),
    )
    result = cli_here(capsys,
        "run", "--config", str(CONFIGS / "smoke" / "file-vae.yaml"), "--wandb", "disabled",
        "--set", "output.figures=false",
        "--set", f"task.path={path}", "--set", f"output.root={tmp_path / 'results'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (metrics,) = (tmp_path / "results" / "runs" / "file" / "vae").glob("*/metrics.json")
    record = json.loads(metrics.read_text())
    assert record["run"]["data_source"].startswith("file data.npz sha256:")
    assert record["run"]["likelihood"] == "bernoulli"
    assert math.isfinite(record["metrics"]["test/elbo_nats"])


def test_a_bad_file_exits_2_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = npz(tmp_path, images=np.zeros((10, 8, 8, 3)))
    result = cli_here(capsys,
        "run",
        "--config",
        str(CONFIGS / "smoke" / "file-vae.yaml"),
        "--set",
        f"task.path={path}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "channels last?" in line and not (tmp_path / "results").exists()


@pytest.mark.parametrize("kind", ["binary", "continuous"])  # 8-bit: the file task's sample
@pytest.mark.parametrize("model", MODELS.names())
def test_every_model_trains_on_a_file(model: str, kind: str, tmp_path: Path) -> None:
    images = {
        "binary": RNG.random((120, 1, 28, 28)) > 0.7,
        "continuous": RNG.normal(size=(120, 1, 16, 16)).astype(np.float32),
    }[kind]
    path = npz(tmp_path, images=images, factors=RNG.random((120, 2)))
    record = train_briefly({"name": "file", "path": str(path)}, model, tmp_path / "runs")
    assert math.isfinite(record["metrics"]["test/elbo_nats"])
