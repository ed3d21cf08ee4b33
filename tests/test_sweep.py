"""Sweeps end to end: the smoke sweep runs, a second invocation runs nothing new, the board
shows each model over its two seeds, and the report renders in a real headless Chromium."""

from __future__ import annotations

import io
import json
import re
import shlex
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from hvbench import leaderboard, report
from hvbench.aggregate import Spread
from hvbench.cli import main
from hvbench.config import resolve
from hvbench.errors import UserError
from hvbench.sweep import dry_run, load, plan, submit
from hvbench.tracking import init_kwargs
from tests import browser
from tests.conftest import CONFIGS, cli_here

SMOKE = CONFIGS / "sweeps" / "smoke.yaml"


@pytest.fixture
def swept(smoke_sweep: Path) -> Path:
    """The smoke sweep (conftest.smoke_sweep, shared with the board's tests): its results root."""
    return smoke_sweep


def test_every_run_records_its_sweep(swept: Path) -> None:
    run_dirs = sorted(swept.glob("runs/toy-corr/*/*"))
    assert [p.relative_to(swept / "runs").as_posix() for p in run_dirs] == [
        "toy-corr/lvae/smoke-s0",
        "toy-corr/lvae/smoke-s1",
        "toy-corr/vae/smoke-s0",
        "toy-corr/vae/smoke-s1",
    ]
    for run_dir in run_dirs:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["output"]["sweep"] == "smoke"
        assert config["output"]["config_name"] == f"smoke/toy-{run_dir.parent.name}"
        assert config["train"]["seed"] == int(run_dir.name[-1])
        assert (run_dir / "metrics.json").is_file() and (run_dir / "history.jsonl").is_file()


def test_each_runs_wandb_init_groups_it_by_sweep_and_model(swept: Path) -> None:
    for run_dir in sorted(swept.glob("runs/toy-corr/*/*")):
        cfg = resolve(config_file=run_dir / "config.yaml")
        kwargs = init_kwargs(cfg, run_dir, run_dir.name, "cpu")
        model = run_dir.parent.name
        assert (kwargs["group"], kwargs["job_type"], kwargs["name"]) == ("smoke", model, run_dir.name)
        assert kwargs["tags"] == ["fp32", "cpu", f"smoke/toy-{model}"]


def test_a_second_invocation_runs_nothing_new(
    swept: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p: p.stat().st_mtime_ns for p in swept.glob("runs/*/*/*/metrics.json")}
    result = cli_here(capsys, "sweep", str(SMOKE), "--out", "results", cwd=swept.parent)
    assert result.returncode == 0, result.stderr
    assert "sweep smoke: 4 skipped, 0 finished, 0 failed, 0 interrupted" in result.stdout
    assert {p: p.stat().st_mtime_ns for p in swept.glob("runs/*/*/*/metrics.json")} == before


def test_the_board_shows_each_model_over_two_seeds(swept: Path) -> None:
    main_rows, _, seeds = leaderboard.build(swept)
    assert len(main_rows) == 4
    assert sorted(r["model"] for r in seeds) == ["lvae", "vae"]
    for row in seeds:
        assert row["n"] == 2 and row["seeds"] == [0, 1]
        assert isinstance(row["elbo_nats"], Spread) and row["elbo_nats"].std > 0
        assert row["precision"] == "fp32"
    markdown = (swept / "leaderboard.md").read_text()
    assert markdown.index("## Over seeds") < markdown.index("## Runs")
    assert " ± " in markdown and "*published*" in markdown
    csv_header = (swept / "leaderboard_seeds.csv").read_text().splitlines()[0]
    assert "elbo_nats_mean,elbo_nats_std" in csv_header and ",n," in csv_header


@pytest.mark.skipif(not browser.available(), reason="needs Debian's chromium and chromium-driver")
def test_the_report_renders_in_a_real_browser(swept: Path) -> None:
    page = report.build(swept)
    html = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "DATA", page.read_text())
    assert "src='DATA'" in html and not re.search(r"https?:|src='(?!DATA)|<script|<link", html)
    seen = browser.view(page)
    (swept / "report.png").write_bytes(seen.screenshot)
    assert seen.console_errors == []
    assert seen.overflow_px <= 0  # at 1,280 px the page never scrolls sideways; tables do
    assert seen.images >= 6 and seen.broken_images == 0  # curves, KL, collapse, matrices, samples
    assert "lvae" in seen.text and "vae" in seen.text and "toy-corr" in seen.text
    shot = np.asarray(Image.open(io.BytesIO(seen.screenshot)).convert("RGB"), dtype=np.int64)
    inked = float((shot.sum(-1) < 600).mean())  # share of pixels that are not near-white
    colours = len(np.unique(shot.reshape(-1, 3), axis=0))
    assert inked > 0.05 and colours > 200, (inked, colours)  # text, tables and plots: not blank


def test_dry_run_prints_the_run_commands(tmp_path: Path) -> None:
    lines: list[str] = []
    dry_run(load(SMOKE, str(tmp_path / "results")), lines.append)
    assert len(lines) == 4
    first = shlex.split(lines[0])
    assert first[first.index("run") :][:5] == ["run", "--task", "toy-corr", "--model", "vae"]
    assert "output.run_id=smoke-s0" in first and "output.sweep=smoke" in first
    assert not (tmp_path / "results").exists()


def test_the_grid_and_its_run_ids(tmp_path: Path) -> None:
    spec = {
        "name": "grid",
        "tasks": ["toy-corr", "toy-uncorr"],
        "models": ["vae", "lvae"],
        "seeds": 3,
        "set": {"train.steps": 7, "train.lr": "1e-4"},
        "variants": {"b1": {}, "b4": {"train.beta": 4}},
        "launcher": ["accelerate", "launch", "-m", "hvbench"],
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = load(path, str(tmp_path / "results"))
    assert len(sweep.entries) == 2 * 2 * 2 * 3
    assert sorted({e.run_dir.name for e in sweep.entries}) == [
        f"grid-{v}-s{s}" for v in ("b1", "b4") for s in range(3)
    ]
    (_, now, command), *_ = plan(sweep)
    assert now == "new" and command[:4] == ["accelerate", "launch", "-m", "hvbench"]
    assert "train.lr=1e-4" in command and "train.steps=7" in command


def test_finished_runs_are_skipped_and_interrupted_ones_resumed(tmp_path: Path) -> None:
    sweep = load(SMOKE, str(tmp_path))
    folders = {e.run_dir.parent.name + "/" + e.run_dir.name: e.run_dir for e in sweep.entries}
    statuses = {"vae/smoke-s0": "finished", "vae/smoke-s1": "interrupted", "lvae/smoke-s0": "failed"}
    for key, status in statuses.items():
        folders[key].mkdir(parents=True)
        (folders[key] / "status.json").write_text(json.dumps({"status": status, "step": 3}))
    steps = {e.run_dir.parent.name + "/" + e.run_dir.name: (now, cmd) for e, now, cmd in plan(sweep)}
    assert steps["vae/smoke-s0"] == ("finished", None)
    assert steps["lvae/smoke-s0"] == ("failed", None)
    now, command = steps["vae/smoke-s1"]
    assert now == "interrupted" and command[-3:] == ["run", "--resume", str(folders["vae/smoke-s1"])]
    assert steps["lvae/smoke-s1"][0] == "new"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"models": ["vae", "vea"]}, "unknown model 'vea' (did you mean 'vae'?)"),
        ({"set": {"train.stepz": 3}}, "unknown config key 'train.stepz'"),
        ({"seeds": [0, 0]}, "distinct ints"),
        ({"name": "../up"}, "one path component"),
        ({"colour": "red"}, "unknown sweep key 'colour'"),
    ],
)
def test_a_bad_entry_stops_the_sweep_before_any_run(
    tmp_path: Path, change: dict, message: str
) -> None:
    spec = {**yaml.safe_load(SMOKE.read_text()), **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    stderr = io.StringIO()
    with redirect_stderr(stderr), pytest.raises(SystemExit) as exit_:
        main(["sweep", str(path), "--out", str(tmp_path / "results")])
    assert exit_.value.code == 2
    (line,) = stderr.getvalue().strip().splitlines()
    assert message in line
    assert not (tmp_path / "results").exists()


def test_a_changed_entry_is_not_taken_for_a_finished_run(swept: Path, tmp_path: Path) -> None:
    spec = {**yaml.safe_load(SMOKE.read_text()), "set": {"train.steps": 31}}
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError, match=r"train\.steps=30 but the sweep now asks for 31"):
        load(path, str(swept))


def test_submitit_runs_one_job_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {**yaml.safe_load(SMOKE.read_text()), "name": "jobs", "models": ["vae"], "seeds": [5]}
    spec["set"] = {"train.steps": 5, "eval.iwae_k": 2, "output.figures": False}
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path)
    sweep = load(path, "results")
    (job,) = submit(sweep, "local", tmp_path / "submitit", wait=True, echo=lambda _: None)
    assert "run finished" in job.result()  # the job's own stdout; raises if the run failed
    (run_dir,) = (tmp_path / "results" / "runs" / "toy-corr" / "vae").iterdir()
    assert run_dir.name == "jobs-s5" and (run_dir / "metrics.json").is_file()
    assert plan(sweep)[0][1] == "finished"
