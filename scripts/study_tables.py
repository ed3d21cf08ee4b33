"""The research log's four questions answered from the committed reference runs.

Reads every run record under `results/reference/runs/` (written by the sweeps in
`configs/sweeps/` and copied by `scripts/collect_reference.py`), groups the runs by sweep,
task, model and variant (run ids are `<sweep>-<variant>-s<seed>`), and writes
`results/studies.md` (one table per question: mean ± sample std over the seeds, n beside it)
and the summary figures under `results/figures/`:

    python scripts/study_tables.py

Every number in the README's "What the numbers say" is a cell of that file, and each cell is
the mean of the `metrics.json` values named in its column's key, so it can be traced to the
run records themselves.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SWEEPS = ("toy-study", "single-root", "dsprites-cpu", "dsprites-mirrored")
HALF = "metrics.step-00000500.json"
NEAR_ZERO = 0.1  # a unit whose E_q[z|x] moves by less than a tenth of the prior's sd


def load(root: Path) -> dict[tuple[str, str, str, str], list[dict[str, Any]]]:
    """(sweep, task, model, variant) → the runs' records, seed order."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for run_dir in sorted(p for p in (root / "runs").glob("*/*/*") if p.is_dir()):
        versions = sorted(run_dir.glob("metrics.json")) + sorted(run_dir.glob("metrics.v*.json"))
        if not versions:
            continue
        sweep = next((s for s in SWEEPS if run_dir.name.startswith(s + "-")), None)
        if sweep is None:
            continue
        named = re.fullmatch(
            rf"{re.escape(sweep)}(?:-(?P<variant>.+))?-s(?P<seed>[0-9]+)", run_dir.name
        )
        if named is None:
            continue
        variant, seed = named["variant"] or "-", named["seed"]
        record = json.loads(versions[-1].read_text())
        half = run_dir / HALF
        record["half"] = json.loads(half.read_text()) if half.is_file() else None
        record["seed"], record["dir"] = int(seed), run_dir
        task, model = run_dir.parent.parent.name, run_dir.parent.name
        groups[(sweep, task, model, variant)].append(record)
    return groups


def stat(values: list[float | None], digits: int = 1) -> str:
    """Mean ± sample std over the seeds; a seed that could not score the metric (None, e.g.
    DCI with fewer than two predicted factors) is left out, and the count says so."""
    given = [v for v in values if v is not None]
    if not given:
        return "—"
    short = f" (n = {len(given)} of {len(values)})" if len(given) < len(values) else ""
    return _mean_std(given, digits) + short


def _mean_std(values: list[float], digits: int) -> str:
    if any(isinstance(v, float) and math.isnan(v) for v in values):
        finite = [v for v in values if not math.isnan(v)]
        note = f" ({len(values) - len(finite)} NaN)"
        return (_mean_std(finite, digits) if finite else "NaN") + note
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def metric(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [r["metrics"].get(key) for r in runs]


def unit_spread(record: dict[str, Any] | None) -> list[float]:
    """Per unit, the sd over test images of E_q[z_u|x]: √ of Burda's activity statistic."""
    if record is None:
        return []
    groups = record["units"]["test"].values()
    return [math.sqrt(max(a, 0.0)) for g in groups for a in g["activity"]]


def spread_cell(runs: list[dict[str, Any]], half: bool) -> str:
    """Median over units of the spread, and how many units sit near zero (spread < 0.1)."""
    spreads = [s for r in runs if (s := unit_spread(r["half"] if half else r))]
    if not spreads:
        return "—"
    near_zero = [sum(v < NEAR_ZERO for v in s) for s in spreads]
    return f"{stat([statistics.median(s) for s in spreads], 2)} ({stat(near_zero, 1)})"


def units_cell(runs: list[dict[str, Any]], key: str) -> str:
    return f"{stat(metric(runs, key), 1)} / {runs[0]['metrics']['test/units']}"


def table_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def header(cells: list[str]) -> list[str]:
    return [table_row(cells), "|" + "---|" * len(cells)]


def toy_study(groups: dict, lines: list[str]) -> None:
    lines += [
        "## 1. Weak KL on toy data (`configs/sweeps/toy-study.yaml`, `toy-study-vdvae.yaml`)",
        "",
        "weak-kl: w_rec = 5, β = 0.1, constant; elbo-warmup: w_rec = 1, β linear 0 → 1 over "
        "500 steps. ELBO and log p(x|z) in nats per image (the plain bound, whatever the "
        "training weights). Spread: the median over units of the sd over test images of "
        "E_q[z_u|x] (√ of Burda's activity statistic; the prior's sd is 1), and in brackets "
        "the number of units whose spread is below 0.1 (near zero), at the half-budget "
        "checkpoint (500 steps) and at the end (1,000).",
        "",
        *header(
            [
                "task",
                "model",
                "variant",
                "n",
                "test ELBO",
                "log p(x|z)",
                "KL",
                "active / units",
                "cond. active / units",
                "MIG",
                "DCI D",
                "spread @500",
                "spread @1000",
            ]
        ),
    ]
    for (sweep, task, model, variant), runs in sorted(groups.items()):
        if sweep != "toy-study":
            continue
        lines.append(
            table_row(
                [
                    task,
                    model,
                    variant,
                    str(len(runs)),
                    stat(metric(runs, "test/elbo_nats")),
                    stat(metric(runs, "test/log_px_nats")),
                    stat(metric(runs, "test/kl_nats")),
                    units_cell(runs, "test/active_units"),
                    units_cell(runs, "test/conditional_active_units"),
                    stat(metric(runs, "test/mig"), 3),
                    stat(metric(runs, "test/dci_lasso_disentanglement"), 3),
                    spread_cell(runs, half=True),
                    spread_cell(runs, half=False),
                ]
            )
        )
    lines.append("")


def group_cells(runs: list[dict[str, Any]], prefix: str) -> str:
    """Per latent group: the mean over seeds of the group's metric, `group value`."""
    keys = sorted(k for k in runs[0]["metrics"] if k.startswith(prefix + "/"))
    return ", ".join(
        f"{k[len(prefix) + 1 :]} {statistics.fmean(metric(runs, k)):.2f}" for k in keys
    )


def per_node_table(groups: dict, sweep: str, lines: list[str], title: str, intro: str) -> None:
    lines += [title, "", intro, ""]
    lines += header(
        [
            "task",
            "model",
            "variant",
            "n",
            "test ELBO",
            "KL",
            "cond. active / units",
            "MIG",
            "DCI D",
            "KL per node (nats)",
            "cond. active per node",
        ]
    )
    for (s, task, model, variant), runs in sorted(groups.items()):
        if s != sweep:
            continue
        lines.append(
            table_row(
                [
                    task,
                    model,
                    variant,
                    str(len(runs)),
                    stat(metric(runs, "test/elbo_nats")),
                    stat(metric(runs, "test/kl_nats")),
                    units_cell(runs, "test/conditional_active_units"),
                    stat(metric(runs, "test/mig"), 3),
                    stat(metric(runs, "test/dci_lasso_disentanglement"), 3),
                    group_cells(runs, "test/kl_nats"),
                    group_cells(runs, "test/conditional_active_units"),
                ]
            )
        )
    lines.append("")


def spread_figure(groups: dict, out: Path) -> None:
    """Toy study: each unit's spread of E_q[z|x] at 500 and 1,000 steps, per model and variant."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, task in zip(axes, ("toy-corr", "toy-uncorr"), strict=True):
        labels, position = [], 0
        for (sweep, t, model, variant), runs in sorted(groups.items()):
            if sweep != "toy-study" or t != task:
                continue
            for offset, half, colour in ((-0.15, True, "tab:orange"), (0.15, False, "tab:blue")):
                values = [v for r in runs for v in unit_spread(r["half"] if half else r)]
                ax.scatter([position + offset] * len(values), values, s=6, alpha=0.5, c=colour)
            labels.append(f"{model}\n{variant}")
            position += 1
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=60)
        ax.set_title(f"{task}: sd over images of E_q[z_u|x], every unit of 3 seeds", fontsize=8)
    axes[0].set_ylabel("sd of E_q[z_u|x] (prior sd = 1, dashed)")
    axes[0].scatter([], [], c="tab:orange", label="500 steps")
    axes[0].scatter([], [], c="tab:blue", label="1,000 steps")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def elbo_figure(groups: dict, sweeps: tuple[str, ...], out: Path, title: str) -> None:
    """Test ELBO per run (dots) and its seed mean (bar), per task and variant."""
    rows = [(k, v) for k, v in sorted(groups.items()) if k[0] in sweeps]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(rows)), 3.4))
    for i, (_, runs) in enumerate(rows):
        values = metric(runs, "test/elbo_nats")
        ax.bar(i, statistics.fmean(values), color="lightsteelblue")
        ax.scatter([i] * len(values), values, s=10, c="k", zorder=3)
    ax.set_xticks(
        range(len(rows)), [f"{t}\n{m}\n{v}" for (_, t, m, v), _ in rows], fontsize=6, rotation=60
    )
    ax.set_ylabel("test ELBO (nats per image)")
    low = min(min(metric(r, "test/elbo_nats")) for _, r in rows)
    high = max(max(metric(r, "test/elbo_nats")) for _, r in rows)
    ax.set_ylim(low - 0.1 * abs(high - low) - 1, high + 0.1 * abs(high - low) + 1)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def factor_unit_figure(
    groups: dict, sweeps: tuple[str, ...], out: Path, task: str | None = None
) -> None:
    """Seed 0's factor × unit |Spearman| matrix of each row (one task, or every task)."""
    rows = [(k, v) for k, v in sorted(groups.items()) if k[0] in sweeps and task in (None, k[1])]
    if not rows:
        return
    cols = min(4, len(rows))
    lines = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(3.2 * cols, 2.6 * lines), squeeze=False)
    for ax in axes.flat[len(rows) :]:
        ax.axis("off")
    for ax, ((sweep, _, model, variant), runs) in zip(axes.flat, rows, strict=False):
        record = min(runs, key=lambda r: r["seed"])
        matrix = record["factor_unit"]["test"]
        image = ax.imshow(matrix["abs_spearman"], vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_yticks(range(len(matrix["factors"])), matrix["factors"], fontsize=6)
        units = matrix["units"]
        if len(units) <= 16:
            ax.set_xticks(range(len(units)), units, fontsize=5, rotation=90)
        else:
            ax.set_xlabel(f"{len(units)} units", fontsize=6)
            ax.set_xticks([])
        label = sweep if variant == "-" else variant  # a row without a variant: its sweep's name
        ax.set_title(f"{task or ''} {model} {label} (seed {record['seed']})".strip(), fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.6, label="|Spearman|")
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("results/reference"))
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    groups = load(args.root)
    figures = args.out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    lines = [
        "# The research log's questions: the reference runs' tables",
        "",
        "Generated by `python scripts/study_tables.py` from `results/reference/runs/`; mean ± "
        "sample std over the seeds (n), test split. MIG and DCI are read against the perfect "
        "code's ceilings in [metric-ceilings.md](metric-ceilings.md).",
        "",
    ]
    toy_study(groups, lines)
    per_node_table(
        groups,
        "single-root",
        lines,
        "## 2. One root against five (`configs/sweeps/single-root.yaml`)",
        "dagvae, plain ELBO, 600 steps, 10 units either way: one-root is the toy tasks' own DAG (size → "
        "x, y → brightness → angle), five-roots the same nodes without edges; `-mirrored` "
        "swaps the spatial trunk for dense layers as wide as the DAG's levels.",
    )
    per_node_table(
        groups,
        "dsprites-cpu",
        lines,
        "## 3–4. dSprites at a CPU budget (`configs/sweeps/dsprites-cpu*.yaml`, "
        "`dsprites-mirrored.yaml`)",
        "800 steps of 64 (0.08 epoch of the generated grid): every model, and the DAG-VAE "
        "with the mirrored trunk (its own table below).",
    )
    per_node_table(groups, "dsprites-mirrored", lines, "### dSprites, mirrored trunk", "")
    (args.out / "studies.md").write_text("\n".join(lines) + "\n")
    spread_figure(groups, figures / "toy-study-spread.png")
    elbo_figure(groups, ("single-root",), figures / "single-root-elbo.png", "single root vs five")
    elbo_figure(
        groups,
        ("dsprites-cpu", "dsprites-mirrored"),
        figures / "dsprites-elbo.png",
        "dSprites at 800 steps",
    )
    factor_unit_figure(
        groups, ("dsprites-cpu", "dsprites-mirrored"), figures / "dsprites-factor-unit.png"
    )
    for task in ("toy-corr", "toy-uncorr"):
        factor_unit_figure(groups, ("toy-study",), figures / f"{task}-factor-unit.png", task)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
