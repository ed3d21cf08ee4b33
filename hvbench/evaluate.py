"""Final evaluation of a trained model on one split (docs/design.md §6).

Every process evaluates a contiguous shard of the split; per-example values
are gathered and only then averaged, so padding never enters a mean and a
non-finite example is counted, never dropped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor

from hvbench import disentanglement
from hvbench.config import EvalConfig
from hvbench.device import synchronize
from hvbench.latents import ModelOutput
from hvbench.metric_table import key
from hvbench.metrics import (
    Activity,
    active,
    exact_activity,
    group_collapse,
    nats_to_bits_per_dim,
    split_half_activity,
)
from hvbench.progress import StepReporter
from hvbench.task import TaskData

DISENTANGLEMENT_METRICS = (
    "mig",
    "dci_lasso_disentanglement",
    "dci_lasso_completeness",
    "dci_lasso_informativeness",
)


@dataclass
class SplitEvaluation:
    """Scalar metrics (W&B / metrics.json names) plus per-unit detail for figures.

    `notes` say why a metric is NaN or n/a (no active unit, a rate term), keyed
    by the metric's name, so an undefined number is never silently missing.
    """

    metrics: dict[str, float]
    units: dict[str, dict[str, Any]]  # group -> per-unit lists (see `_unit_record`)
    post_means: dict[str, Tensor]  # group -> (N, units[, H, W]) E_q[z | x], on CPU
    notes: dict[str, str] = field(default_factory=dict)
    estimators: dict[str, str] = field(default_factory=dict)  # what each number averaged
    # (factors, units) |Spearman ρ| of E_q[z | x], units as in disentanglement.unit_names;
    # only for a task with ground-truth factors on this split
    factor_unit: Tensor | None = None
    # summary name -> its groups, from the model's `group_summaries` (e.g. VDVAE's per resolution)
    summaries: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class GroupDraws:
    """One latent group over the split: per-example halves of the posterior draws.

    `half_a`/`half_b` are the means of E_q[z | x, pa] over two disjoint halves of
    the ancestral draws (the same tensor twice when one pass is exact);
    `cond_a`/`cond_b` the same of E_q[z | x, pa] − E_p[z | pa].
    """

    analytic: bool
    term: Tensor  # (N, units) KL or rate term, mean over draws
    half_a: Tensor
    half_b: Tensor
    cond_a: Tensor
    cond_b: Tensor

    @property
    def post_mean(self) -> Tensor:
        return (self.half_a + self.half_b) / 2

    def activity(self, exact: bool) -> Activity:
        if exact:
            return exact_activity(self.half_a)
        return split_half_activity(self.half_a, self.half_b)

    def conditional(self, exact: bool) -> Activity:
        if exact:
            return exact_activity(self.cond_a)
        return split_half_activity(self.cond_a, self.cond_b)


def shard(n: int, accelerator: Accelerator) -> Tensor:
    """This process's contiguous slice of range(n), padded by repeating the last index."""
    per = math.ceil(n / accelerator.num_processes)
    start = accelerator.process_index * per
    return torch.arange(start, start + per).clamp(max=n - 1)


def real_rows(n: int, accelerator: Accelerator, start: int, size: int) -> int:
    """How many of this process's rows start..start+size are real examples, not padding."""
    first = accelerator.process_index * math.ceil(n / accelerator.num_processes) + start
    return max(0, min(size, n - first))


def gather_rows(accelerator: Accelerator, local: Tensor, n: int) -> Tensor:
    """Concatenate every process's shard in rank order and drop the padding."""
    return accelerator.gather(local.contiguous())[:n]


class _BatchDraws:
    """Running sums over one batch's posterior draws, so no draw's outputs are kept (S decoder
    outputs of a CelebA batch would not fit in memory). Draw s < S/2 goes to half A, the
    rest to half B; one exact pass counts for both halves."""

    def __init__(self, passes: int, exact: bool):
        self.passes, self.exact, self.seen = passes, exact, 0
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.analytic: dict[str, bool] = {}

    def _add(self, name: str, value: Tensor) -> None:
        value = value.float()
        self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.counts[name] = self.counts.get(name, 0) + 1

    def add(self, out: ModelOutput) -> None:
        half = "a" if self.exact or self.seen < self.passes // 2 else "b"
        self._add("elbo", out.elbo)
        self._add("log_px", out.log_px)
        for g in out.kl_units:
            self.analytic[g] = out.analytic[g]
            mean = out.post_mean[g].float()
            self._add(f"{g}:term", out.kl_units[g])
            self._add(f"{g}:half_{half}", mean)
            self._add(f"{g}:cond_{half}", mean - out.prior_mean[g].float())
        self.seen += 1

    def means(self) -> dict[str, Tensor]:
        """Per-example means of every sum over the draws it received."""
        out = {name: total / self.counts[name] for name, total in self.sums.items()}
        if self.exact:  # the one exact pass is both halves
            out |= {name[:-1] + "b": v for name, v in out.items() if name.endswith("_a")}
        return out


def full_precision(model: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module:
    """The model as the final evaluation runs it: out of DDP and without Accelerate's autocast
    around forward, so every reported number is computed in fp32 whatever the training
    precision, and runs trained in bf16 and fp32 are scored alike (a bf16 forward moves an
    ELBO by more than some gaps the board ranks). It strips the
    autocast wrapper in place, so it is for after training; the periodic validation during
    training keeps the training precision."""
    return accelerator.unwrap_model(model, keep_fp32_wrapper=False)


@dataclass
class _Collected:
    """What evaluate_split's pass over the batches gathered on this process: per-example rows
    of every statistic of the draws (by name), and the timing of the batches after warm-up."""

    n: int  # examples of the split evaluated, over every process
    exact: bool  # one pass gives E_q[z | x] exactly
    passes: int  # forward passes per batch
    rows: dict[str, list[Tensor]] = field(default_factory=dict)
    analytic: dict[str, bool] = field(default_factory=dict)
    timed_images: int = 0
    timed_seconds: float = 0.0


@torch.no_grad()
def evaluate_split(
    model: torch.nn.Module, task: TaskData, split: str, accelerator: Accelerator, cfg: EvalConfig
) -> SplitEvaluation:
    """Every metric of one split: likelihoods, collapse, disentanglement, IWAE, throughput.

    A model whose one pass gives E_q[z | x] exactly (`posterior_mean_is_exact`,
    read on the unwrapped model: DDP hides attributes) is run once per batch;
    any other `eval.au_samples` times, the draws split in two halves for the
    unbiased activity estimator (docs/design.md §6).
    """
    model = full_precision(model, accelerator)
    model.eval()
    exact = model.posterior_mean_is_exact
    passes = 1 if exact else cfg.au_samples
    images = task.splits[split]
    n = min(len(images), cfg.max_examples or len(images))
    index = shard(n, accelerator)
    collected = _Collected(n, exact, passes)
    starts = range(0, len(index), cfg.batch_size)
    warmup = min(cfg.throughput_warmup, len(starts) - 1)  # always time at least one batch
    iwae_batches = -(-len(shard(_iwae_limit(len(images), cfg), accelerator)) // cfg.batch_size)
    total = len(starts) + (iwae_batches if cfg.iwae_k > 0 else 0)
    reporter = StepReporter(total, accelerator.is_main_process, f"evaluate {split}", lines=4)
    with reporter:
        for b, start in enumerate(starts):
            x = images[index[start : start + cfg.batch_size]].to(accelerator.device)
            t0 = time.perf_counter()
            batch = _BatchDraws(passes, exact)
            for _ in range(passes):
                batch.add(model(x))
            if b >= warmup:
                synchronize(accelerator.device)
                collected.timed_seconds += time.perf_counter() - t0
                collected.timed_images += real_rows(n, accelerator, start, len(x))
            collected.analytic = batch.analytic
            for name, value in batch.means().items():
                collected.rows.setdefault(name, []).append(value)
            reporter.update(b + 1)
        return _split_metrics(model, task, split, accelerator, cfg, collected, reporter)


def _split_metrics(
    model: torch.nn.Module,
    task: TaskData,
    split: str,
    accelerator: Accelerator,
    cfg: EvalConfig,
    collected: _Collected,
    reporter: StepReporter,
) -> SplitEvaluation:
    """evaluate_split's metrics from the batches' draws; the IWAE batches report progress."""
    n, exact, analytic = collected.n, collected.exact, collected.analytic

    def gathered(name: str) -> Tensor:
        return gather_rows(accelerator, torch.cat(collected.rows[name]), n).cpu()

    elbo, log_px = gathered("elbo").double(), gathered("log_px").double()
    parts = ("term", "half_a", "half_b", "cond_a", "cond_b")
    draws = {
        g: GroupDraws(flag, **{p: gathered(f"{g}:{p}") for p in parts})
        for g, flag in analytic.items()
    }
    activities = {g: d.activity(exact) for g, d in draws.items()}
    conditionals = {g: d.conditional(exact) for g, d in draws.items()}
    post_means = {g: d.post_mean for g, d in draws.items()}

    notes: dict[str, str] = {}
    summaries = {k: list(v) for k, v in getattr(model, "group_summaries", {}).items()}
    metrics = _likelihood_metrics(split, elbo, log_px, task)
    metrics.update(
        _collapse_metrics(split, draws, activities, conditionals, cfg, notes, summaries)
    )
    scores, factor_unit = _disentanglement_metrics(
        split, task, post_means, activities, cfg.au_threshold, n, notes
    )
    metrics.update(scores)
    metrics[key("<split>_eval_images_per_s", split)] = _rate(
        accelerator, collected.timed_images, collected.timed_seconds
    )
    if cfg.iwae_k > 0:
        metrics.update(_iwae_metrics(model, task, split, accelerator, cfg, elbo, reporter))
    units = {g: _unit_record(d, activities[g], conditionals[g]) for g, d in draws.items()}
    described = estimators(cfg, collected.passes, exact)
    return SplitEvaluation(metrics, units, post_means, notes, described, factor_unit, summaries)


def estimators(cfg: EvalConfig, passes: int, exact: bool) -> dict[str, str]:
    """Exactly what each reported number averaged, for metrics.json's provenance."""
    draws = "one posterior draw" if passes == 1 else f"the mean of {passes} posterior draws"
    iwae = cfg.iwae_examples or cfg.max_examples
    subset = f"the first {iwae} examples" if iwae else "every example"
    return {
        "elbo": f"per example, the single-sample ELBO averaged over {draws}; then the split mean",
        "iwae": f"IWAE-{cfg.iwae_k} on {subset} of the split; iwae_elbo: the ELBO of the same examples",
        "activity": (
            "Var_x of the exact encoder mean"
            if exact
            else f"covariance over x of two half-means of {passes} ancestral draws (unbiased), "
            "with a Monte Carlo standard error per unit"
        ),
        "mig": (
            f"active units only; {disentanglement.BINS} equal-width bins per unit and continuous "
            f"factor; factors with at most {disentanglement.GRID_CLASSES} levels used by level"
        ),
        "dci": (
            f"active units only; lasso alpha={disentanglement.LASSO_ALPHA} on standardised "
            f"E_q[z|x] and factors, every {disentanglement.HOLDOUT_EVERY}th example held out; "
            f"D and C over factors with held-out R² > max({disentanglement.MIN_R2}, 3·√(2/n_held_out))"
        ),
    }


def _unit_record(draws: GroupDraws, activity: Activity, conditional: Activity) -> dict[str, Any]:
    """Per-unit numbers for metrics.json and the figures; a rate term is never named a KL."""
    term = "kl_nats" if draws.analytic else "rate_nats"
    return {
        "analytic": draws.analytic,
        term: draws.term.double().mean(0).tolist(),
        "activity": activity.value.tolist(),
        "activity_se": activity.standard_error.tolist(),
        "conditional_activity": conditional.value.tolist(),
        "conditional_activity_se": conditional.standard_error.tolist(),
    }


def _rate(accelerator: Accelerator, images: int, seconds: float) -> float:
    """Images/s of all processes together: their image counts summed, the slowest one's time."""
    counts = accelerator.gather(torch.tensor([images, seconds], device=accelerator.device))
    counts = counts.view(-1, 2).double()
    total, slowest = float(counts[:, 0].sum()), float(counts[:, 1].max())
    return total / slowest if slowest > 0 else float("nan")


def _per_dim(bound: str, split: str, nats: float, task: TaskData) -> dict[str, float]:
    """−bound per dimension: bits/dim for 8-bit data under a discrete likelihood, else nats/dim."""
    dims = task.spec.dims
    if task.discrete_data:
        return {key(f"{bound}_nll_bpd", split): nats_to_bits_per_dim(-nats, dims)}
    return {key(f"{bound}_nll_nats_per_dim", split): -nats / dims}


def _likelihood_metrics(
    split: str, elbo: Tensor, log_px: Tensor, task: TaskData
) -> dict[str, float]:
    mean_elbo = float(elbo.mean())
    return {
        key("elbo_nats", split): mean_elbo,
        **_per_dim("elbo", split, mean_elbo, task),
        key("log_px_nats", split): float(log_px.mean()),
        key("kl_nats", split): float((log_px - elbo).mean()),
        key("examples", split): len(elbo),
        key("nonfinite_examples", split): int((~torch.isfinite(elbo)).sum()),
    }


def _collapse_metrics(
    split: str,
    draws: dict[str, GroupDraws],
    activities: dict[str, Activity],
    conditionals: dict[str, Activity],
    cfg: EvalConfig,
    notes: dict[str, str],
    summaries: dict[str, list[str]],
) -> dict[str, float]:
    """Per group and overall: active, uncertain and conditionally active units; KL collapse over
    the analytic groups only, and each analytic group's share of their total KL. Each of the
    model's `summaries` (a name and its groups: VDVAE's dozens of groups per resolution) gets the
    same per-group keys, its groups pooled, so a board can show a few rows instead of dozens."""
    out: dict[str, float] = {}
    stats = {
        g: group_collapse(
            activities[g],
            conditionals[g],
            d.term.double().mean(0),
            d.analytic,
            cfg.au_threshold,
            cfg.kl_collapse_threshold,
        )
        for g, d in draws.items()
    }
    analytic_kl = sum(s["kl_nats"] for s in stats.values() if "kl_nats" in s)
    for g, group in stats.items():
        for name, value in group.items():
            out[key(name, split, g)] = value
        if "kl_nats" in group:
            out[key("kl_share", split, g)] = group["kl_nats"] / analytic_kl if analytic_kl else 0.0
        else:
            notes[key("kl_collapse_rate", split, g)] = (
                "n/a: a rate term, not a KL (the group is inferred before its prior's parents, "
                "or its q and p have no closed-form KL per unit)"
            )
    for name, members in summaries.items():
        if name in stats:
            raise ValueError(f"group summary {name!r} has the name of a latent group")
        pooled = _pooled([stats[g] for g in members], analytic_kl)
        out.update({key(metric, split, name): value for metric, value in pooled.items()})
    units = sum(s["units"] for s in stats.values())
    counted = [s for s in stats.values() if "kl_nats" in s]
    for name in ("active_units", "uncertain_units", "conditional_active_units"):
        out[key(name, split)] = sum(s[name] for s in stats.values())
    out[key("units", split)] = units
    out[key("collapse_rate", split)] = 1.0 - out[key("active_units", split)] / units
    out[key("conditional_collapse_rate", split)] = (
        1.0 - out[key("conditional_active_units", split)] / units
    )
    kl_units = sum(s["units"] for s in counted)
    out[key("kl_collapse_rate", split)] = (
        sum(s["kl_collapse_rate"] * s["units"] for s in counted) / kl_units
        if kl_units
        else math.nan
    )
    if not kl_units:
        notes[key("kl_collapse_rate", split)] = "n/a: no group has an analytic KL"
    return out


def _pooled(groups: list[dict[str, float]], analytic_kl: float) -> dict[str, float]:
    """Several groups' collapse numbers as one group's: counts summed, rates over their units
    (KL collapse over the analytic ones), KL and its share summed."""
    out = {
        name: sum(s[name] for s in groups)
        for name in ("units", "active_units", "uncertain_units", "conditional_active_units")
    }
    out["collapse_rate"] = 1.0 - out["active_units"] / out["units"]
    out["conditional_collapse_rate"] = 1.0 - out["conditional_active_units"] / out["units"]
    counted = [s for s in groups if "kl_nats" in s]
    if counted:
        kl = sum(s["kl_nats"] for s in counted)
        kl_units = sum(s["units"] for s in counted)
        out["kl_nats"] = kl
        out["kl_collapse_rate"] = sum(s["kl_collapse_rate"] * s["units"] for s in counted) / kl_units
        out["kl_share"] = kl / analytic_kl if analytic_kl else 0.0
    if len(counted) < len(groups):
        out["rate_nats"] = sum(s["rate_nats"] for s in groups if "rate_nats" in s)
    return out


def _disentanglement_metrics(
    split: str,
    task: TaskData,
    post_means: dict[str, Tensor],
    activities: dict[str, Activity],
    threshold: float,
    n: int,
    notes: dict[str, str],
) -> tuple[dict[str, float], Tensor | None]:
    """MIG, DCI-lasso of the *active* units' E_q[z|x]; |Spearman| of every unit (docs/design.md §6).

    Both scores ignore a unit's scale, so a collapsed unit's tiny variation would
    count as much as a real code: only units active by the (bias-free) activity
    estimator enter them. `post_means` hold the split's first `n` examples; the
    factors are cut to the same rows. Non-finite posterior means give NaN scores
    and no matrix (the likelihood metrics already count such examples).
    """
    if split not in task.factors:
        return {}, None
    codes = disentanglement.latent_units(post_means)
    factors = task.factors[split][:n]
    keys = [key(name, split) for name in DISENTANGLEMENT_METRICS]
    if not torch.isfinite(codes).all():
        for k in keys:
            notes[k] = "NaN: non-finite posterior means"
        return dict.fromkeys(keys, math.nan), None
    mask = torch.cat([active(a, threshold) for a in activities.values()])
    n_active = int(mask.sum())
    if n_active == 0:
        for k in keys:
            notes[k] = "NaN: no active unit, so nothing to score"
        return dict.fromkeys(keys, math.nan), disentanglement.spearman_matrix(codes, factors)
    discrete = [name in task.discrete_factors for name in task.factor_names]
    dci = disentanglement.dci_lasso(codes[:, mask], factors, discrete)
    mig = disentanglement.mig(codes[:, mask], factors, discrete)
    scores = dict(
        zip(keys, (mig, dci.disentanglement, dci.completeness, dci.informativeness), strict=True)
    )
    if math.isnan(mig):
        notes[keys[0]] = (
            "NaN: fewer than 2 active units (no gap)" if n_active < 2 else "NaN: every factor constant"
        )
    for k in keys[1:]:
        if math.isnan(scores[k]) and dci.reason:
            notes[k] = f"NaN: {dci.reason}"
    return scores, disentanglement.spearman_matrix(codes, factors)


def _iwae_metrics(
    model: torch.nn.Module,
    task: TaskData,
    split: str,
    accelerator: Accelerator,
    cfg: EvalConfig,
    elbo: Tensor,
    reporter: StepReporter,
) -> dict[str, float]:
    """log (1/k) Σ_j p(x, z_j)/q(z_j|x) per example on the split's first `iwae_examples`, with
    the ELBO of exactly those examples beside it (`elbo` holds the split's per-example ELBOs).
    `model` is evaluate_split's: already unwrapped and in fp32 (`full_precision`).

    `log_weights` keeps memory flat in k itself (latents.importance_log_weights).
    """
    images = task.splits[split]
    limit = _iwae_limit(len(images), cfg)
    index = shard(limit, accelerator)
    bounds = []
    done = reporter.total - (-(-len(index) // cfg.batch_size))
    for start in range(0, len(index), cfg.batch_size):
        x = images[index[start : start + cfg.batch_size]].to(accelerator.device)
        log_w = model.log_weights(x, cfg.iwae_k).double()
        bounds.append(torch.logsumexp(log_w, dim=1) - math.log(cfg.iwae_k))
        done += 1
        reporter.update(done)
    iwae = gather_rows(accelerator, torch.cat(bounds), limit).cpu()
    mean, subset_elbo = float(iwae.mean()), float(elbo[:limit].mean())
    return {
        key("iwae_nats", split): mean,
        **_per_dim("iwae", split, mean, task),
        key("iwae_elbo_nats", split): subset_elbo,
        key("iwae_k", split): cfg.iwae_k,
        key("iwae_examples", split): limit,
    }


def _iwae_limit(examples: int, cfg: EvalConfig) -> int:
    """How many of a split's first examples the IWAE bound is computed on."""
    return min(filter(None, (examples, cfg.max_examples, cfg.iwae_examples)))


@torch.no_grad()
def mean_elbo(
    model: torch.nn.Module, images: Tensor, n: int, accelerator: Accelerator, batch_size: int
) -> float:
    """The ELBO averaged over the first `n` images: the cheap periodic validation number."""
    model.eval()
    n = min(n, len(images))
    index = shard(n, accelerator)
    values = []
    for start in range(0, len(index), batch_size):
        x = images[index[start : start + batch_size]].to(accelerator.device)
        with accelerator.autocast():
            values.append(model(x).elbo.float())
    return float(gather_rows(accelerator, torch.cat(values), n).double().mean())
