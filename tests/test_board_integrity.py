"""A board that cannot be fooled (issue 18): a NaN or infinite ELBO is shown but never ranked, a
record that disagrees with its folder or repeats another is skipped with one warning naming
both, a re-evaluation is grouped and labelled by the eval settings it was computed with,
records cannot inject Markdown or HTML, and 200 random mutations of config, sweep and
metrics files never give a traceback or a ranked row that is non-finite or mislabelled.

Two real smoke runs (in this process, seconds) give the records; every other run folder is a
copy of one of them with its metrics.json edited the way a hand, a script or `cp -a` would.
"""

from __future__ import annotations

import json
import math
import random
import secrets
import shutil
import string
from pathlib import Path
from typing import Any

import pytest
import yaml

from hvbench import aggregate
from hvbench.cli import main
from hvbench.config import resolve
from hvbench.errors import UserError
from hvbench.leaderboard import build, print_sweep
from tests.conftest import CONFIGS, in_process

SMOKE = str(CONFIGS / "smoke" / "toy-vae.yaml")
SWEEP = CONFIGS / "sweeps" / "smoke.yaml"
RECORD_FILES = ("config.yaml", "status.json", "metrics.json")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two finished smoke runs (seeds 0 and 1, one configuration): results/runs/toy-corr/vae/."""
    root = tmp_path_factory.mktemp("board") / "results"
    for seed in (0, 1):
        sets = [f"output.root={root}", f"output.run_id=s{seed}", f"train.seed={seed}"]
        sets += ["output.figures=false", "train.steps=10", "train.eval_every=10"]
        in_process("run", "--config", SMOKE, *[a for s in sets for a in ("--set", s)])
    return root / "runs" / "toy-corr" / "vae"


def place(
    source: Path, root: Path, where: str, edit: dict[str, Any] | None = None, copy: bool = False
) -> Path:
    """A run folder `root/runs/<where>` holding `source`'s records, metrics.json edited: another
    run's record (its own record id), or with `copy` a copied folder's (the same id)."""
    folder = root / "runs" / where
    folder.mkdir(parents=True)
    for name in RECORD_FILES:
        shutil.copy2(source / name, folder / name)
    if not copy:
        edit = {"record_id": secrets.token_hex(8), **(edit or {})}
    if edit is not None:
        record = json.loads((folder / "metrics.json").read_text())
        for key, value in edit.items():
            target = record
            *parents, last = key.split("/", 1) if key.startswith("metrics/") else [key]
            for parent in parents:
                target = target[parent]
            target[last] = value
        (folder / "metrics.json").write_text(json.dumps(record))
    return folder


def warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("hvbench: warning:")]


def test_a_non_finite_elbo_is_shown_never_ranked(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "results"
    place(runs / "s0", root, "toy-corr/vae/good", {"run_id": "good"})
    for name, value in (("inf", math.inf), ("nan", math.nan), ("huge", 1e308)):
        folder = place(runs / "s1", root, f"toy-corr/vae/{name}", {"run_id": name})
        record = json.loads((folder / "metrics.json").read_text())
        record["metrics"]["test/elbo_nats"] = value
        (folder / "metrics.json").write_text(json.dumps(record))  # Infinity, NaN as JSON allows
        config = yaml.safe_load((folder / "config.yaml").read_text())
        config["train"]["lr"] = {"inf": 0.5, "nan": 0.25, "huge": 0.125}[name]  # its own row
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    main_rows, _, seeds = build(root)
    err = capsys.readouterr().err
    assert [r["run_id"] for r in main_rows][:2] == ["huge", "good"]  # finite ones first
    assert {r["run_id"] for r in main_rows[2:]} == {"inf", "nan"}
    assert [aggregate.ranked_value(r["elbo_nats"]) is not None for r in seeds] == [
        True, True, False, False
    ]
    assert len(warnings(err)) == 2 and all("shown, not ranked" in w for w in warnings(err))
    markdown = (root / "leaderboard.md").read_text()
    assert "| inf (not ranked) |" in markdown and "| nan (not ranked) |" in markdown


def test_a_seed_that_is_not_finite_makes_its_mean_unranked(runs: Path, tmp_path: Path) -> None:
    root = tmp_path / "results"
    place(runs / "s0", root, "toy-corr/vae/s0")
    place(runs / "s1", root, "toy-corr/vae/s1", {"metrics/test/elbo_nats": math.inf})
    _, _, (row,) = build(root)
    assert row["n"] == 2 and aggregate.ranked_value(row["elbo_nats"]) is None
    assert "not ranked" in (root / "leaderboard.md").read_text().split("## Runs")[0]


def test_a_record_that_disagrees_with_its_folder_or_repeats_another_is_skipped(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "results"
    place(runs / "s0", root, "toy-corr/vae/s0", copy=True)
    place(runs / "s0", root, "toy-uncorr/vae/s0", copy=True)  # another task's board
    place(runs / "s0", root, "toy-corr/vae/s0-copy", copy=True)  # cp -a: the run id inside is s0
    place(runs / "s0", root, "toy-corr/vae/s0-again", {"run_id": "s0-again"}, copy=True)  # edited
    # cp -a, then the run id and a number edited to pass for another run: the record id stays
    edited = {"run_id": "s0-forged", "metrics/test/elbo_nats": -1.0}
    place(runs / "s0", root, "toy-corr/vae/s0-forged", edited, copy=True)
    capsys.readouterr()
    main_rows, _, seeds = build(root)
    lines = warnings(capsys.readouterr().err)
    assert [(r["task"], r["run_id"]) for r in main_rows] == [("toy-corr", "s0")]
    assert [(r["task"], r["n"]) for r in seeds] == [("toy-corr", 1)]
    assert len(lines) == 4, lines
    moved = [line for line in lines if "lies in" in line]
    assert len(moved) == 2 and all("toy-corr/vae/s0 but lies in" in line for line in moved)
    assert any("toy-uncorr/vae/s0" in line for line in moved)
    copied = [line for line in lines if "the same record as" in line]
    assert [("s0-again" in line, "s0-forged" in line) for line in copied] == [(1, 0), (0, 1)]
    assert all(str(root / "runs/toy-corr/vae/s0/metrics.json") in line for line in copied)


def test_the_end_of_sweep_board_passes_the_same_gate(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hvbench sweep`'s closing board reads its own run folders through the board's checks."""
    root = tmp_path / "results"
    folders = [
        place(runs / "s0", root, "toy-corr/vae/s0", copy=True),
        place(runs / "s0", root, "toy-corr/vae/s0-again", {"run_id": "s0-again"}, copy=True),
        place(runs / "s1", root, "toy-corr/vae/s1", {"metrics/test/elbo_nats": math.inf}),
    ]
    capsys.readouterr()
    print_sweep(root, folders, "sweep t")
    out, err = capsys.readouterr()
    lines = warnings(err)
    assert len(lines) == 2 and "the same record as" in lines[0] and "ELBO is inf" in lines[1]
    (row,) = [line.split() for line in out.splitlines() if line.startswith(" toy-corr")]
    assert row[2:4] == ["2", "inf"] and not any("*" in cell for cell in row)  # s0 once, unranked


def test_report_after_a_run_folder_was_renamed(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "results"
    place(runs / "s0", root, "toy-corr/vae/renamed")
    capsys.readouterr()
    main(["report", "--root", str(root)])
    err = capsys.readouterr().err
    assert (root / "report.html").is_file()
    (line,) = warnings(err)
    assert "toy-corr/vae/s0 but lies in" in line and "renamed" in line


def test_a_reevaluation_is_grouped_and_labelled_by_its_eval_settings(
    runs: Path, tmp_path: Path
) -> None:
    root = tmp_path / "results"
    shutil.copytree(runs.parent.parent.parent, root)
    run_dir = root / "runs" / "toy-corr" / "vae" / "s1"
    in_process("eval", str(run_dir), "--set", "eval.au_samples=4")
    record = json.loads((run_dir / "metrics.v2.json").read_text())
    assert record["run"]["eval"]["au_samples"] == 4  # config.yaml still says 2
    _, _, seeds = build(root)
    assert sorted((r["n"], r["runs"][0]) for r in seeds) == [(1, "s0"), (1, "s1")]
    reevaluated = next(r for r in seeds if r["runs"] == ["s1"])
    legend = (root / "leaderboard.md").read_text().split("## Over seeds")[0]
    # only the setting that differs, each value with the config hashes computed with it
    assert "Runs differ in eval.au_samples;" in legend
    assert f"eval.au_samples=4: {reevaluated['config']}" in legend.replace("'", "")


def test_markdown_and_html_in_a_record_stay_text(runs: Path, tmp_path: Path) -> None:
    root = tmp_path / "results"
    hostile = "a|b <img src=x onerror=alert(1)>\nnext"
    info = json.loads((runs / "s0" / "metrics.json").read_text())["run"]
    place(runs / "s0", root, "toy-corr/vae/s0", {"run": {**info, "data_source": hostile}})
    build(root)
    markdown = (root / "leaderboard.md").read_text()
    assert "<img" not in markdown and "&lt;img src=x onerror=alert(1)&gt; next" in markdown
    header, _, row = markdown.split("## Runs")[1].strip().splitlines()[:3]
    assert row.replace("\\|", "").count("|") == header.count("|")


# ---- the fuzz test ----------------------------------------------------------------------

HOSTILE = [
    "1e300", "-1", "0", ".nan", ".inf", "NaN", "Infinity", "null", "[]", "{}", "''", "~",
    "9" * 5000, "*a", "&a x", "!!python/object:os.system", "{0}", "{task.__class__}", "{",
    "x" * 100_000, "\u202e\u0000", "yes", "no", "- - -", "? [a, b]\n: c", "<script>", "a|b",
    "1000000000000", "-0.0", "1e-400", "[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]", "a\nb",
]
HOSTILE_JSON = [
    math.nan, math.inf, -math.inf, 1e308, -1e308, 10**400, None, True, "x" * 100_000, [], {},
    "toy-uncorr", "../../etc", "a|b<b>", [[[[[[[[[[[]]]]]]]]]]], {"nested": {"deep": [1]}}, -0.0,
]


def mutate_text(text: str, rng: random.Random) -> str:
    """A text edit a hand or a hostile user could make: cut, repeat, inject or replace."""
    lines = text.splitlines()
    kind = rng.randrange(5)
    if kind == 0 and lines:  # a line repeated (duplicate keys) or cut
        i = rng.randrange(len(lines))
        lines[i : i + 1] = [] if rng.random() < 0.5 else [lines[i], lines[i]]
    elif kind == 1 and lines:  # a value replaced by something hostile
        i = rng.randrange(len(lines))
        key, sep, _ = lines[i].partition(":")
        lines[i] = f"{key}{sep or ':'} {rng.choice(HOSTILE)}"
    elif kind == 2:  # random punctuation somewhere
        at = rng.randrange(len(text) + 1)
        noise = "".join(rng.choice(string.punctuation + " \n\t") for _ in range(rng.randint(1, 8)))
        return text[:at] + noise + text[at:]
    elif kind == 3:  # a cut in the middle (a truncated file)
        return text[: rng.randrange(len(text) + 1)]
    else:  # an alias bomb appended
        bomb = "bomb: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"b{i}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
        )
        return text + "\n" + bomb
    return "\n".join(lines) + "\n"


def mutate_record(record: dict[str, Any], rng: random.Random) -> Any:
    """A metrics.json edit: a value anywhere replaced, a key dropped, or the text cut."""
    record = json.loads(json.dumps(record))
    paths: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            paths.append((node, k))
            if isinstance(v, (dict, list)):
                walk(v)

    walk(record)
    node, k = rng.choice(paths)
    if rng.random() < 0.2 and isinstance(node, dict):
        del node[k]
    else:
        node[k] = rng.choice(HOSTILE_JSON)
    return record


def assert_board_is_sound(root: Path) -> None:
    """Rows with a finite ELBO first (best first), and every row the record of its own folder."""
    main_rows, _, seeds = build(root)
    for table in (main_rows, seeds):
        values = [aggregate.ranked_value(r["elbo_nats"]) for r in table]
        ranked = [v for v in values if v is not None]
        assert values[: len(ranked)] == ranked and ranked == sorted(ranked, reverse=True)
    for row in main_rows:
        record = json.loads(
            next(iter(sorted((root / "runs" / row["task"] / row["model"] / row["run_id"]).glob(
                "metrics*.json"
            )))).read_text()
        )
        assert (record["task"], record["model"], record["run_id"]) == (
            row["task"], row["model"], row["run_id"]
        )


def test_200_random_mutations_never_give_a_traceback_or_a_false_row(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(18)
    config_text = Path(SMOKE).read_text()
    sweep_text = SWEEP.read_text()
    record = json.loads((runs / "s1" / "metrics.json").read_text())
    for i in range(200):
        case = tmp_path / f"case{i}"
        case.mkdir()
        kind = i % 3
        try:
            if kind == 0:
                path = case / "config.yaml"
                path.write_text(mutate_text(config_text, rng))
                try:
                    resolve(config_file=path)
                except UserError as err:
                    assert "\n" not in str(err) and len(str(err)) < 1000
            elif kind == 1:
                path = case / "sweep.yaml"
                path.write_text(mutate_text(sweep_text, rng))
                try:
                    main(["sweep", str(path), "--dry-run", "--out", str(case / "results")])
                except SystemExit as stop:
                    assert stop.code == 2
            else:
                root = case / "results"
                place(runs / "s0", root, "toy-corr/vae/s0")
                folder = place(runs / "s1", root, "toy-corr/vae/s1")
                text = json.dumps(mutate_record(record, rng))
                if rng.random() < 0.1:
                    text = text[: rng.randrange(len(text))]
                (folder / "metrics.json").write_text(text)
                if i % 5 == 2:  # the command as a whole (terminal tables too), now and then
                    main(["leaderboard", "--root", str(root)])
                assert_board_is_sound(root)
        except BaseException as err:
            raise AssertionError(f"mutation {i} ({case}): {type(err).__name__}: {err}") from err
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err and "internal error" not in err, (i, err[-2000:])
        assert all(len(line) < 2000 for line in err.splitlines()), i
