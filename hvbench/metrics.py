"""Pure functions behind the leaderboard's collapse numbers (DESIGN §6).

Two collapse definitions are reported, each named exactly:
- *posterior collapse* (Burda et al. 2015): unit u is active iff
  Var_x(E_q[z_u | x]) > threshold; for a spatial group a unit is a channel
  and its activity is the position-average of the per-position variances;
- *KL collapse*: a unit whose KL, averaged over the split (and summed over
  positions for a channel), is below a threshold.
"""

from __future__ import annotations

import math

from torch import Tensor


def two_pass_variance(x: Tensor) -> Tensor:
    """Variance over dim 0 in float64: mean first, then mean squared deviation (stable)."""
    x = x.double()
    return (x - x.mean(0, keepdim=True)).square().mean(0)


def unit_activity(post_means: Tensor) -> Tensor:
    """(N, units[, H, W]) posterior means → (units,) activity Var_x(E_q[z_u])."""
    variance = two_pass_variance(post_means)
    return variance.flatten(1).mean(1) if variance.dim() > 1 else variance


def group_collapse(
    post_means: Tensor, kl_per_unit: Tensor, au_threshold: float, kl_threshold: float
) -> dict[str, float]:
    """Active units and both collapse rates of one latent group.

    `kl_per_unit` is (units,), the split-mean KL of each unit in nats.
    """
    activity = unit_activity(post_means)
    units = activity.numel()
    active = int((activity > au_threshold).sum())
    kl_collapsed = int((kl_per_unit < kl_threshold).sum())
    return {
        "units": units,
        "active_units": active,
        "collapse_rate": 1.0 - active / units,
        "kl_collapse_rate": kl_collapsed / units,
        "kl_nats": float(kl_per_unit.sum()),
    }


def nats_to_bits_per_dim(nats: float, dims: int) -> float:
    return nats / (dims * math.log(2))
