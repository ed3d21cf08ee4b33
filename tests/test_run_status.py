"""Run status and the leaderboard: only finished runs rank, every other run is listed with
`--all`, a diverged run fails loudly, and no file's content crashes the leaderboard."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hvbench.atomic import write_json, write_text
from hvbench.checkpoint import checkpoints
from hvbench.cli import main
from hvbench.results import (
    load_metrics,
    metrics_versions,
    read_status,
    run_status,
    write_new_metrics,
)
from tests.conftest import CONFIGS, cli_here

SMOKE = str(CONFIGS / "smoke" / "toy-vae.yaml")
QUICK = ["--set", "output.figures=false", "--set", "train.steps=10"]


@pytest.mark.slow
def test_four_concurrent_runs_then_one_leaderboard_of_finished_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "results"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "hvbench", "run", "--config", SMOKE, "--seed", str(seed), *QUICK],
            cwd=tmp_path,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    finished = sorted((root / "runs" / "toy-corr" / "vae").iterdir())
    assert len(finished) == 4 and all(run_status(run) == "finished" for run in finished)

    # a run that learns nothing fails: one line naming the step, exit 1, never ranked
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--config", SMOKE, "--set", "train.lr=1e6", "--set", f"output.root={root}"])
    assert exit_.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("hvbench: run failed: training failed at step ")
    assert "train.max_skip_fraction=0.01" in line and "latent group" in line
    (failed,) = set((root / "runs" / "toy-corr" / "vae").iterdir()) - set(finished)
    state = read_status(failed)
    assert state["status"] == "failed" and state["reason"] in line
    assert not (failed / "metrics.json").exists()

    # what older versions left: a finished run without status.json ranks, a bare folder does not
    legacy = failed.parent / "legacy-finished"
    shutil.copytree(finished[0], legacy, ignore=shutil.ignore_patterns("status.json"))
    record = json.loads((legacy / "metrics.json").read_text())
    # a run of its own (finished earlier), not a copy of finished[0]'s record: the board
    # counts one record once, whatever folder it was copied to; older versions wrote no record id
    info = {**record["run"], "finished": "2020-01-01T00:00:00+00:00"}
    record = {k: v for k, v in record.items() if k != "record_id"}
    write_json(legacy / "metrics.json", {**record, "run_id": "legacy-finished", "run": info})
    (failed.parent / "legacy-killed").mkdir()
    (failed.parent / "legacy-killed" / "config.yaml").write_text("{}\n")
    # malformed records: each skipped with one warning, none crashes the leaderboard
    broken = {"list": b"[]", "empty": b"{}", "latin1": b"\xff\xfe{", "truncated": b'{"task": "t'}
    for name, data in broken.items():
        folder = failed.parent / name
        folder.mkdir()
        (folder / "metrics.json").write_bytes(data)

    board = cli_here(capsys, "leaderboard", "--all", cwd=tmp_path)
    assert board.returncode == 0, board.stderr
    warnings = board.stderr.strip().splitlines()
    assert len(warnings) == len(broken) and all("hvbench: warning: skipping" in w for w in warnings)
    for name in broken:
        assert any(f"/{name}/metrics.json" in w for w in warnings), name
    ranked = (root / "leaderboard.md").read_text()
    for run in [*finished, legacy]:
        assert run.name in ranked
    assert failed.name not in ranked and "legacy-killed" not in ranked
    unranked = board.stdout.split("not ranked")[1]
    assert failed.name in unranked and "failed" in unranked and "legacy-killed" in unranked


def test_metrics_versions_are_added_never_overwritten(tmp_path: Path) -> None:
    record = {"task": "t", "model": "m", "run_id": "r", "metrics": {"a": 1.0}}
    record["run"] = {"eval_splits": ["test"]}
    write_json(tmp_path / "metrics.json", record)
    first = (tmp_path / "metrics.json").read_bytes()
    paths = [write_new_metrics(tmp_path, {**record, "metrics": {"a": float(i)}}) for i in (2, 3)]
    assert [p.name for p in paths] == ["metrics.v2.json", "metrics.v3.json"]
    (tmp_path / "metrics.v10.json").write_text(json.dumps({**record, "metrics": {"a": 10.0}}))
    names = [p.name for p in metrics_versions(tmp_path)]
    assert names == ["metrics.json", "metrics.v2.json", "metrics.v3.json", "metrics.v10.json"]
    assert load_metrics(tmp_path)["metrics"]["a"] == 10.0  # v10 is newer than v3, not older
    assert write_new_metrics(tmp_path, record).name == "metrics.v11.json"
    assert (tmp_path / "metrics.json").read_bytes() == first


def test_status_of_folders_without_status_json(tmp_path: Path) -> None:
    assert run_status(tmp_path) == "failed"  # what a killed run of an older version left
    (tmp_path / "metrics.json").write_text("{}")
    assert run_status(tmp_path) == "finished"  # an older version's finished run
    (tmp_path / "status.json").write_bytes(b"\x00garbage")
    assert read_status(tmp_path)["status"] == "unknown"


def test_a_checkpoint_being_written_is_not_a_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    for name in ("step-00000004", ".tmp-step-00000006", "step-00000002", "notes"):
        (folder / name).mkdir(parents=True)
        (folder / name / "model.safetensors").touch()
    (folder / "step-00000008").mkdir()  # empty: left over, a resume falls back to step 4
    assert [step for step, _ in checkpoints(tmp_path)] == [2, 4]


def test_a_gradient_norm_past_skip_threshold_skips_and_fails_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "--config", SMOKE, "--set", "train.skip_threshold=1e-6"]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--set", f"output.root={tmp_path}"])
    assert exit_.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "training failed at step 1: 1 of 1 steps skipped" in line
    assert "> train.skip_threshold" in line and "raise train.skip_threshold=1e-06" in line
    (run,) = (tmp_path / "runs" / "toy-corr" / "vae").iterdir()
    assert run_status(run) == "failed" and not checkpoints(run)


def test_atomic_writes_get_the_permissions_a_plain_open_gives(tmp_path: Path) -> None:
    """mkstemp makes owner-only files; a leaderboard or report is for others to read too."""
    umask = os.umask(0o022)
    try:
        write_text(tmp_path / "board.md", "x")
    finally:
        os.umask(umask)
    assert (tmp_path / "board.md").stat().st_mode & 0o777 == 0o644
