"""`hvbench wandb-report`: a W&B Report comparing the models of one sweep, task by task.

Runs find each other in W&B by what `hvbench.tracking` gives them: group = the
sweep, job type = the model, config `task.name`. Each task gets a panel grid
over the sweep's runs of that task, grouped by model (mean, ±1 std band over
seeds): test ELBO / IWAE / bits per dim, the three collapse measures (Burda's
`collapse_rate`, `conditional_collapse_rate`, `kl_collapse_rate`, each named),
collapse and KL share per latent group, throughput, the validation curves on
the shared `step` axis and the figures as media; then a table of every run
(seed, key numbers) with a run comparer. The report object is built offline
(the tests do); only `publish` needs an account. The runs it reaches are the
sweep's runs that logged to W&B: `runs_on_disk` lists them, and those whose
W&B mode was `disabled` (the smoke configs' default) never reach it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hvbench.errors import UserError
from hvbench.metric_table import key, title
from hvbench.results import folder_of, runs_dir
from hvbench.tracking import STEP

INSTALL = "pip install 'hvbench[wandb-report]' (the wandb-workspaces package)"
# the summary metrics of the runs table, beside each run's name and seed
RUN_COLUMNS = (
    key("elbo_nats", "test"),
    key("iwae_nats", "test"),
    key("conditional_active_units", "test"),
    key("units", "test"),
    key("kl_collapse_rate", "test"),
    key("train_images_per_s"),
)
# the figures every run logs (hvbench.run._figures), shown as media
MEDIA = ("samples", "reconstructions", "latent_histograms", "kl_per_unit", "factor_unit_test")


def _reports() -> Any:
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError:
        raise UserError(f"hvbench wandb-report needs wandb-workspaces: {INSTALL}") from None
    return wr


def sweep_tasks(root: Path, sweep: str) -> dict[str, dict[str, list[str]]]:
    """{task: {model: latent groups}} of the sweep's finished runs under `root` (from disk)."""
    from hvbench.leaderboard import load_runs

    out: dict[str, dict[str, list[str]]] = {}
    if not runs_dir(root).is_dir():
        return out
    for run in load_runs(root):
        run_dir = folder_of(run)
        if _sweep_of(run_dir) == sweep:
            split = run["run"]["eval_splits"][-1]
            out.setdefault(run["task"], {})[run["model"]] = list(run["units"].get(split, {}))
    return out


def runs_on_disk(root: Path, sweep: str) -> list[dict[str, Any]]:
    """The sweep's finished runs under `root`: task, model, run id, seed, and the W&B id
    and mode each logged with (None: the run never reached W&B)."""
    from hvbench.leaderboard import load_runs
    from hvbench.tracking import WANDB_ID

    out: list[dict[str, Any]] = []
    if not runs_dir(root).is_dir():
        return out
    for run in load_runs(root):
        run_dir = folder_of(run)
        if _sweep_of(run_dir) != sweep:
            continue
        logged = (run_dir / WANDB_ID).is_file()
        offline = sorted(run_dir.glob("wandb/offline-run-*"))
        out.append(
            {
                "task": run["task"],
                "model": run["model"],
                "run_id": run["run_id"],
                "seed": run["run"].get("seed"),
                "wandb_id": (run_dir / WANDB_ID).read_text().strip() if logged else None,
                "offline": [str(p) for p in offline],
            }
        )
    return out


def build(
    project: str, entity: str, sweep: str, tasks: dict[str, dict[str, list[str]]]
) -> Any:
    """The Report: one heading, one panel grid and one table of runs per task."""
    wr = _reports()
    from wandb_workspaces import expr

    blocks: list[Any] = [
        wr.P(
            f"hvbench sweep '{sweep}': every model on every task, mean and ±1 std over seeds. "
            "Numbers are the runs' final test metrics (the same names as metrics.json), kept "
            "in each run's summary. Collapse: collapse_rate counts Burda-inactive units, "
            "conditional_collapse_rate units whose posterior adds nothing to their conditional "
            "prior (read this one for a hierarchy), kl_collapse_rate units paying no KL."
        )
    ]
    for task, models in tasks.items():
        where = expr.And(expr.Metric("Group") == sweep, expr.Config("task.name") == task)

        def runset(name: str, groupby: list[str], where: Any = where) -> Any:
            return wr.Runset(
                entity=entity,
                project=project,
                name=name,
                filters=where,
                groupby=groupby,
                order=[wr.OrderBy(wr.SummaryMetric("test/elbo_nats"), ascending=False)],
                pinned_columns=["run:displayName"],
                visible_columns=[f"summary:{m}" for m in RUN_COLUMNS] + ["config:train.seed.value"],
            )

        blocks += [
            wr.H2(task),
            wr.PanelGrid(runsets=[runset(f"{sweep} · {task}", ["jobType"])], panels=_panels(wr, models)),
            wr.H3(f"{task}: every run"),
            wr.PanelGrid(
                runsets=[runset(f"{sweep} · {task} · runs", [])],
                panels=[wr.RunComparer(diff_only="split")],
            ),
        ]
    return wr.Report(
        project=project,
        entity=entity,
        title=f"hvbench: {sweep}",
        description=f"Models compared over seeds, sweep '{sweep}' (built by hvbench wandb-report)",
        blocks=blocks,
        width="fluid",
    )


def _panels(wr: Any, models: dict[str, list[str]]) -> list[Any]:
    def bars(title: str, metrics: list[str]) -> Any:
        return wr.BarPlot(
            title=title,
            metrics=metrics,
            orientation="v",
            groupby_aggfunc="mean",
            groupby_rangefunc="stddev",
        )

    groups = sorted({g for names in models.values() for g in names})
    panels = [
        bars(title("elbo_nats", "test ELBO (nats)"), [key("elbo_nats", "test")]),
        bars(title("iwae_nats", "test IWAE (nats)"), [key("iwae_nats", "test")]),
        bars(
            title("elbo_nll_bpd", "test −ELBO per dim (bits/dim or nats/dim)"),
            [key("elbo_nll_bpd", "test"), key("elbo_nll_nats_per_dim", "test")],
        ),
        bars(
            title("conditional_collapse_rate", "conditional collapse (conditional_collapse_rate)"),
            [key("conditional_collapse_rate", "test")],
        ),
        bars(title("collapse_rate", "collapse (Burda: collapse_rate)"), [key("collapse_rate", "test")]),
        bars(title("kl_collapse_rate", "KL collapse (kl_collapse_rate)"), [key("kl_collapse_rate", "test")]),
        bars(title("train_images_per_s", "training throughput (images/s)"), [key("train_images_per_s")]),
        wr.LinePlot(
            title=title("elbo_nats", "validation ELBO (nats)"),
            x=STEP,
            y=[key("elbo_nats", "val")],
            groupby_aggfunc="mean",
            groupby_rangefunc="stddev",
        ),
    ]
    if groups:
        panels += [
            bars("KL share per latent group", [key("kl_share", "test", g) for g in groups]),
            bars(
                title(
                    "conditional_collapse_rate",
                    "conditional collapse per latent group (conditional_collapse_rate)",
                ),
                [key("conditional_collapse_rate", "test", g) for g in groups],
            ),
        ]
    panels.append(
        wr.MediaBrowser(
            title="figures (each run's, logged once)",
            media_keys=[f"figures/{name}" for name in MEDIA],
            num_columns=3,
        )
    )
    return panels


def publish(report: Any) -> str:
    """Save the report to W&B (needs `wandb login`); returns its URL."""
    try:
        report.save()
    except Exception as err:  # no account, no network, no such project: one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot publish the W&B report ({first}); `wandb login` first") from None
    return report.url


def describe(report: Any) -> list[str]:
    """The report's outline, one line per panel (what --dry-run prints)."""
    lines = [f"W&B report '{report.title}' in {report.entity}/{report.project}"]
    for block in report.blocks:
        if hasattr(block, "runsets"):
            for runset in block.runsets:
                grouped = f" grouped by {', '.join(runset.groupby)}" if runset.groupby else ""
                lines.append(f"  runs: {runset.filters}{grouped}")
                if not runset.groupby:
                    lines.append(f"    runs table: {', '.join(runset.visible_columns)}")
            for panel in block.panels:
                shown = (
                    getattr(panel, "metrics", None)
                    or getattr(panel, "y", None)
                    or getattr(panel, "media_keys", None)
                    or []
                )
                title = getattr(panel, "title", None) or "every run side by side"
                lines.append(f"    {type(panel).__name__} '{title}': {', '.join(shown)}")
        elif type(block).__name__ in ("H2", "H3"):
            lines.append(f"  {block.text}")
    return lines


def describe_runs(runs: list[dict[str, Any]], sweep: str) -> list[str]:
    """Which of the sweep's runs on disk W&B has (what the report will show), and how to
    upload the offline ones; a warning line for those that never logged."""
    lines = []
    for r in runs:
        where = (
            "never logged to W&B (wandb.mode disabled)"
            if r["wandb_id"] is None
            else f"W&B id {r['wandb_id']}" + (", offline: not uploaded until synced" if r["offline"] else "")
        )
        lines.append(f"  run {r['task']}/{r['model']}/{r['run_id']} (seed {r['seed']}): {where}")
    offline = [p for r in runs for p in r["offline"]]
    if offline:
        lines.append(f"upload the offline runs first: wandb sync {' '.join(offline)}")
    missing = sum(r["wandb_id"] is None for r in runs)
    if missing:
        lines.append(
            f"warning: {missing} of the sweep's runs never reached W&B; run the sweep with "
            f"--wandb offline (or online): hvbench sweep <file> --wandb offline (sweep '{sweep}')"
        )
    return lines


def _sweep_of(run_dir: Path) -> str | None:
    from hvbench.aggregate import run_config

    config = run_config(run_dir) or {}
    return (config.get("output") or {}).get("sweep")
