"""CelebA 64×64: the real preprocessing on a tiny fake CelebA, from a folder and from 🤗 datasets."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import datasets
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image

from hvbench.config import build
from hvbench.errors import UserError
from hvbench.registry import TASKS
from hvbench.tasks.celeba import ATTRIBUTES, SAMPLE_SPLITS, write_sample
from tests.conftest import CONFIGS, cli_here

ENTRY = TASKS.get("celeba")


def config(**options: object):
    return build(ENTRY.config, {"workers": 1, **options}, "task")


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("celeba")
    return root, write_sample(root)


@pytest.fixture()
def fake_copy(fake: tuple[Path, np.ndarray], tmp_path: Path) -> Path:
    """A private copy of the fake folder, for tests that break it."""
    return Path(shutil.copytree(fake[0], tmp_path / "celeba"))


def hf_splits(root: Path, table: np.ndarray) -> datasets.DatasetDict:
    """The same 36 images and attributes as a 🤗 DatasetDict (encoded JPEG bytes, bool columns)."""
    features = datasets.Features(
        {"image": datasets.Image(), **{a: datasets.Value("bool") for a in ATTRIBUTES}}
    )
    paths = sorted((root / "img_align_celeba").iterdir())
    parts = {}
    for code, name in enumerate(("train", "validation", "test")):
        rows = [i for i, s in enumerate(SAMPLE_SPLITS) if s == code]
        columns = {a: [bool(table[i, k] > 0) for i in rows] for k, a in enumerate(ATTRIBUTES)}
        images = [{"bytes": paths[i].read_bytes(), "path": None} for i in rows]
        parts[name] = datasets.Dataset.from_dict({"image": images, **columns}, features=features)
    return datasets.DatasetDict(parts)


def test_folder_is_cropped_resized_and_split_as_nvae_does(
    fake: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    root, table = fake
    task = ENTRY.build(config(source=str(root)), tmp_path)
    assert {s: tuple(x.shape) for s, x in task.splits.items()} == {
        "train": (24, 3, 64, 64),
        "val": (6, 3, 64, 64),
        "test": (6, 3, 64, 64),
    }
    with Image.open(root / "img_align_celeba" / "000025.jpg") as original:
        small = original.convert("RGB").crop((15, 40, 163, 188)).resize((64, 64), Image.BILINEAR)
    expected = torch.from_numpy(np.asarray(small).transpose(2, 0, 1).copy())
    assert torch.equal(task.splits["val"][0], expected)  # 000025.jpg is the first validation image
    assert task.splits["train"].dtype == torch.uint8
    assert task.factor_names == ATTRIBUTES and task.discrete_factors == ATTRIBUTES
    assert torch.equal(task.factors["test"], torch.from_numpy((table[30:] > 0).astype(np.float32)))
    assert task.spec.likelihood == "dlogistic" and task.discrete_data
    assert task.eval_splits == ("val", "test")
    assert task.source.startswith("celeba64-v1 sha256:")


def test_runs_after_prepare_need_no_source_and_no_images(fake_copy: Path, tmp_path: Path) -> None:
    folder = ENTRY.prepare(config(source=str(fake_copy)), tmp_path / "cache")
    first = ENTRY.build(config(source=str(fake_copy)), tmp_path / "cache")
    shutil.rmtree(fake_copy)  # the cache alone serves later runs
    again = ENTRY.build(config(), tmp_path / "cache")
    assert again.source == first.source == json.loads((folder / "meta.json").read_text())["source"]
    saved = datasets.load_from_disk(str(folder / "celeba64"))  # a plain 🤗 save_to_disk folder
    assert {s: len(saved[s]) for s in saved} == {"train": 24, "val": 6, "test": 6}
    assert all(torch.equal(again.splits[s], first.splits[s]) for s in first.splits)
    limited = ENTRY.build(config(max_per_split=4), tmp_path / "cache")
    assert len(limited.splits["train"]) == 4 and limited.source.endswith("(max_per_split=4)")
    assert torch.equal(limited.splits["test"], first.splits["test"][:4])


def test_worker_processes_give_the_same_cache(
    fake: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    one = ENTRY.build(config(source=str(fake[0])), tmp_path / "one")
    two = ENTRY.build(config(source=str(fake[0]), workers=2), tmp_path / "two")
    assert one.source == two.source


def test_a_saved_hf_dataset_gives_the_same_data(
    fake: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    hf_splits(*fake).save_to_disk(str(tmp_path / "hf"))
    from_hf = ENTRY.build(config(source=str(tmp_path / "hf")), tmp_path / "cache")
    from_folder = ENTRY.build(config(source=str(fake[0])), tmp_path / "cache")
    assert from_hf.source == from_folder.source  # same pixels, splits and attributes
    assert (tmp_path / "cache" / "celeba").is_dir()


def test_a_hub_id_is_read_offline_from_the_local_cache(
    fake: tuple[Path, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub snapshot laid out as huggingface_hub caches it; nothing is fetched."""
    repo = tmp_path / "hub" / "datasets--someone--celeba"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    data = repo / "snapshots" / commit / "data"
    data.mkdir(parents=True)
    for name, split in hf_splits(*fake).items():
        split.to_parquet(str(data / f"{name}-00000-of-00001.parquet"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    from_hub = ENTRY.build(config(source="someone/celeba"), tmp_path / "cache")
    assert from_hub.source == ENTRY.build(config(source=str(fake[0])), tmp_path / "c2").source
    with pytest.raises(UserError, match="'someone/absent' is neither a folder nor a 🤗 dataset"):
        ENTRY.prepare(config(source="someone/absent"), tmp_path / "cache")


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("list_eval_partition.txt", "CelebA partition file is missing: expected {root}/list_eval"),
        ("list_attr_celeba.txt", "CelebA attribute file is missing: expected {root}/list_attr"),
        ("img_align_celeba", "CelebA image folder is missing: expected {root}/img_align_celeba;"),
        ("img_align_celeba/000007.jpg", "CelebA image {root}/img_align_celeba/000007.jpg is missing"),
    ],
)  # fmt: skip
def test_missing_data_is_one_line_naming_the_file(
    fake_copy: Path, tmp_path: Path, remove: str, message: str
) -> None:
    target = fake_copy / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(UserError) as err:
        ENTRY.prepare(config(source=str(fake_copy)), tmp_path / "cache")
    assert message.format(root=fake_copy) in str(err.value) and "\n" not in str(err.value)


def test_bad_options_are_refused(fake: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"task\.workers must be 0 .* or more, got -1"):
        ENTRY.prepare(config(source=str(fake[0]), workers=-1), tmp_path)
    with pytest.raises(UserError, match=r"task\.max_per_split must be at least 1, got 0"):
        ENTRY.build(config(source=str(fake[0]), max_per_split=0), tmp_path)


def test_a_missing_folder_is_not_taken_for_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"CelebA folder not found: {tmp_path}/gone; download"):
        ENTRY.prepare(config(source=str(tmp_path / "gone")), tmp_path)


def test_unprepared_celeba_says_what_to_download(tmp_path: Path) -> None:
    with pytest.raises(
        UserError, match=r"CelebA is not prepared yet: download img_align_celeba\.zip"
    ):
        ENTRY.build(config(), tmp_path)


def test_corrupt_or_wrong_images_are_named(fake_copy: Path, tmp_path: Path) -> None:
    broken = fake_copy / "img_align_celeba" / "000005.jpg"
    broken.write_bytes(broken.read_bytes()[:300])
    with pytest.raises(UserError, match=f"corrupt image {broken}: "):
        ENTRY.prepare(config(source=str(fake_copy)), tmp_path / "a")
    assert list((tmp_path / "a" / "celeba").iterdir()) == []  # nothing half-built is kept
    Image.new("RGB", (64, 64)).save(broken)
    with pytest.raises(UserError, match=f"{broken} is 64×64, not an aligned 178×218 CelebA"):
        ENTRY.prepare(config(source=str(fake_copy)), tmp_path / "b")


def test_cli_prepare_reports_missing_data_in_one_line(fake_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (fake_copy / "list_attr_celeba.txt").unlink()
    result = cli_here(capsys,
        "data", "prepare", "--task", "celeba", "--source", str(fake_copy), cwd=tmp_path
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"CelebA attribute file is missing: expected {fake_copy}/list_attr_celeba.txt" in line


def test_smoke_run_end_to_end(
    fake: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = cli_here(capsys,
        "run", "--config", str(CONFIGS / "smoke" / "celeba-vae.yaml"), "--wandb", "disabled",
        "--set", "output.figures=false",
        "--set", f"task.source={fake[0]}", "--set", f"output.root={tmp_path / 'results'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (metrics,) = (tmp_path / "results" / "runs" / "celeba" / "vae").glob("*/metrics.json")
    record = json.loads(metrics.read_text())
    assert record["run"]["data_source"].startswith("celeba64-v1 sha256:")
    assert record["run"]["eval_splits"] == ["val", "test"]
    for split in ("val", "test"):
        assert math.isfinite(record["metrics"][f"{split}/elbo_nats"])


