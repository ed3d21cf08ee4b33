"""`hvbench wandb-report`: a W&B Report comparing the models of one sweep, task by task.

Runs find each other in W&B by what `hvbench.tracking` gives them: group = the
sweep, job type = the model, config `task.name`. Each task gets a panel grid
over the sweep's runs of that task, grouped by model (mean, ±1 std band over
seeds): test ELBO / IWAE / bits per dim, collapse and KL share per latent
group, throughput, and the validation curves on the shared `step` axis. The
report object is built offline (the tests do); only `publish` needs an account.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hvbench.errors import UserError
from hvbench.tracking import STEP

INSTALL = "pip install 'hvbench[wandb-report]' (the wandb-workspaces package)"


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
    if not (Path(root) / "runs").is_dir():
        return out
    for run in load_runs(root):
        run_dir = Path(root) / "runs" / run["task"] / run["model"] / run["run_id"]
        if _sweep_of(run_dir) == sweep:
            split = run["run"]["eval_splits"][-1]
            out.setdefault(run["task"], {})[run["model"]] = list(run["units"].get(split, {}))
    return out


def build(
    project: str, entity: str, sweep: str, tasks: dict[str, dict[str, list[str]]]
) -> Any:
    """The Report: one heading and one panel grid per task."""
    wr = _reports()
    from wandb_workspaces import expr

    blocks: list[Any] = [
        wr.P(
            f"hvbench sweep '{sweep}': every model on every task, mean and ±1 std over seeds. "
            "Numbers are the runs' final test metrics (the same names as metrics.json)."
        )
    ]
    for task, models in tasks.items():
        runset = wr.Runset(
            entity=entity,
            project=project,
            name=f"{sweep} · {task}",
            filters=expr.And(expr.Metric("Group") == sweep, expr.Config("task.name") == task),
            groupby=["jobType"],
        )
        blocks += [wr.H2(task), wr.PanelGrid(runsets=[runset], panels=_panels(wr, models))]
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
        bars("test ELBO (nats) ↑", ["test/elbo_nats"]),
        bars("test IWAE (nats) ↑", ["test/iwae_nats"]),
        bars("test −ELBO per dim ↓ (bits/dim or nats/dim)", ["test/elbo_nll_bpd", "test/elbo_nll_nats_per_dim"]),
        bars("collapse ↓", ["test/collapse_rate", "test/kl_collapse_rate"]),
        bars("training throughput (images/s)", ["perf/train_images_per_s"]),
        wr.LinePlot(
            title="validation ELBO (nats)",
            x=STEP,
            y=["val/elbo_nats"],
            groupby_aggfunc="mean",
            groupby_rangefunc="stddev",
        ),
    ]
    if groups:
        panels += [
            bars("KL share per latent group", [f"test/kl_share/{g}" for g in groups]),
            bars("collapse per latent group", [f"test/collapse_rate/{g}" for g in groups]),
        ]
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
                lines.append(f"  runs: {runset.filters} grouped by {', '.join(runset.groupby)}")
            for panel in block.panels:
                shown = getattr(panel, "metrics", None) or getattr(panel, "y", [])
                lines.append(f"    {type(panel).__name__} '{panel.title}': {', '.join(shown)}")
        elif type(block).__name__ == "H2":
            lines.append(f"  {block.text}")
    return lines


def _sweep_of(run_dir: Path) -> str | None:
    from hvbench.aggregate import run_config

    config = run_config(run_dir) or {}
    return (config.get("output") or {}).get("sweep")
