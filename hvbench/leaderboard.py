"""The leaderboard: rebuilt from every `metrics.json` on disk, never typed by hand.

Rows carry their estimator, split and data source (docs/design.md §6.7), so
unlike numbers are never silently compared: a generated dSprites grid is shown
as such, and bits/dim only appear where the data are discrete.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from hvbench import aggregate, published
from hvbench.aggregate import Spread
from hvbench.atomic import write_text
from hvbench.config import PRECISION_NAMES, EvalConfig
from hvbench.errors import UserError, shown
from hvbench.metric_table import BY_NAME, definition, key, title
from hvbench.results import (
    MalformedRecord,
    folder_of,
    load_metrics,
    metrics_versions,
    read_status,
    run_status,
    runs_dir,
    with_folder,
)

# columns that show a metric of the table under a name of their own
METRIC_OF = {
    "nll_per_dim": "elbo_nll_bpd",  # bits/dim or nats/dim: both lower is better
    "reference_iwae_bpd": "iwae_nll_bpd",
    "eval_images_per_s": "<split>_eval_images_per_s",
}


def header(column: str, label: str) -> str:
    """A column's title: `label` with the metric table's arrow when the column is a metric."""
    name = METRIC_OF.get(column, column)
    return title(name, label) if name in BY_NAME else label


COLUMNS = tuple(
    (column, header(column, label))
    for column, label in (
        ("task", "task"),
        ("model", "model"),
        ("run_id", "run"),
        ("seed", "seed"),
        ("split", "split"),
        ("eval", "re-evaluated with"),
        ("elbo_nats", "ELBO (nats)"),
        ("examples", "n"),
        ("nll_per_dim", "−ELBO per dim"),
        ("iwae_nats", "IWAE-k (nats)"),
        ("iwae_elbo_nats", "ELBO, IWAE set"),
        ("iwae_k", "k"),
        ("iwae_examples", "n IWAE"),
        ("reference_iwae_bpd", "−IWAE bpd, published split"),
        ("reference", "published split, k, n"),
        ("active_units", "active/units"),
        ("uncertain_units", "uncertain"),
        ("conditional_active_units", "cond. active/units"),
        ("collapse_rate", "collapse"),
        ("kl_collapse_rate", "KL-collapse"),
        ("mig", "MIG"),
        ("dci_lasso_disentanglement", "DCI-lasso D"),
        ("train_images_per_s", "train img/s"),
        ("eval_images_per_s", "eval img/s"),
        ("parameters", "params"),
        ("device", "device"),
        ("precision", "precision"),
        ("steps", "steps"),
        ("data_source", "data source"),
    )
)
SEED_COLUMNS = aggregate.columns(COLUMNS)
# The terminal tables: their own short titles (every word of a title stays whole on screen).
# The compact board always shows these; leaderboard.md and the CSVs hold every column.
COMPACT = (
    "task",
    "model",
    "run_id",
    "seed",
    "n",
    "elbo_nats",
    "iwae_nats",
    "conditional_active_units",
    "kl_collapse_rate",
    "train_images_per_s",
)
# columns that split the rows of one configuration: shown whenever they differ within a task
SPLITTING = ("config", "split", "iwae_k", "eval")
# what a narrow terminal hides first (after the extra columns), splitting columns last
DROP_ORDER = ("train_images_per_s", "kl_collapse_rate", "iwae_nats", "seed", "n")
# what a wider terminal shows next, in this order, while it fits
EXTRA = (
    "nll_per_dim",
    "active_units",
    "collapse_rate",
    "mig",
    "dci_lasso_disentanglement",
    "uncertain_units",
    "reference_iwae_bpd",
    "iwae_elbo_nats",
    "precision",
    "parameters",
    "eval_images_per_s",
    "steps",
    "device",
)
SHORT_TITLES = {
    column: header(column, label)
    for column, label in {
        "run_id": "run",
        "eval": "re-eval",
        "elbo_nats": "ELBO",
        "examples": "n ex.",
        "nll_per_dim": "−ELBO/dim",
        "iwae_nats": "IWAE",
        "iwae_elbo_nats": "ELBO on IWAE set",
        "iwae_k": "k",
        "reference_iwae_bpd": "−IWAE bpd",
        "reference": "published split",
        "conditional_active_units": "cond. active",
        "kl_collapse_rate": "KL collapse",
        "train_images_per_s": "img/s",
        "eval_images_per_s": "eval img/s",
        "dci_lasso_disentanglement": "DCI D",
        "data_source": "data",
    }.items()
}
TEXT_COLUMNS = ("task", "model", "run_id", "config", "split", "eval", "device", "precision")
BEST = "*"  # appended to the model of the best measured row of a task
GROUP_COLUMNS = (
    "task",
    "model",
    "run_id",
    "split",
    "group",
    "term",
    "units",
    "active_units",
    "uncertain_units",
    "conditional_active_units",
    "collapse_rate",
    "kl_collapse_rate",
    "kl_nats",
    "rate_nats",
    "kl_share",
)


def run_dirs(root: Path) -> list[Path]:
    """Every run folder under `root`/runs; a missing root is a UserError, never created."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"results root {root} is not a folder (no runs there); give --root RESULTS")
    return sorted(p for p in runs_dir(root).glob("*/*/*") if p.is_dir())


def load_runs(root: Path) -> list[dict[str, Any]]:
    """The latest metrics record of every finished run under `root`: the ranked ones."""
    return load_finished(run_dirs(root))


def load_finished(folders: list[Path]) -> list[dict[str, Any]]:
    """The latest metrics record of each finished run among `folders`, every reader's one gate
    (the board, the end-of-sweep board, the report, the W&B report). A record that cannot
    be read or shown is skipped with one warning line naming the file; so is one that names
    another folder than its own (a renamed or copied run folder: the board and the report find
    a run's files by its record) or repeats a record already loaded (its record id, or its
    numbers under another run id: a copy, counted once)."""
    runs = []
    seen: dict[str, Path] = {}
    for run_dir in folders:
        if run_status(run_dir) != "finished":
            continue
        try:
            run = load_metrics(run_dir)
            rows([run])  # a record the tables cannot show is no result either
            group_rows([run])
        except MalformedRecord as err:
            _warn(str(err))
            continue
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            _warn(f"{metrics_versions(run_dir)[-1]}: cannot be shown ({type(err).__name__}: {shown(str(err))})")
            continue
        path = metrics_versions(run_dir)[-1]
        claimed = "/".join(shown(run[k]).strip("'") for k in ("task", "model", "run_id"))
        if (run["task"], run["model"], run["run_id"]) != run_dir.parts[-3:]:
            _warn(f"{path}: it is the record of run {claimed} but lies in {run_dir} (renamed or copied?)")
            continue
        # a copy: the same record id (written once per record), or the same record but its id
        identity = json.dumps({**run, "run_id": None}, sort_keys=True, default=str)
        record_id = run.get("record_id")
        copied = seen.get(identity) or (seen.get(record_id) if isinstance(record_id, str) else None)
        if copied is not None:
            _warn(f"{path}: the same record as {copied} (a copied run folder)")
            continue
        seen[identity] = path
        if isinstance(record_id, str):
            seen[record_id] = path
        elbo = run["metrics"].get(key("elbo_nats", _report_split(run)))
        if isinstance(elbo, float) and not math.isfinite(elbo):
            print(f"hvbench: warning: {path}: its ELBO is {elbo}: shown, not ranked", file=sys.stderr)
        runs.append(with_folder(run, run_dir))
    return runs


def unranked_runs(root: Path) -> list[dict[str, Any]]:
    """The status of every run that is not ranked: running, failed, interrupted or unknown."""
    out = []
    for run_dir in run_dirs(root):
        status = read_status(run_dir)
        if status["status"] != "finished":
            task, model, run_id = run_dir.parts[-3:]
            out.append({"task": task, "model": model, "run_id": run_id, **status})
    return out


def print_unranked(runs: list[dict[str, Any]], console: Console | None = None) -> None:
    """The runs that are not ranked, each named whole (a run id split over lines cannot be
    copied or searched for); only the reason wraps, and a console too narrow for the names
    grows to fit them, as the board does."""
    table = Table(title=f"not ranked ({len(runs)} runs)")
    for name in ("task", "model", "run", "status", "step"):
        table.add_column(name, no_wrap=True)
    table.add_column("reason", overflow="fold")
    for r in runs:
        step = "—" if r.get("step") is None else f"{r['step']}/{r.get('steps', '?')}"
        row = (r["task"], r["model"], r["run_id"], r["status"], step, str(r.get("reason") or ""))
        table.add_row(*row)
    console = console or Console()
    needed = console.measure(table).minimum
    if needed > console.width:
        console = Console(width=needed, file=console.file)
    console.print(table)


def print_sweep(root: Path, folders: list[Path], title: str) -> None:
    """The end of a sweep: its finished runs over seeds (the compact board), where they are,
    and the command that uploads the ones W&B logged offline."""
    runs = load_finished(folders)
    console = Console()
    if runs:
        print_table(seed_rows(runs), console, SEED_COLUMNS, title)
        worlds = sorted({str(r["run"].get("world_size")) for r in runs})
        console.print(
            f"world size {', '.join(worlds)}; runs in {Path(root) / 'runs'}; every run: "
            f"hvbench leaderboard --root {root}",
            highlight=False,
            soft_wrap=True,
        )
    offline = [str(p) for d in folders for p in sorted(Path(d).glob("wandb/offline-run-*"))]
    if offline:
        console.print(
            f"W&B: {len(offline)} offline runs; upload them with: wandb sync {' '.join(offline)}",
            highlight=False,
            soft_wrap=True,
        )


def _warn(message: str) -> None:
    print(f"hvbench: warning: skipping {message}", file=sys.stderr)


def _report_split(run: dict[str, Any]) -> str:
    """The split a run is ranked on: the last evaluation split (test unless the task says)."""
    return run["run"]["eval_splits"][-1]


def _reference(m: dict[str, Any], info: dict[str, Any]) -> tuple[float | None, str | None]:
    """−IWAE bits/dim on the split published numbers use (CelebA-64: valid), with k and n."""
    split = info.get("reference_split")
    value = m.get(key("iwae_nll_bpd", split)) if split else None
    if value is None:
        return None, None
    return value, f"{split}, k={m.get(key('iwae_k', split))}, n={m.get(key('iwae_examples', split))}"


def rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run, best ELBO first within a task; a missing or non-finite ELBO last."""
    out = [_run_row(run) for run in runs]
    return sorted(out, key=lambda r: (r["task"], -aggregate.rank_value(r["elbo_nats"])))


def _run_row(run: dict[str, Any]) -> dict[str, Any]:
    """One run's leaderboard row, every value read through the metric table's keys."""
    m, info, split = run["metrics"], run["run"], _report_split(run)

    def get(name: str) -> Any:
        return m.get(key(name, split))

    per_dim, unit = get("elbo_nll_bpd"), "bpd"
    if per_dim is None:
        per_dim, unit = get("elbo_nll_nats_per_dim"), "nats/dim"
    reference_bpd, reference = _reference(m, info)
    units = get("units")
    return {
        "task": run["task"],
        "model": run["model"],
        "run_id": run["run_id"],
        "seed": info.get("seed"),
        "split": split,
        "eval": _reevaluated_with(run),
        "elbo_nats": get("elbo_nats"),
        "examples": get("examples"),
        "nll_per_dim": per_dim,
        "nll_unit": unit,
        "iwae_nats": get("iwae_nats"),
        "iwae_elbo_nats": get("iwae_elbo_nats"),
        "iwae_k": get("iwae_k"),
        "iwae_examples": get("iwae_examples"),
        "reference_iwae_bpd": reference_bpd,
        "reference": reference,
        "active_units": f"{get('active_units')}/{units}",
        "uncertain_units": get("uncertain_units"),
        "conditional_active_units": f"{get('conditional_active_units')}/{units}",
        "collapse_rate": get("collapse_rate"),
        "kl_collapse_rate": get("kl_collapse_rate"),
        "mig": get("mig"),
        "dci_lasso_disentanglement": get("dci_lasso_disentanglement"),
        "train_images_per_s": m.get(key("train_images_per_s")),
        "eval_images_per_s": m.get(key("<split>_eval_images_per_s", split)),
        "parameters": m.get(key("parameters")),
        "device": f"{info['device']} ×{info['world_size']}",
        "precision": PRECISION_NAMES.get(info["precision"], info["precision"]),
        "steps": info["steps"],
        "data_source": info["data_source"],
    }


def _reevaluated_with(run: dict[str, Any]) -> str | None:
    """The eval settings a re-evaluation changed (`iwae_k=5000`), None for the run's own
    evaluation: seeds evaluated differently are never averaged into one row."""
    overrides = (run.get("reevaluation") or {}).get("overrides") or []
    return ", ".join(str(o).removeprefix("eval.") for o in overrides) or None


def group_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per latent group; `term` says whether its KL is analytic or a rate term, and a
    rate term's KL-collapse is n/a (no KL to compare with the threshold). A record with
    `group_summaries` (VDVAE's dozens of groups) gets one row per summary instead (a
    resolution's groups pooled); metrics.json keeps every group's numbers."""
    out = []
    for run in runs:
        split = _report_split(run)
        m = run["metrics"]
        units = run["units"].get(split, {})
        summaries = dict(run.get("group_summaries") or [(g, [g]) for g in units])
        for group, members in summaries.items():
            analytic = all(units[g].get("analytic", True) for g in members)
            row = {k: m.get(key(k, split, group)) for k in GROUP_COLUMNS[6:]}
            if not analytic:
                row["kl_collapse_rate"] = "n/a (rate term)"
            out.append(
                {
                    "task": run["task"],
                    "model": run["model"],
                    "run_id": run["run_id"],
                    "split": split,
                    "group": group,
                    "term": "KL" if analytic else "rate",
                    **row,
                }
            )
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, Spread):
        return f"{_fmt(value.mean)} ± {_fmt(value.std)}"
    if isinstance(value, list):
        return " ".join(map(str, value))
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value:,}"
    return str(value)


def _markdown(header: list[str], table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(_md_cell, cells)) + " |" for cells in table]
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    """A table cell as Markdown text: a record's `|` would split the row and its HTML would
    render (a data source or run id is whatever a metrics.json says)."""
    text = html.escape(" ".join(text.split()), quote=False)
    return text.replace("|", "\\|")


def _csv(fieldnames: list[str], records: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


LEGEND = (
    ("ELBO", "elbo_nats"),
    ("IWAE-k", "iwae_nats"),
    ("ELBO, IWAE set", "iwae_elbo_nats"),
    ("−IWAE bpd (published split)", "iwae_nll_bpd"),
    ("active", "active_units"),
    ("uncertain", "uncertain_units"),
    ("cond. active", "conditional_active_units"),
    ("KL-collapse", "kl_collapse_rate"),
    ("MIG", "mig"),
    ("DCI-lasso D", "dci_lasso_disentanglement"),
)


def _legend(configs: dict[tuple[str, str, str], dict[str, Any] | None]) -> list[str]:
    """What the columns mean, from the metric table, with the eval settings the runs' numbers
    were computed with (a re-evaluation's, not config.yaml's); where configs differ in them,
    each config hash is listed with its settings."""
    by_config: dict[str, dict[str, Any]] = {}
    for config in configs.values():
        section = (config or {}).get("eval")
        settings = {**asdict(EvalConfig()), **(section if isinstance(section, dict) else {})}
        name = aggregate.config_hash(config) if config is not None else "(no config.yaml)"
        by_config.setdefault(name, settings)
    unique = [dict(t) for t in dict.fromkeys(tuple(sorted(e.items())) for e in by_config.values())]
    first = (unique or [asdict(EvalConfig())])[0]
    lines = [f"- **{title}**: {definition(name, first)}" for title, name in LEGEND]
    if len(unique) > 1:
        keys = sorted(set().union(*unique))
        differing = [k for k in keys if len({shown(u.get(k)) for u in unique}) > 1]
        lines.append(
            f"- Runs differ in {', '.join(f'eval.{k}' for k in differing)}; the values above are "
            "the first's. By value, the config hashes computed with it:"
        )
        for settings in unique:
            names = [name for name, s in by_config.items() if s == settings]
            values = ", ".join(f"eval.{k}={shown(settings.get(k))}" for k in differing)
            lines.append(f"  - {values}: {', '.join(names)}")
    return ["−ELBO per dim is bits/dim for 8-bit data under a discrete likelihood, nats/dim otherwise.", *lines]


def _evaluated_configs(
    runs: list[dict[str, Any]],
) -> dict[tuple[str, str, str], dict[str, Any] | None]:
    """Each loaded run's config as its latest numbers were computed
    (aggregate.evaluated_config), read from the folder the run was loaded from."""
    return {
        (r["task"], r["model"], r["run_id"]): aggregate.evaluated_config(folder_of(r), r)
        for r in runs
    }


def seed_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The board over seeds of loaded runs (`load_runs`): one row per task, model and config as
    evaluated, so a seed re-evaluated with other eval settings is never averaged with the others
    (hvbench.aggregate)."""
    return aggregate.over_seeds(rows(runs), _evaluated_configs(runs))


def cells(r: dict[str, Any], columns: tuple[tuple[str, str], ...]) -> list[str]:
    """A row's values as shown, −ELBO per dim with its unit, an ELBO that is NaN or infinite
    marked as not ranked."""
    unranked = r.get("elbo_nats") is not None and aggregate.ranked_value(r["elbo_nats"]) is None
    return [
        _fmt(r.get(key))
        + (f" {r['nll_unit']}" if key == "nll_per_dim" and r.get(key) is not None else "")
        + (" (not ranked)" if key == "elbo_nats" and unranked else "")
        for key, _ in columns
    ]


def _seeds_markdown(seeds: list[dict[str, Any]]) -> list[str]:
    cards = published.load()
    header = [title for _, title in SEED_COLUMNS]
    out = [
        "## Over seeds",
        "",
        "One row per task, model and config (a hash of config.yaml without the seed, output and",
        "W&B keys): mean ± sample standard deviation (n − 1) over its n runs; a value equal in",
        "every run is shown once. Every run is listed under Runs.",
        "",
        _markdown(header, [cells(r, SEED_COLUMNS) for r in seeds]),
        "",
    ]
    if cards:
        out += [
            "## Published (*published*: other code, budgets and estimators; not ranked)",
            "",
            _markdown(
                ["task", "model", "value", "estimator", "split", "source"],
                [
                    [c["task"], f"*{c['model']}* (published)", f"{c['value']} {c['unit']}"]
                    + [str(c[k]) for k in ("estimator", "split", "source")]
                    for c in cards
                ],
            ),
            "",
        ]
    return out


def build(
    root: Path,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Rebuild `leaderboard.md`, `leaderboard.csv`, `leaderboard_seeds.csv` and
    `leaderboard_groups.csv` under `root`; returns the per-run, group and over-seeds rows."""
    if Path(root).is_dir() and not os.access(root, os.W_OK | os.X_OK):
        raise UserError(f"cannot write the leaderboard into {root}: no write permission")
    runs = load_runs(root)
    main, groups = rows(runs), group_rows(runs)
    configs = _evaluated_configs(runs)
    seeds = aggregate.over_seeds(main, configs)
    header = [title for _, title in COLUMNS]
    md = [
        "# hvbench leaderboard",
        "",
        "Rebuilt by `hvbench leaderboard` from every `results/runs/*/*/*/metrics.json`.",
        "",
        *_legend(configs),
        "",
        *_seeds_markdown(seeds),
        "## Runs",
        "",
        _markdown(
            header,
            [cells(r, COLUMNS) for r in main],
        ),
        "",
        "## Latent groups",
        "",
        _markdown(list(GROUP_COLUMNS), [[_fmt(g[c]) for c in GROUP_COLUMNS] for g in groups]),
        "",
    ]
    write_text(Path(root) / "leaderboard.md", "\n".join(md))
    write_text(
        Path(root) / "leaderboard.csv", _csv([key for key, _ in COLUMNS] + ["nll_unit"], main)
    )
    write_text(Path(root) / "leaderboard_groups.csv", _csv(list(GROUP_COLUMNS), groups))
    flat = aggregate.flat(seeds)
    fields = list(dict.fromkeys(k for r in flat for k in r))
    write_text(Path(root) / "leaderboard_seeds.csv", _csv(fields, flat))
    return main, groups, seeds


def print_table(
    rows_: list[dict[str, Any]],
    console: Console | None = None,
    columns: tuple[tuple[str, str], ...] = COLUMNS,
    title: str = "hvbench leaderboard",
    wide: bool = False,
) -> None:
    """A board on the terminal: the compact columns, then as many more as the console's width
    holds (`wide`: every column, as wide as it takes). Numbers never wrap and no title word is
    split; a hidden column is named under the table, and the best row of each task marked."""
    console = console or Console()
    available = [k for k, _ in columns]
    keys = [k for k in available if k in COMPACT]
    keys += [k for k in SPLITTING if k in available and _differs(rows_, k)]
    extra = [k for k in available if k not in keys and (wide or k in EXTRA)]
    if not wide:
        extra.sort(key=EXTRA.index)
    best = _best(rows_)
    titles = dict(columns)
    for k in extra:
        if wide or _width(rows_, [*keys, k], titles, best, stacked=True) <= console.width:
            keys.append(k)
    hidden = [k for k in available if k not in keys and k in EXTRA]
    order = [*reversed([k for k in keys if k in EXTRA]), *DROP_ORDER, *SPLITTING]
    while not wide and _width(rows_, keys, titles, best, stacked=True) > console.width:
        droppable = [k for k in order if k in keys]
        if not droppable:
            break  # task, model and run id alone: the terminal wraps them
        keys.remove(droppable[0])
        hidden.insert(0, droppable[0])
    shown = [k for k in available if k in keys]
    # titles on one line where that fits, else each wrapped at its spaces to its column
    stacked = not wide and _width(rows_, shown, titles, best) > console.width
    table = _table(rows_, shown, titles, best, title, stacked)
    if wide:  # as wide as the table takes: a pager (`less -S`) or a log shows it whole
        needed = _width(rows_, keys, titles, best)
        console = Console(width=max(console.width, needed), file=console.file)
    console.print(table)
    notes = [
        f"ELBO, IWAE: nats{', mean±std over seeds' if 'n' in keys else ''}; "
        f"{BEST} best ELBO of its task; cond. active: units whose posterior adds to its "
        "conditional prior (of all units); KL collapse: share of units paying < 0.01 nats"
    ]
    if hidden:
        named = [SHORT_TITLES.get(k, titles[k]) for k in hidden if k not in EXTRA]
        more = len(hidden) - len(named)
        what = ", ".join([*named, *([f"{more} more columns"] if more else [])])
        notes.append(f"not shown at {console.width} columns: {what} (hvbench leaderboard --wide)")
    for note in notes:
        console.print(note, style="dim", highlight=False)


def _table(
    rows_: list[dict[str, Any]],
    keys: list[str],
    titles: dict[str, str],
    best: set[int],
    title: str,
    stacked: bool = False,
) -> Table:
    """The rich table; each column as wide as its longest cell or title word, never narrower
    (`stacked`: a title's words wrapped onto lines of that width, not one line)."""
    body = [
        [_short(r, k) + (f" {BEST}" if k == "model" and i in best else "") for k in keys]
        for i, r in enumerate(rows_)
    ]
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0, 0, 1))
    for j, k in enumerate(keys):
        head = SHORT_TITLES.get(k, titles[k])
        if stacked:  # an arrow stays with the word before it (a no-break space)
            head = head.replace(" ↑", "\u00a0↑").replace(" ↓", "\u00a0↓")
        words = [cell_len(w) for w in head.split(" ")] + [cell_len(row[j]) for row in body]
        if stacked:
            head = "\n".join(
                textwrap.wrap(head, max(words), break_long_words=False, break_on_hyphens=False)
            )
        table.add_column(
            head,
            justify="left" if k in TEXT_COLUMNS else "right",
            no_wrap=True,
            min_width=max(words),
        )
    for row in body:
        table.add_row(*row)
    return table


def _width(
    rows_: list[dict[str, Any]],
    keys: list[str],
    titles: dict[str, str],
    best: set[int],
    stacked: bool = False,
) -> int:
    """The width the table takes with every number on one line and every title word whole
    (`stacked`: titles wrapped at their spaces, the narrowest it can be)."""
    console = Console(width=10_000, file=io.StringIO(), color_system=None)
    with console.capture() as captured:
        console.print(_table(rows_, keys, titles, best, "", stacked))
    return max((cell_len(line.rstrip()) for line in captured.get().splitlines()), default=0)


def _differs(rows_: list[dict[str, Any]], key: str) -> bool:
    """Whether `key` takes two values among rows that it could explain: the config among one
    model's rows of a task, the split, k or eval settings among a task's rows."""
    seen: dict[tuple[str, ...], set[str]] = {}
    for r in rows_:
        where = (r["task"], r["model"]) if key == "config" else (r["task"],)
        seen.setdefault(where, set()).add(str(r.get(key)))
    return any(len(values) > 1 for values in seen.values())


def _best(rows_: list[dict[str, Any]]) -> set[int]:
    """Indices of each task's highest mean ELBO among the rows on the same split and data."""
    best: dict[tuple[str, str, str], tuple[float, int]] = {}
    for i, r in enumerate(rows_):
        value = r.get("elbo_nats")
        value = value.mean if isinstance(value, Spread) else value
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        group = (r["task"], str(r.get("split")), str(r.get("data_source")))
        if group not in best or value > best[group][0]:
            best[group] = (value, i)
    return {i for _, i in best.values()}


def _short(r: dict[str, Any], key: str) -> str:
    """A cell as the terminal shows it: a mean with as many decimals as its std's two
    significant digits, and no spaces inside a number."""
    value = r.get(key)
    if isinstance(value, Spread):
        if not (math.isfinite(value.std) and value.std > 0):
            return _number(value.mean)
        decimals = max(0, 1 - math.floor(math.log10(value.std)))
        return f"{value.mean:.{decimals}f}±{value.std:.{decimals}f}"
    if isinstance(value, float):
        text = _number(value)
    elif isinstance(value, str):
        text = value.replace(" ± ", "±")
    else:
        text = _fmt(value).replace(",", "")
    if key == "nll_per_dim" and value is not None:
        text += f" {r.get('nll_unit')}"
    return text


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"
