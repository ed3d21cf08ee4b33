"""The leaderboard: rebuilt from every `metrics.json` on disk, never typed by hand.

Rows carry their estimator, split and data source (docs/design.md §6.7), so
unlike numbers are never silently compared: a generated dSprites grid is shown
as such, and bits/dim only appear where the data are discrete.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hvbench import aggregate, published
from hvbench.aggregate import Spread
from hvbench.atomic import write_text
from hvbench.config import PRECISION_NAMES, EvalConfig
from hvbench.errors import UserError
from hvbench.metric_table import definition, key
from hvbench.results import MalformedRecord, load_metrics, metrics_versions, read_status, run_status

COLUMNS = (
    ("task", "task"),
    ("model", "model"),
    ("run_id", "run"),
    ("split", "split"),
    ("elbo_nats", "ELBO (nats) ↑"),
    ("examples", "n"),
    ("nll_per_dim", "−ELBO per dim ↓"),
    ("iwae_nats", "IWAE-k (nats) ↑"),
    ("iwae_elbo_nats", "ELBO, IWAE set ↑"),
    ("iwae_k", "k"),
    ("iwae_examples", "n IWAE"),
    ("reference_iwae_bpd", "−IWAE bpd ↓ (published split)"),
    ("reference", "published split, k, n"),
    ("active_units", "active/units"),
    ("uncertain_units", "uncertain"),
    ("conditional_active_units", "cond. active/units"),
    ("collapse_rate", "collapse ↓"),
    ("kl_collapse_rate", "KL-collapse ↓"),
    ("mig", "MIG ↑"),
    ("dci_lasso_disentanglement", "DCI-lasso D ↑"),
    ("train_images_per_s", "train img/s"),
    ("eval_images_per_s", "eval img/s"),
    ("parameters", "params"),
    ("device", "device"),
    ("precision", "precision"),
    ("steps", "steps"),
    ("data_source", "data source"),
)
SEED_COLUMNS = aggregate.columns(COLUMNS)
# the terminal shows what fits a screen; leaderboard.md and the CSVs hold every column
TERMINAL_COLUMNS = {
    "task",
    "model",
    "config",
    "n",
    "split",
    "elbo_nats",
    "nll_per_dim",
    "iwae_nats",
    "iwae_elbo_nats",
    "reference_iwae_bpd",
    "active_units",
    "uncertain_units",
    "conditional_active_units",
    "kl_collapse_rate",
    "mig",
    "train_images_per_s",
    "precision",
}
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
    return sorted(p for p in (root / "runs").glob("*/*/*") if p.is_dir())


def load_runs(root: Path) -> list[dict[str, Any]]:
    """The latest metrics record of every finished run: the ranked ones. A record that cannot
    be read or shown is skipped with one warning line naming the file."""
    runs = []
    for run_dir in run_dirs(root):
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
            _warn(f"{metrics_versions(run_dir)[-1]}: cannot be shown ({type(err).__name__}: {err})")
            continue
        runs.append(run)
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
    table = Table(title=f"not ranked ({len(runs)} runs)")
    for name in ("task", "model", "run", "status", "step", "reason"):
        table.add_column(name, overflow="fold")
    for r in runs:
        step = "—" if r.get("step") is None else f"{r['step']}/{r.get('steps', '?')}"
        row = (r["task"], r["model"], r["run_id"], r["status"], step, str(r.get("reason") or ""))
        table.add_row(*row)
    (console or Console(width=None if sys.stdout.isatty() else 220)).print(table)


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
    out = [_run_row(run) for run in runs]
    return sorted(
        out,
        key=lambda r: (r["task"], -(r["elbo_nats"] if r["elbo_nats"] is not None else -math.inf)),
    )


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
        "split": split,
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


def group_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per latent group; `term` says whether its KL is analytic or a rate term, and a
    rate term's KL-collapse is n/a (no KL to compare with the threshold)."""
    out = []
    for run in runs:
        split = _report_split(run)
        m = run["metrics"]
        for group, detail in run["units"].get(split, {}).items():
            analytic = detail.get("analytic", True)
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
    lines += ["| " + " | ".join(cells) + " |" for cells in table]
    return "\n".join(lines)


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


def _legend(root: Path, main: list[dict[str, Any]]) -> list[str]:
    """What the columns mean, from the metric table, with the runs' own eval settings."""
    settings = []
    for r in main:
        config = aggregate.run_config(Path(root) / "runs" / r["task"] / r["model"] / r["run_id"])
        settings.append({**asdict(EvalConfig()), **((config or {}).get("eval") or {})})
    unique = [dict(t) for t in dict.fromkeys(tuple(sorted(e.items())) for e in settings)]
    lines = [f"- **{title}**: {definition(name, (unique or [asdict(EvalConfig())])[0])}" for title, name in LEGEND]
    if len(unique) > 1:
        lines.append("- Runs differ in their eval settings; the values above are the first run's.")
    return ["−ELBO per dim is bits/dim for 8-bit data under a discrete likelihood, nats/dim otherwise.", *lines]


def seed_rows(root: Path, main: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The board over seeds: one row per task, model and config (hvbench.aggregate)."""
    configs = {
        (r["task"], r["model"], r["run_id"]): aggregate.run_config(
            Path(root) / "runs" / r["task"] / r["model"] / r["run_id"]
        )
        for r in main
    }
    return aggregate.over_seeds(main, configs)


def cells(r: dict[str, Any], columns: tuple[tuple[str, str], ...]) -> list[str]:
    """A row's values as shown, −ELBO per dim with its unit."""
    return [
        _fmt(r.get(key))
        + (f" {r['nll_unit']}" if key == "nll_per_dim" and r.get(key) is not None else "")
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
    seeds = seed_rows(root, main)
    header = [title for _, title in COLUMNS]
    md = [
        "# hvbench leaderboard",
        "",
        "Rebuilt by `hvbench leaderboard` from every `results/runs/*/*/*/metrics.json`.",
        "",
        *_legend(root, main),
        "",
        *_seeds_markdown(seeds),
        "## Runs",
        "",
        _markdown(
            header,
            [
                [
                    _fmt(r[key])
                    + (f" {r['nll_unit']}" if key == "nll_per_dim" and r[key] is not None else "")
                    for key, _ in COLUMNS
                ]
                for r in main
            ],
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
    main: list[dict[str, Any]],
    console: Console | None = None,
    columns: tuple[tuple[str, str], ...] = COLUMNS,
    title: str = "hvbench leaderboard",
) -> None:
    table = Table(title=title, show_lines=False)
    shown = [c for c in columns if c[0] in TERMINAL_COLUMNS]
    for _, title in shown:
        table.add_column(title, overflow="fold")
    for r in main:
        table.add_row(*[_fmt(r.get(key)) for key, _ in shown])
    # a pipe or a log file gets the whole table rather than rich's 80-column default
    (console or Console(width=None if sys.stdout.isatty() else 220)).print(table)
