"""The one table of metrics: name, direction, unit, estimator and meaning of every number.

Evaluation builds its keys here (`key`), the leaderboard takes its columns and
headers from here, and the README's metric table is generated from here
(`markdown_table`; tests/test_metric_table.py fails when the README drifts).
Estimator texts hold `{placeholders}` filled from a run's eval config, so a
threshold is written where it is set, never copied into a header.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from hvbench.atomic import write_text
from hvbench.config import EvalConfig

Scope = Literal["split", "group", "perf"]
Direction = Literal["↑", "↓", ""]


@dataclass(frozen=True)
class Metric:
    name: str
    scope: Scope  # split: `<split>/<name>`; group: `<split>/<name>/<group>`; perf: `perf/<name>`
    direction: Direction  # ↑ higher is better, ↓ lower is better, "" neither
    unit: str
    definition: str  # estimator and meaning; `{key}` placeholders come from the eval config


METRICS: tuple[Metric, ...] = (
    Metric(
        "elbo_nats",
        "split",
        "↑",
        "nats",
        "log p(x|z) − Σ KL on the whole split, each example's ELBO averaged over the posterior "
        "draws taken (1 for a flat VAE, `eval.au_samples` = {au_samples} for a hierarchy); no β, "
        "w_rec or free bits",
    ),
    Metric("examples", "split", "", "count", "examples evaluated (n of the whole-split numbers)"),
    Metric(
        "nonfinite_examples",
        "split",
        "↓",
        "count",
        "examples whose ELBO is not finite: counted, never dropped (the mean is then NaN)",
    ),
    Metric("log_px_nats", "split", "↑", "nats", "reconstruction term log p(x|z), split mean"),
    Metric(
        "elbo_nll_bpd",
        "split",
        "↓",
        "bits/dim",
        "−ELBO per dimension in bits, for 8-bit data under a discrete likelihood",
    ),
    Metric("elbo_nll_nats_per_dim", "split", "↓", "nats/dim", "−ELBO per dimension otherwise"),
    Metric(
        "iwae_nats",
        "split",
        "↑",
        "nats",
        "log (1/k) Σ_j p(x, z_j)/q(z_j|x), k = `eval.iwae_k` = {iwae_k}, on the split's first "
        "`iwae_examples` examples; chunked so memory is flat in k",
    ),
    Metric(
        "iwae_elbo_nats",
        "split",
        "↑",
        "nats",
        "the ELBO on exactly the IWAE examples, so IWAE − ELBO is a like-for-like gap",
    ),
    Metric("iwae_examples", "split", "", "count", "n of the IWAE and iwae_elbo numbers"),
    Metric(
        "iwae_nll_bpd",
        "split",
        "↓",
        "bits/dim",
        "−IWAE per dimension in bits (8-bit data), as CelebA-64 papers report on the valid split",
    ),
    Metric("iwae_nll_nats_per_dim", "split", "↓", "nats/dim", "−IWAE per dimension otherwise"),
    Metric("iwae_k", "split", "", "count", "importance samples per example of the IWAE bound"),
    Metric(
        "active_units",
        "split",
        "↑",
        "count",
        "Burda et al. 2015: unit u is active iff Var_x E_q[z_u|x] > {au_threshold}; a hierarchy "
        "estimates it from {au_samples} ancestral draws as the covariance over x of two "
        "independent half-means (no Monte Carlo bias), with a standard error per unit",
    ),
    Metric(
        "uncertain_units",
        "split",
        "",
        "count",
        "units whose activity is within 2 Monte Carlo standard errors of {au_threshold}",
    ),
    Metric("units", "split", "", "count", "latent units (a spatial group's unit is a channel)"),
    Metric("collapse_rate", "split", "↓", "fraction", "1 − active/units, overall and per group"),
    Metric(
        "conditional_active_units",
        "split",
        "↑",
        "count",
        "units with Var_x E[E_q[z_u|x,pa] − E_p[z_u|pa]] > {au_threshold} (same estimator): what "
        "the posterior adds to its conditional prior; equals `active_units` for a flat VAE",
    ),
    Metric(
        "conditional_collapse_rate",
        "split",
        "↓",
        "fraction",
        "1 − conditional_active/units",
    ),
    Metric(
        "kl_collapse_rate",
        "split",
        "↓",
        "fraction",
        "share of analytic-KL units whose mean KL is < {kl_collapse_threshold} nats (a spatial "
        "group's unit is a channel, KL summed over positions); groups with a rate term are left "
        "out (n/a)",
    ),
    Metric(
        "kl_nats",
        "group",
        "",
        "nats",
        "a group's analytic KL (its prior's parents drawn before it); the split's total "
        "`<split>/kl_nats` is log p(x|z) − ELBO",
    ),
    Metric(
        "rate_nats",
        "group",
        "",
        "nats",
        "a group without a closed-form KL per unit (inferred before its prior's parents, as in "
        "the stacked VAE and BIVA's bottom-up path, or a q and p with none, as a flow "
        "posterior): the single-sample rate term log q − log p, not a KL (can be negative)",
    ),
    Metric("kl_share", "group", "", "fraction", "a group's KL over the analytic groups' total KL"),
    Metric(
        "mig",
        "split",
        "↑",
        "score",
        "Mutual Information Gap (Chen et al. 2018) of the active units' E_q[z|x]: 20 equal-width "
        "bins per unit; a factor with ≤ 64 levels used by level, a continuous one binned; NaN "
        "with the reason below 2 active units",
    ),
    Metric(
        "dci_lasso_disentanglement",
        "split",
        "↑",
        "score",
        "DCI (Eastwood & Williams 2018) from a lasso (α = 0.02, standardised active units); "
        "factors with held-out R² ≤ max(0.05, 3·√(2/n_held_out)) left out, NaN with the reason "
        "when none is left; not "
        "disentanglement_lib's tree-based DCI",
    ),
    Metric("dci_lasso_completeness", "split", "↑", "score", "DCI completeness, same lasso"),
    Metric(
        "dci_lasso_informativeness",
        "split",
        "↑",
        "R²",
        "mean held-out R² over factors (every fifth example held out)",
    ),
    Metric(
        "train_images_per_s",
        "perf",
        "↑",
        "images/s",
        "steady-state training throughput, warm-up excluded, all processes together",
    ),
    Metric(
        "<split>_eval_images_per_s",
        "perf",
        "↑",
        "images/s",
        "evaluation throughput: each image counted once (not per posterior draw, no padding)",
    ),
    Metric(
        "peak_memory_mb",
        "perf",
        "↓",
        "MiB",
        "peak GPU memory allocated; peak resident set size on CPU",
    ),
    Metric("parameters", "perf", "", "count", "trainable parameters"),
)
BY_NAME = {m.name: m for m in METRICS}


def key(name: str, split: str | None = None, group: str | None = None) -> str:
    """The metrics.json / W&B key of a metric; unknown names fail loudly (no ad-hoc keys)."""
    metric = BY_NAME[name]
    if metric.scope == "perf":
        return f"perf/{name.replace('<split>', split or '')}"
    return f"{split}/{name}" + (f"/{group}" if group is not None else "")


def title(name: str, label: str) -> str:
    """A column or panel header for metric `name`: `label` and the table's arrow (↑ higher is
    better, ↓ lower is better), so no header types its own."""
    arrow = BY_NAME[name].direction
    return f"{label} {arrow}" if arrow else label


def definition(name: str, eval_config: dict[str, Any]) -> str:
    """A metric's definition with the run's eval settings filled in."""
    return BY_NAME[name].definition.format(**eval_config)


README_BEGIN = "<!-- metric table: generated by hvbench.metric_table.write_readme -->"
README_END = "<!-- end of metric table -->"


def markdown_table(eval_config: dict[str, Any]) -> str:
    """The README's metric table, generated so it cannot drift from the code."""
    lines = ["| metric | | unit | definition |", "|---|---|---|---|"]
    for m in METRICS:
        shown = {"split": f"test/{m.name}", "group": f"test/{m.name}/<group>"}.get(
            m.scope, f"perf/{m.name}"
        )
        text = m.definition.format(**eval_config).replace("|", "\\|")
        lines.append(f"| `{shown}` | {m.direction} | {m.unit} | {text} |")
    return "\n".join(lines)


def readme_block() -> str:
    """The table with the default eval settings, between the markers the README holds."""
    return f"{README_BEGIN}\n{markdown_table(asdict(EvalConfig()))}\n{README_END}"


def write_readme(path: Path) -> None:
    """Replace the README's metric table with a freshly generated one."""
    text = path.read_text()
    start, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
    write_text(path, text[:start] + readme_block() + text[end:])
