"""`hvbench eval RUN --checkpoint STEP`: a kept checkpoint's weights scored like the final ones,
written beside the run's record and never ranked (the toy study's half-budget histograms).
One evaluation goes through a real `python -m hvbench` process; the rest run the same CLI in
this process (seconds cheaper each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import CONFIGS, cli_here, in_process


def _metrics(path: Path) -> dict:
    return json.loads(path.read_text())["metrics"]


def refused(capsys: pytest.CaptureFixture[str], *args: str, cwd: Path) -> str:
    """`hvbench ARGS` in this process must exit 2 with one line; that line."""
    result = cli_here(capsys, *args, cwd=cwd)
    err = result.stderr.strip()
    assert result.returncode == 2 and len(err.splitlines()) == 1, err
    return err


def test_a_half_budget_checkpoint_is_evaluated_apart_from_the_board(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "results"
    in_process(
        "run", "--config", str(CONFIGS / "smoke/toy-vae.yaml"), "--out", str(root),
        "--set", "output.run_id=half", "--set", "train.checkpoint_every=15",
    )  # fmt: skip
    run_dir = root / "runs/toy-corr/vae/half"
    final = _metrics(run_dir / "metrics.json")

    half = cli_here(capsys, "eval", str(run_dir), "--checkpoint", "15", cwd=tmp_path)
    assert half.returncode == 0, half.stderr
    record = json.loads((run_dir / "metrics.step-00000015.json").read_text())
    assert record["checkpoint"]["step"] == 15 and record["run"]["steps"] == 15
    assert record["metrics"]["test/elbo_nats"] != final["test/elbo_nats"]
    assert (run_dir / "figures.step-00000015/latent_histograms.png").is_file()

    # the last checkpoint holds the final weights and the RNGs the run's evaluation began with
    in_process("eval", str(run_dir), "--checkpoint", "30")
    assert _metrics(run_dir / "metrics.step-00000030.json")["test/elbo_nats"] == final["test/elbo_nats"]

    in_process("leaderboard", "--root", str(root))
    rows = (root / "leaderboard.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # header + the run itself, not its checkpoints' numbers

    assert "kept steps: 15, 30" in refused(capsys, "eval", str(run_dir), "--checkpoint", "7", cwd=tmp_path)

    before = (run_dir / "metrics.step-00000015.json").read_bytes()
    assert "exists already" in refused(capsys, "eval", str(run_dir), "--checkpoint", "15", cwd=tmp_path)
    assert (run_dir / "metrics.step-00000015.json").read_bytes() == before
