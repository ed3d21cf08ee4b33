"""`hvbench report`: every finished run on one self-contained HTML page.

Per task: the leaderboard over seeds (with the published numbers beside it,
never ranked), validation and training curves per model (mean and a ±1 std
band over seeds, drawn from each run's history.jsonl), KL and collapse per
latent group (mean ± std over seeds), and each model's factor × unit matrix
and prior samples. Pictures are inline base64 PNGs and the page has no script
or link to fetch, so it opens offline, from an e-mail or an artefact store.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import statistics
from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from hvbench import published
from hvbench.aggregate import Spread
from hvbench.atomic import write_text
from hvbench.config import EvalConfig
from hvbench.leaderboard import (
    COLUMNS,
    SEED_COLUMNS,
    TEXT_COLUMNS,
    cells,
    load_runs,
    rows,
    seed_rows,
)
from hvbench.metric_table import BY_NAME, definition
from hvbench.metric_table import key as metric_key
from hvbench.results import figures_dir, folder_of, metrics_versions
from hvbench.tracking import read_history

CURVES = (("val/elbo_nats", "validation ELBO (nats)"), ("train/elbo_nats", "training ELBO (nats)"))
# the per-group bar figures, each naming the measure it plots (docs/design.md §6.4)
GROUP_BARS = (
    ("kl_nats", "KL per group (nats), kl_nats"),
    ("collapse_rate", "collapse_rate: 1 − Burda-active / units"),
    ("conditional_collapse_rate", "conditional_collapse_rate: 1 − conditionally active / units"),
    ("kl_collapse_rate", "kl_collapse_rate: share of units with KL < threshold"),
)
# board columns → the metric table's names, for the legend and the NaN reasons
METRIC_OF = {
    "nll_per_dim": "elbo_nll_bpd",
    "reference_iwae_bpd": "iwae_nll_bpd",
    "eval_images_per_s": "<split>_eval_images_per_s",
}
# a run's figures, in the order the report lists them
RUN_FIGURES = (
    ("reconstructions.png", "reconstructions"),
    ("samples.png", "prior samples"),
    ("latent_histograms.png", "latent histograms"),
    ("kl_per_unit.png", "KL per unit"),
    ("training_curves.png", "training curves"),
)
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em;
       color: #222; }
h1 { margin-bottom: 0; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
.scroll { overflow-x: auto; max-width: 100%; margin: 1em 0; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td.text { text-align: left; }
tr.best td { background: #eef7ee; font-weight: 600; }
tr.published td { color: #666; font-style: italic; background: #fafafa; white-space: normal; }
td.nan { color: #a33; }
figure { display: inline-block; margin: .5em; vertical-align: top; max-width: 100%; }
figcaption { font-size: 12px; color: #555; }
img { max-width: 100%; height: auto; }
.note, dl { color: #555; font-size: 13px; overflow-wrap: anywhere; }
dt { font-weight: 600; margin-top: .3em; } dd { margin-left: 1.5em; }
summary { cursor: pointer; }
"""


def build(root: Path, out: Path | None = None) -> Path:
    """Write `root`/report.html (or `out`) from every finished run under `root`/runs."""
    root = Path(root)
    runs = load_runs(root)
    seeds = seed_rows(runs)
    by_id = {(r["task"], r["model"], r["run_id"]): r for r in runs}
    cards = published.load()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    path = out or root / "report.html"
    body = [
        "<h1>hvbench report</h1>",
        f"<p class='note'>{len(runs)} finished runs under {html.escape(str(root))}, {stamp}. "
        "Rebuilt by <code>hvbench report</code>; every number is also in the runs' metrics.json.</p>",
    ]
    if not runs:
        body.append(
            "<p>No finished runs yet: <code>hvbench sweep configs/sweeps/smoke.yaml</code> "
            "(seconds) or <code>hvbench run --task toy-corr --model vae</code> first.</p>"
        )
    else:
        body.append(_legend(runs))
    for task in sorted({r["task"] for r in seeds}):
        task_rows = [r for r in seeds if r["task"] == task]
        models = [(_label(r, task_rows), [by_id[(task, r["model"], i)] for i in r["runs"]]) for r in task_rows]
        section = _task_section(task, task_rows, [c for c in cards if c["task"] == task], models)
        body += [*section, *_run_figures(models, path.parent)]
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<title>hvbench report</title>"
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )
    write_text(path, page)
    return path


def _task_section(
    task: str,
    task_rows: list[dict[str, Any]],
    cards: list[dict[str, Any]],
    models: list[tuple[str, list[dict[str, Any]]]],
) -> list[str]:
    members = [m for _, runs in models for m in runs]
    out = [
        f"<h2 id='{html.escape(task)}'>{html.escape(task)}</h2>",
        "<h3>Over seeds</h3>",
        _board(task_rows, cards, [runs for _, runs in models]),
        "<details><summary>Every run</summary>",
        _run_table(sorted(rows(members), key=lambda r: (r["model"], str(r["seed"]))), members),
        "</details>",
    ]
    histories = [(label, [read_history(folder_of(r)) for r in members]) for label, members in models]
    if any(h for _, hs in histories for h in hs):
        out.append(_figure(_curves(histories), "curves: each run thin, mean over seeds bold, band ±1 std"))
    for what, title in GROUP_BARS:
        bars = _group_bars(models, what, title)
        if bars:
            out.append(_figure(bars, f"{title}: mean ± std over seeds, per latent group"))
    for label, members in models:
        first = min(members, key=lambda r: str(r["run"].get("seed")))
        folder = figures_dir(metrics_versions(folder_of(first))[-1])
        split = first["run"]["eval_splits"][-1]
        out.append(f"<h3>{html.escape(label)}</h3>")
        for name, caption in (
            (f"factor_unit_{split}.png", "factor × unit |Spearman| (hatched: inactive units)"),
            ("samples.png", "prior samples"),
        ):
            if (folder / name).is_file():
                seed = first["run"].get("seed")
                out.append(_figure((folder / name).read_bytes(), f"{label}, seed {seed}: {caption}"))
    return out


def _board(
    task_rows: list[dict[str, Any]], cards: list[dict[str, Any]], members: list[list[dict[str, Any]]]
) -> str:
    """The over-seeds table: the best ELBO marked, a NaN cell with its reason beside it."""
    columns = [c for c in SEED_COLUMNS if c[0] not in ("task", "device", "data_source")]
    best = _best(task_rows)
    lines: list[str] = []
    reasons: dict[str, int] = {}
    reason_columns: dict[str, list[str]] = {}
    for i, (r, runs) in enumerate(zip(task_rows, members, strict=True)):
        row_cells = []
        for (k, title), text in zip(columns, cells(r, tuple(columns)), strict=True):
            reason = _nan_reason(k, runs) if r.get(k) is None else None
            if reason:
                mark = reasons.setdefault(reason, len(reasons) + 1)
                seen = reason_columns.setdefault(reason, [])
                seen += [title] if title not in seen else []
                row_cells.append(f"<td class='nan' title='{html.escape(reason)}'>NaN<sup>{mark}</sup></td>")
            else:
                label = f"{text} ★" if k == "model" and i in best else text
                row_cells.append(f"<td{_text_class(k)}>{html.escape(label)}</td>")
        marked_row = " class='best'" if i in best else ""
        lines.append(f"<tr{marked_row}>{''.join(row_cells)}</tr>")
    for card in cards:  # beside the measured rows, never among them
        text = f"{card['model']} (published): {card['value']} {card['unit']}, {card['estimator']}, {card['split']}; {card['source']}"
        lines.append(f"<tr class='published'><td class='text' colspan='{len(columns)}'>{html.escape(text)}</td></tr>")
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    notes = "".join(
        f"<li value='{n}'>{html.escape(', '.join(reason_columns[reason]))}: NaN, "
        f"{html.escape(reason)}</li>"
        for reason, n in reasons.items()
    )
    table = f"<div class='scroll'><table><tr>{head}</tr>{''.join(lines)}</table></div>"
    marked = "<p class='note'>★ best mean ELBO of the task (measured rows only).</p>"
    return table + marked + (f"<ol class='note'>{notes}</ol>" if notes else "")


def _run_table(run_rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    """One row per run: its id and seed beside its numbers."""
    columns = [c for c in COLUMNS if c[0] not in ("task", "device", "data_source", "reference")]
    by_id = {r["run_id"]: r for r in runs}
    lines = []
    for r in run_rows:
        row_cells = []
        for (k, _), text in zip(columns, cells(r, tuple(columns)), strict=True):
            reason = _nan_reason(k, [by_id[r["run_id"]]]) if r.get(k) is None else None
            if reason:
                row_cells.append(f"<td class='nan' title='{html.escape(reason)}'>NaN: {html.escape(reason)}</td>")
            else:
                row_cells.append(f"<td{_text_class(k)}>{html.escape(text)}</td>")
        lines.append(f"<tr>{''.join(row_cells)}</tr>")
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    return f"<div class='scroll'><table><tr>{head}</tr>{''.join(lines)}</table></div>"


def _text_class(column: str) -> str:
    return " class='text'" if column in TEXT_COLUMNS or column in ("seeds",) else ""


def _nan_reason(column: str, runs: list[dict[str, Any]]) -> str | None:
    """Why a metric is missing, from the runs' own notes (e.g. MIG with nothing active)."""
    name = METRIC_OF.get(column, column)
    if name not in BY_NAME:
        return None
    for run in runs:
        split = run["run"]["eval_splits"][-1]
        note = (run.get("notes") or {}).get(metric_key(name, split))
        if note:
            return str(note).removeprefix("NaN: ")
    return None


def _best(task_rows: list[dict[str, Any]]) -> set[int]:
    """The row with the highest mean ELBO among the task's measured rows."""
    means = [
        (r["elbo_nats"].mean if isinstance(r.get("elbo_nats"), Spread) else r.get("elbo_nats"), i)
        for i, r in enumerate(task_rows)
    ]
    finite = [(m, i) for m, i in means if isinstance(m, (int, float)) and math.isfinite(m)]
    return {max(finite)[1]} if finite else set()


def _legend(runs: list[dict[str, Any]]) -> str:
    """What the board's columns mean, from the metric table with the first run's eval
    settings (runs whose settings differ are split into their own rows)."""
    settings = {**asdict(EvalConfig()), **(runs[0]["run"].get("eval") or {})}
    items = []
    for column, title in COLUMNS:
        name = METRIC_OF.get(column, column)
        if name in BY_NAME:
            items.append(
                f"<dt>{html.escape(title)}</dt><dd>{html.escape(definition(name, settings))}</dd>"
            )
    return (
        "<details><summary>What the columns mean (the metric table)</summary>"
        f"<dl>{''.join(items)}</dl><p class='note'>−ELBO per dim is bits/dim for 8-bit data "
        "under a discrete likelihood, nats/dim otherwise; every number is on the task's last "
        "evaluation split.</p></details>"
    )


def _run_figures(
    models: list[tuple[str, list[dict[str, Any]]]], page_dir: Path
) -> list[str]:
    """Links to every run's figures (every seed, the latest evaluation's), relative to the page."""
    items = []
    for label, members in models:
        for run in sorted(members, key=lambda r: str(r["run"].get("seed"))):
            folder = figures_dir(metrics_versions(folder_of(run))[-1])
            split = run["run"]["eval_splits"][-1]
            names = [*RUN_FIGURES, (f"factor_unit_{split}.png", "factor × unit")]
            links = [
                f"<a href='{html.escape(Path(os.path.relpath(folder / name, page_dir)).as_posix())}'>"
                f"{html.escape(caption)}</a>"
                for name, caption in names
                if (folder / name).is_file()
            ]
            if links:
                who = f"{label}, seed {run['run'].get('seed')} ({run['run_id']})"
                items.append(f"<li>{html.escape(who)}: {' · '.join(links)}</li>")
    if not items:
        return []
    return ["<details><summary>Every run's figures</summary><ul class='note'>", *items, "</ul></details>"]


def _label(row: dict[str, Any], task_rows: list[dict[str, Any]]) -> str:
    """The model's name, with its config hash when the task has several configs of it."""
    twins = sum(r["model"] == row["model"] for r in task_rows)
    return row["model"] if twins == 1 else f"{row['model']} [{row['config']}]"


def _curves(histories: list[tuple[str, list[list[dict[str, Any]]]]]) -> bytes:
    fig, axes = plt.subplots(1, len(CURVES), figsize=(6 * len(CURVES), 3.6))
    for ax, (key, title) in zip(axes, CURVES, strict=True):
        for i, (label, runs) in enumerate(histories):
            series = [{row["step"]: row[key] for row in h if row.get(key) is not None} for h in runs]
            steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
            if not steps:
                continue
            values = [[s[step] for s in series] for step in steps]
            mean = [statistics.fmean(v) for v in values]
            for s in series:  # each run, thin; the mean over them, bold
                ax.plot(steps, [s[step] for step in steps], color=f"C{i % 10}", alpha=0.4, lw=0.8)
            ax.plot(steps, mean, color=f"C{i % 10}", lw=2, label=f"{label} (n={len(series)})")
            if len(series) > 1:
                std = [statistics.stdev(v) for v in values]
                low = [m - s for m, s in zip(mean, std, strict=True)]
                high = [m + s for m, s in zip(mean, std, strict=True)]
                ax.fill_between(steps, low, high, color=f"C{i % 10}", alpha=0.25, linewidth=0)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.has_data():
            ax.legend(fontsize=8)
    return _png(fig)


def _group_bars(
    models: list[tuple[str, list[dict[str, Any]]]], what: str, title: str
) -> bytes | None:
    panels = []
    for label, members in models:
        split = members[0]["run"]["eval_splits"][-1]
        groups = list(members[0]["units"].get(split, {}))
        stats = []
        for group in groups:
            values = _finite(r["metrics"].get(f"{split}/{what}/{group}") for r in members)
            if values:
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                stats.append((group, statistics.fmean(values), spread))
        if stats:
            panels.append((label, stats))
    if not panels:
        return None
    fig, axes = plt.subplots(
        1, len(panels), figsize=(max(4, 3 * len(panels)), 3), squeeze=False, sharey=True
    )
    for i, (ax, (label, stats)) in enumerate(zip(axes[0], panels, strict=True)):
        names, means, stds = zip(*stats, strict=True)
        ax.bar(names, means, yerr=stds, capsize=3, color=f"C{i % 10}")
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    axes[0][0].set_ylabel("nats" if what.endswith("_nats") else "fraction of the group's units")
    fig.suptitle(title, fontsize=11)  # which measure: the three collapse rates differ
    return _png(fig)


def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _figure(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )
