"""`hvbench eval RUN --checkpoint STEP`: a kept checkpoint's weights scored like the final ones,
written beside the run's record and never ranked (the toy study's half-budget histograms)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import CONFIGS, run_cli


def _metrics(path: Path) -> dict:
    return json.loads(path.read_text())["metrics"]


def test_a_half_budget_checkpoint_is_evaluated_apart_from_the_board(tmp_path: Path) -> None:
    root = tmp_path / "results"
    trained = run_cli(
        "run", "--config", str(CONFIGS / "smoke/toy-vae.yaml"), "--out", str(root),
        "--set", "output.run_id=half", "--set", "train.checkpoint_every=15",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    run_dir = root / "runs/toy-corr/vae/half"
    final = _metrics(run_dir / "metrics.json")

    half = run_cli("eval", str(run_dir), "--checkpoint", "15", cwd=tmp_path)
    assert half.returncode == 0, half.stderr
    record = json.loads((run_dir / "metrics.step-00000015.json").read_text())
    assert record["checkpoint"]["step"] == 15 and record["run"]["steps"] == 15
    assert record["metrics"]["test/elbo_nats"] != final["test/elbo_nats"]
    assert (run_dir / "figures.step-00000015/latent_histograms.png").is_file()

    # the last checkpoint holds the final weights and the RNGs the run's evaluation began with
    last = run_cli("eval", str(run_dir), "--checkpoint", "30", cwd=tmp_path)
    assert last.returncode == 0, last.stderr
    assert _metrics(run_dir / "metrics.step-00000030.json")["test/elbo_nats"] == final["test/elbo_nats"]

    board = run_cli("leaderboard", "--root", str(root), cwd=tmp_path)
    assert board.returncode == 0, board.stderr
    rows = (root / "leaderboard.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # header + the run itself, not its checkpoints' numbers

    missing = run_cli("eval", str(run_dir), "--checkpoint", "7", cwd=tmp_path)
    assert missing.returncode == 2
    assert "kept steps: 15, 30" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1

    before = (run_dir / "metrics.step-00000015.json").read_bytes()
    again = run_cli("eval", str(run_dir), "--checkpoint", "15", cwd=tmp_path)
    assert again.returncode == 2 and "exists already" in again.stderr
    assert (run_dir / "metrics.step-00000015.json").read_bytes() == before
