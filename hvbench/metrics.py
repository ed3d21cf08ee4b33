"""Pure functions behind the leaderboard's collapse numbers (docs/design.md §6).

Three collapse readings are reported, each named exactly:
- *activity* (Burda et al. 2015): unit u is active iff Var_x(E_q[z_u | x]) >
  threshold; for a spatial group a unit is a channel and its activity is the
  position-average of the per-position variances;
- *conditional activity*: the same of E_q[z_u | x, pa] − E_p[z_u | pa], the
  part of the posterior mean that the conditional prior does not already
  predict. A unit whose posterior equals its conditional prior is Burda-active
  when the prior's mean moves with x through the layer above, and
  conditionally inactive;
- *KL collapse*: a unit whose KL, averaged over the split (and summed over
  positions for a channel), is below a threshold. Only groups whose KL is
  analytic have one; the others carry a single-sample *rate term*, which is not
  a KL (it can be negative) and is left out.

Hierarchies estimate E_q[z | x] by Monte Carlo over ancestral draws of the
parents. A plain mean of S draws adds Var(μ | x)/S of noise to Var_x, so units
whose posterior ignores x would read as active; `split_half_activity` removes
that bias by correlating two independent half-means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def two_pass_variance(x: Tensor) -> Tensor:
    """Variance over dim 0 in float64: mean first, then mean squared deviation (stable)."""
    x = x.double()
    return (x - x.mean(0, keepdim=True)).square().mean(0)


@dataclass(frozen=True)
class Activity:
    """Per-unit activity estimates and their Monte Carlo standard errors (0 when exact)."""

    value: Tensor  # (units,) float64
    standard_error: Tensor  # (units,) float64


def _per_unit(elementwise: Tensor) -> Tensor:
    """(units[, H, W]) → (units,): a channel's value is its mean over positions."""
    return elementwise.flatten(1).mean(1) if elementwise.dim() > 1 else elementwise


def split_half_activity(half_a: Tensor, half_b: Tensor) -> Activity:
    """Unbiased Var_x(E[z_u | x]) from two independent Monte Carlo half-means.

    `half_a`, `half_b` are (N, units[, H, W]): for every example, the means of two
    disjoint halves of the S posterior draws. Given x they share the expectation
    m(x) and have independent noise, so Cov_x(A, B) = Var_x(m) with no Var(μ|x)/S
    term. Passing the same exact means twice gives the plain two-pass variance
    and a standard error of 0.

    Standard error (Monte Carlo, given the split): with A = m + a, B = m + b,
    Var(Cov) ≈ (1/N²) Σ_x Var((m − m̄)(a + b) + ab), which the per-example product
    (M − M̄)(A − B), M = (A + B)/2, estimates without bias for Gaussian noise
    (M and A − B are then independent). For a channel the position-mean of that
    product is squared, so the positions' correlated noise is accounted for.
    """
    a, b = half_a.double(), half_b.double()
    n = len(a)
    covariance = ((a - a.mean(0)) * (b - b.mean(0))).mean(0)
    middle = (a + b) / 2
    product = (middle - middle.mean(0)) * (a - b)  # (N, units[, H, W])
    per_example = product.flatten(2).mean(2) if product.dim() > 2 else product
    standard_error = per_example.square().sum(0).sqrt() / n
    return Activity(_per_unit(covariance), standard_error)


def exact_activity(post_means: Tensor) -> Activity:
    """Activity of posterior means that are exact (no Monte Carlo): Var_x, standard error 0."""
    variance = _per_unit(two_pass_variance(post_means))
    return Activity(variance, torch.zeros_like(variance))


def active(activity: Activity, threshold: float) -> Tensor:
    """(units,) bool: strictly above the threshold."""
    return activity.value > threshold


def uncertain(activity: Activity, threshold: float) -> Tensor:
    """(units,) bool: within two Monte Carlo standard errors of the threshold."""
    return (activity.value - threshold).abs() <= 2 * activity.standard_error


def group_collapse(
    activity: Activity,
    conditional: Activity,
    term_per_unit: Tensor,
    analytic: bool,
    au_threshold: float,
    kl_threshold: float,
) -> dict[str, float]:
    """Active units and the collapse rates of one latent group.

    `term_per_unit` is (units,), the split-mean KL of each unit in nats when
    `analytic`, otherwise the split-mean single-sample rate term; the KL-collapse
    rate of a rate-term group is NaN (undefined), never a count of negative terms.
    """
    units = activity.value.numel()
    n_active = int(active(activity, au_threshold).sum())
    n_conditional = int(active(conditional, au_threshold).sum())
    stats = {
        "units": units,
        "active_units": n_active,
        "uncertain_units": int(uncertain(activity, au_threshold).sum()),
        "collapse_rate": 1.0 - n_active / units,
        "conditional_active_units": n_conditional,
        "conditional_collapse_rate": 1.0 - n_conditional / units,
    }
    if analytic:
        stats["kl_nats"] = float(term_per_unit.sum())
        stats["kl_collapse_rate"] = int((term_per_unit < kl_threshold).sum()) / units
    else:
        stats["rate_nats"] = float(term_per_unit.sum())
        stats["kl_collapse_rate"] = math.nan
    return stats


def nats_to_bits_per_dim(nats: float, dims: int) -> float:
    return nats / (dims * math.log(2))
