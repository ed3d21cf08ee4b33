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
import statistics
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from hvbench import published
from hvbench.atomic import write_text
from hvbench.leaderboard import SEED_COLUMNS, cells, load_runs, rows, seed_rows
from hvbench.results import figures_dir, metrics_versions
from hvbench.tracking import read_history

CURVES = (("val/elbo_nats", "validation ELBO (nats)"), ("train/elbo_nats", "training ELBO (nats)"))
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 13px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #f3f3f3; } td:nth-child(-n+3) { text-align: left; }
tr.published td { color: #666; font-style: italic; background: #fafafa; }
figure { display: inline-block; margin: .5em; vertical-align: top; }
figcaption { font-size: 12px; color: #555; }
img { max-width: 100%; }
.note { color: #666; font-size: 13px; }
"""


def build(root: Path, out: Path | None = None) -> Path:
    """Write `root`/report.html (or `out`) from every finished run under `root`/runs."""
    root = Path(root)
    runs = load_runs(root)
    seeds = seed_rows(root, rows(runs))
    by_id = {(r["task"], r["model"], r["run_id"]): r for r in runs}
    cards = published.load()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        "<h1>hvbench report</h1>",
        f"<p class='note'>{len(runs)} finished runs under {html.escape(str(root))}, {stamp}. "
        "Rebuilt by <code>hvbench report</code>; every number is also in the runs' metrics.json.</p>",
    ]
    if not runs:
        body.append("<p>No finished runs yet: <code>hvbench run</code> or <code>hvbench sweep</code> first.</p>")
    for task in sorted({r["task"] for r in seeds}):
        task_rows = [r for r in seeds if r["task"] == task]
        models = [(_label(r, task_rows), [by_id[(task, r["model"], i)] for i in r["runs"]]) for r in task_rows]
        body += _task_section(task, task_rows, [c for c in cards if c["task"] == task], models, root)
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<title>hvbench report</title>"
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )
    path = out or root / "report.html"
    write_text(path, page)
    return path


def _task_section(
    task: str,
    task_rows: list[dict[str, Any]],
    cards: list[dict[str, Any]],
    models: list[tuple[str, list[dict[str, Any]]]],
    root: Path,
) -> list[str]:
    out = [f"<h2 id='{html.escape(task)}'>{html.escape(task)}</h2>", _board(task_rows, cards)]
    histories = [(label, [read_history(_run_dir(root, r)) for r in members]) for label, members in models]
    if any(h for _, hs in histories for h in hs):
        out.append(_figure(_curves(histories), "curves: each run thin, mean over seeds bold, band ±1 std"))
    for what, title in (("kl_nats", "KL per group (nats)"), ("collapse_rate", "collapse per group")):
        bars = _group_bars(models, what, title)
        if bars:
            out.append(_figure(bars, f"{title}: mean ± std over seeds"))
    for label, members in models:
        first = min(members, key=lambda r: str(r["run"].get("seed")))
        folder = figures_dir(metrics_versions(_run_dir(root, first))[-1])
        split = first["run"]["eval_splits"][-1]
        out.append(f"<h3>{html.escape(label)}</h3>")
        for name, caption in (
            (f"factor_unit_{split}.png", "factor × unit |Spearman|"),
            ("samples.png", "prior samples"),
        ):
            if (folder / name).is_file():
                seed = first["run"].get("seed")
                out.append(_figure((folder / name).read_bytes(), f"{label}, seed {seed}: {caption}"))
    return out


def _board(task_rows: list[dict[str, Any]], cards: list[dict[str, Any]]) -> str:
    columns = [c for c in SEED_COLUMNS if c[0] not in ("task", "device", "data_source")]
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    lines = [
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells(r, tuple(columns))) + "</tr>"
        for r in task_rows
    ]
    for card in cards:  # beside the measured rows, never among them
        text = f"{card['model']} (published): {card['value']} {card['unit']}, {card['estimator']}, {card['split']}; {card['source']}"
        lines.append(f"<tr class='published'><td colspan='{len(columns)}'>{html.escape(text)}</td></tr>")
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>"


def _label(row: dict[str, Any], task_rows: list[dict[str, Any]]) -> str:
    """The model's name, with its config hash when the task has several configs of it."""
    twins = sum(r["model"] == row["model"] for r in task_rows)
    return row["model"] if twins == 1 else f"{row['model']} [{row['config']}]"


def _run_dir(root: Path, run: dict[str, Any]) -> Path:
    return root / "runs" / run["task"] / run["model"] / run["run_id"]


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
    axes[0][0].set_ylabel(title)
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
