"""Final evaluation of a trained model on one split (DESIGN §6).

Every process evaluates a contiguous shard of the split; per-example values
are gathered and only then averaged, so padding never enters a mean and a
non-finite example is counted, never dropped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor

from hvbench import disentanglement
from hvbench.config import EvalConfig
from hvbench.device import synchronize
from hvbench.metrics import group_collapse, nats_to_bits_per_dim, unit_activity
from hvbench.task import TaskData

# importance samples decoded per call of log_weights: keeps IWAE memory flat in k
IWAE_SAMPLES_PER_CALL = 4096
DISENTANGLEMENT_METRICS = (
    "mig",
    "dci_lasso_disentanglement",
    "dci_lasso_completeness",
    "dci_lasso_informativeness",
)


@dataclass
class SplitEvaluation:
    """Scalar metrics (W&B / metrics.json names) plus per-unit detail for figures."""

    metrics: dict[str, float]
    units: dict[str, dict[str, list[float]]]  # group -> {"kl_nats": [...], "activity": [...]}
    post_means: dict[str, Tensor]  # group -> (N, units[, H, W]) E_q[z | x], on CPU
    # (factors, units) |Spearman ρ| of E_q[z | x], units as in disentanglement.unit_names;
    # only for a task with ground-truth factors on this split
    factor_unit: Tensor | None = None


def shard(n: int, accelerator: Accelerator) -> Tensor:
    """This process's contiguous slice of range(n), padded by repeating the last index."""
    per = math.ceil(n / accelerator.num_processes)
    start = accelerator.process_index * per
    return torch.arange(start, start + per).clamp(max=n - 1)


def gather_rows(accelerator: Accelerator, local: Tensor, n: int) -> Tensor:
    """Concatenate every process's shard in rank order and drop the padding."""
    return accelerator.gather(local.contiguous())[:n]


def _passes(model: torch.nn.Module, cfg: EvalConfig) -> int:
    """E_q[z] is exact for a flat VAE; hierarchies estimate it by ancestral Monte Carlo."""
    return 1 if getattr(model, "posterior_mean_is_exact", False) else cfg.au_samples


@torch.no_grad()
def evaluate_split(
    model: torch.nn.Module, task: TaskData, split: str, accelerator: Accelerator, cfg: EvalConfig
) -> SplitEvaluation:
    model.eval()
    images = task.splits[split]
    n = min(len(images), cfg.max_examples or len(images))
    index = shard(n, accelerator)
    passes = _passes(model, cfg)
    sums: dict[str, Any] = {"elbo": [], "log_px": [], "kl": {}, "mean": {}}
    timed_images, timed_seconds = 0, 0.0
    starts = range(0, len(index), cfg.batch_size)
    warmup = min(cfg.throughput_warmup, len(starts) - 1)  # always time at least one batch
    for b, start in enumerate(starts):
        x = images[index[start : start + cfg.batch_size]].to(accelerator.device)
        t0 = time.perf_counter()
        outs = []
        for _ in range(passes):
            with accelerator.autocast():
                outs.append(model(x))
        if b >= warmup:
            synchronize(accelerator.device)
            timed_seconds += time.perf_counter() - t0
            timed_images += len(x) * passes
        sums["elbo"].append(torch.stack([o.elbo for o in outs]).mean(0))
        sums["log_px"].append(torch.stack([o.log_px for o in outs]).mean(0))
        for g in outs[0].kl_units:
            sums["kl"].setdefault(g, []).append(
                torch.stack([o.kl_units[g].float() for o in outs]).mean(0)
            )
            sums["mean"].setdefault(g, []).append(
                torch.stack([o.post_mean[g].float() for o in outs]).mean(0)
            )
    elbo = gather_rows(accelerator, torch.cat(sums["elbo"]), n).double().cpu()
    log_px = gather_rows(accelerator, torch.cat(sums["log_px"]), n).double().cpu()
    kl_units = {
        g: gather_rows(accelerator, torch.cat(v), n).double().cpu() for g, v in sums["kl"].items()
    }
    post_means = {
        g: gather_rows(accelerator, torch.cat(v), n).cpu() for g, v in sums["mean"].items()
    }

    metrics = _likelihood_metrics(split, elbo, log_px, task)
    metrics.update(_collapse_metrics(split, kl_units, post_means, cfg))
    scores, factor_unit = _disentanglement_metrics(split, task, post_means, n)
    metrics.update(scores)
    rate = (
        timed_images * accelerator.num_processes / timed_seconds if timed_seconds else float("nan")
    )
    metrics[f"perf/{split}_eval_images_per_s"] = rate
    if cfg.iwae_k > 0:
        metrics.update(_iwae_metrics(model, task, split, accelerator, cfg))
    units = {
        g: {"kl_nats": k.mean(0).tolist(), "activity": unit_activity(post_means[g]).tolist()}
        for g, k in kl_units.items()
    }
    return SplitEvaluation(metrics, units, post_means, factor_unit)


def _per_dim(prefix: str, nats: float, task: TaskData) -> dict[str, float]:
    """−bound per dimension: bits/dim for 8-bit data under a discrete likelihood, else nats/dim."""
    dims = task.spec.dims
    if task.discrete_data:
        return {f"{prefix}_nll_bpd": nats_to_bits_per_dim(-nats, dims)}
    return {f"{prefix}_nll_nats_per_dim": -nats / dims}


def _likelihood_metrics(
    split: str, elbo: Tensor, log_px: Tensor, task: TaskData
) -> dict[str, float]:
    mean_elbo = float(elbo.mean())
    return {
        f"{split}/elbo_nats": mean_elbo,
        **_per_dim(f"{split}/elbo", mean_elbo, task),
        f"{split}/log_px_nats": float(log_px.mean()),
        f"{split}/kl_nats": float((log_px - elbo).mean()),
        f"{split}/examples": len(elbo),
        f"{split}/nonfinite_examples": int((~torch.isfinite(elbo)).sum()),
    }


def _collapse_metrics(
    split: str, kl_units: dict[str, Tensor], post_means: dict[str, Tensor], cfg: EvalConfig
) -> dict[str, float]:
    out: dict[str, float] = {}
    total_kl = sum(float(k.mean(0).sum()) for k in kl_units.values())
    units = active = kl_collapsed = 0
    for g, kl in kl_units.items():
        stats = group_collapse(
            post_means[g], kl.mean(0), cfg.au_threshold, cfg.kl_collapse_threshold
        )
        for name, value in stats.items():
            out[f"{split}/{name}/{g}"] = value
        out[f"{split}/kl_share/{g}"] = stats["kl_nats"] / total_kl if total_kl > 0 else 0.0
        units += stats["units"]
        active += stats["active_units"]
        kl_collapsed += round(stats["kl_collapse_rate"] * stats["units"])
    out[f"{split}/units"] = units
    out[f"{split}/active_units"] = active
    out[f"{split}/collapse_rate"] = 1.0 - active / units
    out[f"{split}/kl_collapse_rate"] = kl_collapsed / units
    return out


def _disentanglement_metrics(
    split: str, task: TaskData, post_means: dict[str, Tensor], n: int
) -> tuple[dict[str, float], Tensor | None]:
    """MIG, DCI-lasso and the factor × unit |Spearman| matrix of E_q[z|x] (DESIGN §6).

    `post_means` hold the split's first `n` examples; the factors are cut to
    the same rows. Non-finite posterior means give NaN scores and no matrix
    (the likelihood metrics already count such examples).
    """
    if split not in task.factors:
        return {}, None
    codes = disentanglement.latent_units(post_means)
    factors = task.factors[split][:n]
    keys = [f"{split}/{name}" for name in DISENTANGLEMENT_METRICS]
    if not torch.isfinite(codes).all():
        return dict.fromkeys(keys, math.nan), None
    discrete = [name in task.discrete_factors for name in task.factor_names]
    dci = disentanglement.dci_lasso(codes, factors, discrete)
    mig = disentanglement.mig(codes, factors, discrete)
    values = (mig, dci.disentanglement, dci.completeness, dci.informativeness)
    scores = dict(zip(keys, values, strict=True))
    return scores, disentanglement.spearman_matrix(codes, factors)


def _iwae_metrics(
    model: torch.nn.Module, task: TaskData, split: str, accelerator: Accelerator, cfg: EvalConfig
) -> dict[str, float]:
    """log (1/k) Σ_j p(x, z_j)/q(z_j|x) per example, k split into chunks so memory stays flat."""
    images = task.splits[split]
    limit = min(filter(None, (len(images), cfg.max_examples, cfg.iwae_examples)))
    index = shard(limit, accelerator)
    k = cfg.iwae_k
    chunk = min(k, IWAE_SAMPLES_PER_CALL)
    batch = max(1, IWAE_SAMPLES_PER_CALL // chunk)
    bounds = []
    base = accelerator.unwrap_model(model)
    for start in range(0, len(index), batch):
        x = images[index[start : start + batch]].to(accelerator.device)
        log_w = []
        for done in range(0, k, chunk):
            with accelerator.autocast():
                log_w.append(base.log_weights(x, min(chunk, k - done)).double())
        bounds.append(torch.logsumexp(torch.cat(log_w, dim=1), dim=1) - math.log(k))
    iwae = gather_rows(accelerator, torch.cat(bounds), limit).cpu()
    mean = float(iwae.mean())
    return {
        f"{split}/iwae_nats": mean,
        **_per_dim(f"{split}/iwae", mean, task),
        f"{split}/iwae_k": k,
        f"{split}/iwae_examples": limit,
    }


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
