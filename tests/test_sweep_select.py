"""Parts of a sweep: `--shard I/N` (N shells share one grid) and `--only` (one board row)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hvbench.config import resolve
from hvbench.errors import UserError
from hvbench.results import write_status
from hvbench.sweep import load, only, plan, shard
from tests.conftest import CONFIGS, cli_here

SWEEP = CONFIGS / "sweeps" / "toy-study.yaml"


def test_shards_are_disjoint_and_cover_the_sweep(tmp_path: Path) -> None:
    sweep = load(SWEEP, str(tmp_path))
    parts = [shard(sweep, f"{i}/3").entries for i in range(3)]
    seen = [e.run_dir for part in parts for e in part]
    assert sorted(seen) == sorted(e.run_dir for e in sweep.entries)
    assert len(set(seen)) == len(seen) == 2 * 4 * 2 * 3  # tasks × models × variants × seeds
    for text in ("2/2", "1", "-1/2", "a/b"):
        with pytest.raises(UserError, match="must be I/N"):
            shard(sweep, text)


def test_only_keeps_one_row_and_names_the_rows_when_nothing_matches(tmp_path: Path) -> None:
    sweep = load(SWEEP, str(tmp_path))
    row = only(sweep, "toy-corr/vae/weak-kl").entries
    assert [(e.task, e.model, e.variant, e.seed) for e in row] == [
        ("toy-corr", "vae", "weak-kl", seed) for seed in (0, 1, 2)
    ]
    assert len(only(sweep, "*/dagvae/*").entries) == 12
    with pytest.raises(UserError, match="its rows: toy-corr/biva/elbo-warmup, "):
        only(sweep, "toy-corr/vaex")


def test_the_cli_prints_one_rows_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = cli_here(
        capsys,
        "sweep", str(SWEEP), "--only", "toy-uncorr/lvae/elbo-warmup", "--shard", "1/2",
        "--dry-run", "--out", str(tmp_path / "results"), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (command,) = result.stdout.strip().splitlines()  # seeds 0, 1, 2: shard 1/2 holds seed 1
    assert "--model lvae" in command and "output.run_id=toy-study-elbo-warmup-s1" in command


def test_a_finished_run_whose_config_holds_nested_lists_is_skipped(tmp_path: Path) -> None:
    """config.yaml gives a DAG's nodes back as lists of mappings with list parents; the sweep
    builds tuples. Equal configs in either spelling are the same run, skipped when finished."""
    sweep = only(load(SWEEP, str(tmp_path)), "toy-corr/dagvae/weak-kl")
    entry = sweep.entries[0]
    cfg = resolve(entry.task, entry.model, entry.config, list(entry.overrides))
    entry.run_dir.mkdir(parents=True)
    (entry.run_dir / "config.yaml").write_text(
        yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())))
    )
    write_status(entry.run_dir, "finished", 1000, 1000)
    assert [state for e, state, _ in plan(load(SWEEP, str(tmp_path))) if e == entry] == ["finished"]
