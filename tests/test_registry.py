"""Registries: discoverable names, refused duplicates, close-match hints."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from hvbench.errors import UserError
from hvbench.registry import MODELS, TASKS, Registry


def test_builtins_are_registered() -> None:
    assert {"toy-corr", "toy-uncorr"} <= set(TASKS.names())
    assert "vae" in MODELS.names()
    assert all(e.description for e in TASKS.entries() + MODELS.entries())


def test_duplicate_names_are_refused() -> None:
    registry = Registry("thing", (), "hvbench.test-none")

    @dataclass(frozen=True)
    class Cfg:
        pass

    registry.register("a", config=Cfg, description="first")(lambda cfg: None)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a", config=Cfg, description="second")(lambda cfg: None)


def test_unknown_name_suggests_close_match() -> None:
    with pytest.raises(UserError, match=r"did you mean 'vae'\?"):
        MODELS.get("vaee")


def test_third_party_plugins_register_through_entry_points(tmp_path) -> None:
    """A separately installed package adds a model via the `hvbench.models` entry-point group."""
    import os
    import subprocess
    import sys

    (tmp_path / "hvplug.py").write_text(
        "from dataclasses import dataclass\n"
        "from hvbench.registry import register_model\n"
        "@dataclass(frozen=True)\n"
        "class Cfg:\n"
        "    width: int = 3\n"
        "@register_model('plugvae', config=Cfg, description='a plug-in model')\n"
        "def build(cfg, spec):\n"
        "    raise NotImplementedError\n"
    )
    dist = tmp_path / "hvplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hvplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[hvbench.models]\nplugvae = hvplug\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "hvbench", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "plugvae" in result.stdout and "a plug-in model" in result.stdout
