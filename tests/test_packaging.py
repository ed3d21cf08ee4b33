"""The wheel: tasks/, baselines/ and configs/ ship inside `hvbench`, never as top-level packages."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hvbench.config import read_yaml
from tests.conftest import CONFIGS, REPO


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("hvbench-*.whl")
    site = out / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def test_no_top_level_tasks_or_baselines(unpacked_wheel: Path) -> None:
    top_level = {p.name for p in unpacked_wheel.iterdir() if not p.name.endswith(".dist-info")}
    assert top_level == {"hvbench"}
    assert (unpacked_wheel / "hvbench" / "tasks" / "toy.py").is_file()
    assert (unpacked_wheel / "hvbench" / "baselines" / "vae.py").is_file()
    assert (unpacked_wheel / "hvbench" / "configs" / "toy-corr" / "vae.yaml").is_file()


def test_installed_wheel_imports_and_finds_its_configs(
    unpacked_wheel: Path, tmp_path: Path
) -> None:
    code = (
        "import hvbench, hvbench.tasks.toy, hvbench.baselines.vae\n"
        "from hvbench.config import resolve\n"
        "from hvbench.registry import MODELS, TASKS\n"
        "print(hvbench.__file__)\n"
        "print(resolve('toy-corr', 'vae').train.steps, 'vae' in MODELS.names(), 'toy-corr' in TASKS.names())\n"
        "import importlib.util; print(importlib.util.find_spec('tasks'), importlib.util.find_spec('baselines'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(unpacked_wheel)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    location, defaults, nothing = result.stdout.strip().splitlines()
    assert location.startswith(str(unpacked_wheel))
    steps = read_yaml(CONFIGS / "toy-corr" / "vae.yaml")["train"]["steps"]
    assert defaults == f"{steps} True True"  # the packaged configs/toy-corr/vae.yaml
    assert nothing == "None None"
