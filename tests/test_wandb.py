"""W&B: an offline run logs the same metric names and values as metrics.json, with no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hvbench.tracking import resolve_mode
from tests.conftest import CONFIGS, run_cli
from tests.wandb_records import history


def test_offline_run_logs_what_metrics_json_holds(tmp_path: Path) -> None:
    result = run_cli(
        "run",
        "--config",
        str(CONFIGS / "smoke" / "toy-vae.yaml"),
        "--wandb",
        "offline",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "results" / "runs" / "toy-corr" / "vae").iterdir()
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    rows = history(run_file)
    logged = {k: v for row in rows for k, v in row.items()}
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    for key in (
        "test/elbo_nats",
        "test/iwae_nats",
        "test/collapse_rate",
        "perf/train_images_per_s",
    ):
        assert logged[key] == pytest.approx(metrics[key], rel=1e-9), key
    steps = [row["_step"] for row in rows if "train/loss" in row]
    assert steps == [10, 15, 20, 30]  # log_every=10 plus the eval_every=15 validation
    assert any(key.startswith("figures/") for key in logged)
    assert "val/elbo_nats" in logged


def test_auto_mode_is_offline_without_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "disabled"
    assert resolve_mode("offline") == "offline"
