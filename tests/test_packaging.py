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
    assert (unpacked_wheel / "hvbench" / "dagvae" / "model.py").is_file()
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


def test_python_m_hvbench_inside_a_clone_finds_tasks_and_baselines(tmp_path: Path) -> None:
    """The README's `pip install . && python -m hvbench run ...` runs in the clone, where the
    clone's own `hvbench/` shadows the installed one; without an editable install's import
    hook (removed here), `hvbench.tasks` must still resolve to the clone's `tasks/`."""
    code = (
        "import runpy, sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in f.__module__]\n"
        "sys.argv = ['hvbench', 'run', '--config', 'configs/smoke/toy-vae.yaml',\n"
        f"            '--out', {str(tmp_path / 'results')!r}, '--set', 'train.steps=2',\n"
        "            '--set', 'output.figures=false', '--set', 'task.n_test=64']\n"
        "runpy.run_module('hvbench', run_name='__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "results" / "runs" / "toy-corr" / "vae").glob("*/metrics.json"))
