"""The committed reference runs and the sweep files that made them agree, so the README's
command for any row reproduces that row: a sweep split into parts (files sharing one `name:`,
each sized to a CPU's wall-time budget) must keep every finished run's id and config.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from hvbench.sweep import load
from tests.conftest import CONFIGS, REPO

REFERENCE = REPO / "results" / "reference"
STUDIES = sorted(p for p in (CONFIGS / "sweeps").glob("*.yaml") if p.name != "smoke.yaml")


def committed_runs() -> set[Path]:
    return {p for p in (REFERENCE / "runs").glob("*/*/*") if (p / "config.yaml").is_file()}


def test_every_committed_run_is_one_entry_of_one_sweep_file_with_its_config() -> None:
    committed = committed_runs()
    assert len(committed) >= 90, "the reference runs are missing"
    owners: Counter[Path] = Counter()
    for path in STUDIES:  # `load` refuses an entry whose committed config.yaml differs
        owners.update(entry.run_dir for entry in load(path, str(REFERENCE)).entries)
    assert sorted(committed - set(owners)) == [], "committed runs no sweep file makes"
    assert [run for run, n in owners.items() if n > 1] == [], "runs two sweep files make"


def test_the_parts_of_one_sweep_hold_distinct_rows() -> None:
    """Files sharing a name are parts of one board: a row (task/model/variant) is in one."""
    files_per_row: dict[str, Counter[str]] = {}
    for path in STUDIES:
        sweep = load(path, str(REFERENCE))
        files_per_row.setdefault(sweep.name, Counter()).update({e.row for e in sweep.entries})
    assert len(files_per_row["dsprites-cpu"]) == 6 and len(files_per_row["toy-study"]) == 17
    for name, files in files_per_row.items():
        assert [row for row, n in files.items() if n > 1] == [], name


def test_every_row_of_the_reference_board_has_three_seeds() -> None:
    """The board's rows are means ± std over seeds 0, 1 and 2, never over fewer."""
    seeds: dict[str, set[str]] = {}
    for run in committed_runs():
        row, seed = re.fullmatch(r"(.+)-s([0-9]+)", run.name).groups()
        seeds.setdefault(f"{run.parent.parent.name}/{run.parent.name}/{row}", set()).add(seed)
    assert {row: sorted(s) for row, s in seeds.items() if s != {"0", "1", "2"}} == {}
