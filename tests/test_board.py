"""What a researcher reads: the terminal board at 80 and 200 columns, the report page, the end
of a sweep, the W&B Report's dry run over the sweep's offline runs, and the CLI's conveniences.

Everything runs over the README's smoke sweep (conftest.smoke_sweep, logged to W&B offline), as
a new user would: the CLI in a subprocess where the terminal width matters.
"""

from __future__ import annotations

import io
import re
from contextlib import redirect_stdout
from pathlib import Path
from urllib.parse import unquote

import pytest

from hvbench import leaderboard, report
from hvbench.cli import main
from hvbench.outcome import launcher_warning
from tests.conftest import cli_here

TITLE_WORDS = {
    word
    for titles in (
        leaderboard.SHORT_TITLES.values(),
        (t for _, t in leaderboard.COLUMNS),
        (t for _, t in leaderboard.SEED_COLUMNS),
    )
    for title in titles
    for word in title.split()
}


def _tables(text: str) -> list[tuple[list[str], list[str]]]:
    """(header lines, body lines) of every table rich printed: the lines above and below each
    horizontal rule."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.strip() and set(line.strip()) == {"─"}:
            head = []
            j = i - 1
            while j >= 0 and lines[j].strip() and not lines[j].strip().startswith(("over", "runs")):
                head.insert(0, lines[j])
                j -= 1
            body = []
            k = i + 1
            while k < len(lines) and lines[k].startswith(" ") and lines[k].strip():
                body.append(lines[k])
                k += 1
            out.append((head, body))
    return out


@pytest.mark.slow  # the first to ask for the smoke sweep
@pytest.mark.parametrize("width", [80, 200])
def test_the_board_reads_as_a_table_in_80_and_200_columns(
    smoke_sweep: Path,
    width: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    result = cli_here(capsys, "leaderboard", "--root", str(smoke_sweep), cwd=smoke_sweep.parent)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "…" not in text  # no cell or title cut short
    assert max(len(line) for line in text.splitlines()) <= width
    tables = _tables(text)
    assert len(tables) == 2  # over seeds, then every run
    for head, body in tables:
        words = {w for line in head for w in line.split()}
        assert words <= TITLE_WORDS, words - TITLE_WORDS  # every title word whole
        assert {"task", "model", "ELBO", "IWAE"} <= words
        assert sum(line.split()[1:3] == ["lvae", "*"] or " * " in line for line in body) == 1
    seeds_head, _ = tables[0]  # the compact board whole, img/s included, even at 80
    assert {"n", "cond.", "active", "KL", "collapse", "img/s"} <= {
        w for line in seeds_head for w in line.split()
    }
    runs_head, runs_body = tables[1]
    assert {"run", "seed"} <= {w for line in runs_head for w in line.split()}
    assert {line.split()[2 if " * " not in line else 3] for line in runs_body} == {
        "smoke-s0",
        "smoke-s1",
    }
    if width == 200:  # a wide terminal shows more than the compact columns
        assert "−ELBO/dim" in text and "img/s" in text


def test_wide_shows_every_column_whole(
    smoke_sweep: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = cli_here(
        capsys, "leaderboard", "--root", str(smoke_sweep), "--wide", cwd=smoke_sweep.parent
    )
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    for head, _ in _tables(result.stdout):
        words = {w for line in head for w in line.split()}
        assert {"data", "device", "params", "MIG"} <= words and words <= TITLE_WORDS


def test_an_empty_results_root_says_how_to_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "results").mkdir()
    result = cli_here(capsys, "leaderboard", "--root", "results", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no finished runs under results/runs yet" in result.stdout
    assert "hvbench sweep configs/sweeps/smoke.yaml" in result.stdout
    result = cli_here(capsys, "report", "--root", "results", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no finished runs under results/runs yet" in result.stdout


def test_the_sweep_ends_with_its_board_and_where_its_runs_went(smoke_sweep: Path) -> None:
    out = (smoke_sweep.parent / "sweep.out").read_text()
    assert out.count("hvbench run toy-corr/") == 4  # each run's start line: device, processes
    assert "1 process, fp32" in out
    assert out.count("  test: ELBO ") == 4 and out.count("upload it with: wandb sync") == 4
    board = out[re.search(r"^ +sweep smoke *$", out, re.MULTILINE).start() :]
    assert "ELBO" in board and "vae" in board and "lvae" in board
    assert "world size 1" in board
    (sync,) = [line for line in board.splitlines() if "upload them with: wandb sync" in line]
    assert sync.count("offline-run-") == 4


def test_the_wandb_report_dry_run_names_runs_that_logged_to_wandb(smoke_sweep: Path) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        main(["wandb-report", "--project", "hvbench", "--sweep", "smoke", "--root",
              str(smoke_sweep), "--dry-run"])  # fmt: skip
    text = out.getvalue()
    for run_dir in sorted(smoke_sweep.glob("runs/toy-corr/*/*")):
        wandb_id = (run_dir / "wandb-id").read_text().strip()
        assert f"{run_dir.parent.name}/{run_dir.name} (seed {run_dir.name[-1]}): W&B id {wandb_id}" in text
    assert "never logged" not in text and "upload the offline runs first: wandb sync" in text
    assert "MediaBrowser" in text and "figures/samples" in text and "RunComparer" in text
    assert "runs table: summary:test/elbo_nats" in text
    assert "test/conditional_collapse_rate" in text and "test/kl_collapse_rate" in text


def test_the_report_marks_the_best_explains_nans_and_reaches_every_seed(smoke_sweep: Path) -> None:
    page = report.build(smoke_sweep, smoke_sweep / "pages" / "report.html")
    text = page.read_text()
    assert text.count("★") == 2  # the best row's model, and the note saying what ★ means
    assert "<div class='scroll'><table>" in text and "white-space: nowrap" in text
    assert "What the columns mean" in text and "Burda et al. 2015" in text  # the metric table
    assert "Every run" in text and "smoke-s1" in text
    assert "NaN: no active unit" in text or "no active unit" not in text
    for measure in ("collapse_rate: 1 − Burda", "conditional_collapse_rate", "kl_collapse_rate"):
        assert measure in text
    links = re.findall(r"<a href='([^']+)'>", text)
    for seed in ("smoke-s0", "smoke-s1"):
        assert any(f"/{seed}/figures/samples.png" in link for link in links), seed
    assert all((page.parent / unquote(link)).is_file() for link in links)


def test_every_figure_of_a_run_stays_small(smoke_sweep: Path) -> None:
    pictures = list(smoke_sweep.glob("runs/*/*/*/figures/*.png"))
    assert len(pictures) >= 20
    assert max(p.stat().st_size for p in pictures) <= 150_000


def test_version_list_and_print_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and re.fullmatch(r"hvbench \d+\.\d+\.\d+\n", out.getvalue())
    out = io.StringIO()
    with redirect_stdout(out):
        main(["list", "vae"])
        main(["list", "configs"])
        main(["list", "train"])
    text = out.getvalue()
    assert "latent_dim" in text and "smoke/toy-vae" in text and "precision" in text
    out = io.StringIO()
    with redirect_stdout(out):
        main(["run", "--task", "toy-corr", "--model", "vae", "--print-config", "--set",
              "train.steps=7", "--name", "a: b", "--tags", "x,y"])  # fmt: skip
    text = out.getvalue()
    assert "steps: 7" in text and "name: 'a: b'" in text and "- x" in text
    assert not (tmp_path / "results").exists()  # nothing run


def test_help_shows_defaults_and_bad_names_are_one_line(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "(default: 5)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["list", "vea"])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "no task, model or config section named 'vea'" in line


def test_a_launcher_that_asked_for_more_processes_is_named() -> None:
    accelerate_cpu = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"}
    assert "asked for several processes but this run has 1" in launcher_warning(1, accelerate_cpu)
    assert "asked for 4 processes but this run has 2" in launcher_warning(2, {"WORLD_SIZE": "4"})
    assert launcher_warning(2, {"WORLD_SIZE": "2"}) is None
    assert launcher_warning(1, {"ACCELERATE_USE_CPU": "True"}) is None  # asked for one
    assert launcher_warning(1, {}) is None
