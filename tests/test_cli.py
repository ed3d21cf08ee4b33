"""The CLI end to end, in real subprocesses, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import CONFIGS, cli_here, run_cli

SMOKE = str(CONFIGS / "smoke" / "toy-vae.yaml")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One real smoke run shared by the assertions below: (cwd, run folder)."""
    cwd = tmp_path_factory.mktemp("cli")
    result = run_cli("run", "--config", SMOKE, "--set", "train.seed=3", cwd=cwd)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (cwd / "results" / "runs" / "toy-corr" / "vae").iterdir()
    return cwd, run_dir


def test_run_writes_config_metrics_and_figures(smoke_run: tuple[Path, Path]) -> None:
    _, run_dir = smoke_run
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train"]["seed"] == 3 and config["task"]["name"] == "toy-corr"
    record = json.loads((run_dir / "metrics.json").read_text())
    metrics = record["metrics"]
    for key in (
        "test/elbo_nats",
        "test/iwae_nats",
        "test/log_px_nats",
        "test/kl_nats/z",
        "test/active_units",
        "test/collapse_rate",
        "test/kl_collapse_rate",
        "perf/train_images_per_s",
        "perf/test_eval_images_per_s",
        "perf/peak_memory_mb",
        "perf/parameters",
        "test/mig",
        "test/dci_lasso_disentanglement",
        "test/dci_lasso_completeness",
        "test/dci_lasso_informativeness",
    ):
        # a number, or NaN (null) with the reason: a 30-step model may have no active unit to score
        assert isinstance(metrics[key], (int, float)) or key in record["notes"], key
    assert metrics["test/log_px_nats"] - metrics["test/kl_nats"] == pytest.approx(
        metrics["test/elbo_nats"]
    )
    assert record["run"]["data_source"].startswith("toy-v1")
    assert len(record["units"]["test"]["z"]["kl_nats"]) == 4
    factor_unit = record["factor_unit"]["test"]
    assert factor_unit["units"] == ["z[0]", "z[1]", "z[2]", "z[3]"]
    assert len(factor_unit["abs_spearman"]) == len(factor_unit["factors"]) == 5
    figures = {p.name for p in (run_dir / "figures").iterdir()}
    assert figures == {
        "reconstructions.png",
        "samples.png",
        "latent_histograms.png",
        "kl_per_unit.png",
        "training_curves.png",
        "factor_unit_test.png",
    }


def test_leaderboard_lists_the_run(
    smoke_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cwd, run_dir = smoke_run
    result = cli_here(capsys, "leaderboard", cwd=cwd)
    assert result.returncode == 0, result.stderr
    markdown = (cwd / "results" / "leaderboard.md").read_text()
    assert run_dir.name in markdown
    csv_lines = (cwd / "results" / "leaderboard.csv").read_text().splitlines()
    assert len(csv_lines) == 2 and run_dir.name in csv_lines[1]
    assert "MIG ↑" in markdown and ",mig,dci_lasso_disentanglement," in csv_lines[0]
    assert "toy-corr" in result.stdout


def test_list_shows_tasks_and_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = cli_here(capsys, "list", cwd=tmp_path)
    assert result.returncode == 0
    for name in ("toy-corr", "toy-uncorr", "vae"):
        assert name in result.stdout


@pytest.mark.parametrize("command", [["run"], ["list"], ["leaderboard"], ["data", "prepare"]])
def test_help(command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = cli_here(capsys, *command, "--help", cwd=tmp_path)
    assert result.returncode == 0 and "usage: hvbench" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--task", "toy-corrr", "--model", "vae"],
            "unknown task 'toy-corrr' (did you mean 'toy-corr'?); choose from:",
        ),
        (
            ["--task", "toy-corr", "--model", "transformer"],
            "unknown model 'transformer'; choose from:",
        ),
        (
            ["--config", SMOKE, "--set", "train.stepz=3"],
            "unknown config key 'train.stepz'; allowed:",
        ),
        (
            ["--config", SMOKE, "--set", "train.lr=fast"],
            "config key 'train.lr' expects float, got 'fast'",
        ),
        (
            ["--config", SMOKE, "--set", "task.correlation=1.5"],
            "task.correlation must lie in (-1, 1), got 1.5",
        ),
        (["--config", "missing.yaml"], "config file not found: missing.yaml"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    args: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """In this process, from an empty folder (tests/test_bad_input.py sends such cases through
    a real `python -m hvbench` too)."""
    result = cli_here(capsys, "run", *args, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "results").exists()


def test_existing_run_folder_is_never_overwritten(
    smoke_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cwd, run_dir = smoke_run
    before = (run_dir / "metrics.json").read_bytes()
    result = cli_here(capsys, "run", "--config", SMOKE, "--set", f"output.run_id={run_dir.name}", cwd=cwd)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert (run_dir / "metrics.json").read_bytes() == before


def test_bench_prints_one_json_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = cli_here(
        capsys,
        "bench",
        "--model",
        "vae",
        "--shape",
        "1,28,28",
        "--batch",
        "8",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--rounds",
        "1",
        "--probe-seconds",
        "0.05",
        "--probe-batch",
        "4",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert (
        record["shape"] == [1, 28, 28] and record["mode"] == "train" and record["images_per_s"] > 0
    )
    bad = cli_here(capsys, "bench", "--model", "vae", "--shape", "1,28", cwd=tmp_path)
    assert bad.returncode == 2 and "--shape must be C,H,W" in bad.stderr
