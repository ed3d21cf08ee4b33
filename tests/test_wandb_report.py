"""The W&B Report of a sweep, built offline: its sections, run filters and panels."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from wandb_workspaces import expr

from hvbench.cli import main
from hvbench.wandb_report import build

TASKS = {"toy-corr": {"vae": ["z"], "lvae": ["z1", "z2", "z3"]}, "celeba": {"vae": ["z"]}}


def test_one_section_per_task_over_the_sweeps_runs_grouped_by_model() -> None:
    report = build("hvbench", "someone", "seeds", TASKS)
    assert (report.title, report.entity, report.project) == ("hvbench: seeds", "someone", "hvbench")
    headings = [b.text for b in report.blocks if type(b).__name__ == "H2"]
    grids = [b for b in report.blocks if type(b).__name__ == "PanelGrid"][::2]  # then runs
    assert headings == ["toy-corr", "celeba"] and len(grids) == 2
    for task, grid in zip(headings, grids, strict=True):
        (runset,) = grid.runsets
        assert runset.groupby == ["jobType"] and runset.project == "hvbench"
        where = {f.key.name: f.value for f in expr.expr_to_filters(runset.filters).filters}
        assert where == {"group": "seeds", "task.name": task}
        for panel in grid.panels:
            panel._to_model()  # every panel serialises without a network


def test_panels_compare_bounds_collapse_throughput_and_curves() -> None:
    report = build("p", "e", "seeds", TASKS)
    grid, runs = [b for b in report.blocks if type(b).__name__ == "PanelGrid"][:2]
    charts = [p for p in grid.panels if type(p).__name__ != "MediaBrowser"]
    metrics = {m for p in charts for m in (getattr(p, "metrics", None) or p.y)}
    (media,) = [p for p in grid.panels if type(p).__name__ == "MediaBrowser"]
    assert "figures/samples" in media.media_keys
    (table,) = runs.runsets
    assert table.groupby == [] and "summary:test/elbo_nats" in table.visible_columns
    assert [type(p).__name__ for p in runs.panels] == ["RunComparer"]
    assert {
        "test/elbo_nats",
        "test/iwae_nats",
        "test/elbo_nll_bpd",
        "test/collapse_rate",
        "test/conditional_collapse_rate",
        "test/kl_collapse_rate",
        "perf/train_images_per_s",
        "val/elbo_nats",
        "test/kl_share/z1",
        "test/conditional_collapse_rate/z3",
    } <= metrics
    for panel in (p for p in charts if "collapse" in p.title):  # one measure per panel, named
        (measure,) = {m.split("/")[1] for m in panel.metrics}
        assert measure in panel.title
    (curves,) = [p for p in grid.panels if type(p).__name__ == "LinePlot"]
    assert curves.x == "step" and curves.groupby_rangefunc == "stddev"


def test_dry_run_prints_the_outline_without_an_account(tmp_path: Path) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        main(["wandb-report", "--project", "p", "--sweep", "s", "--task", "toy-corr",
              "--root", str(tmp_path), "--dry-run"])  # fmt: skip
    text = out.getvalue()
    assert "W&B report 'hvbench: s' in <your entity>/p" in text and "validation ELBO" in text


def test_a_sweep_with_no_runs_and_no_task_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["wandb-report", "--project", "p", "--sweep", "s", "--root", str(tmp_path)])
    assert exit_.value.code == 2
    assert "no finished runs of sweep 's'" in capsys.readouterr().err
