"""Collapse metrics against hand-built active and collapsed units."""

from __future__ import annotations

import torch

from hvbench.metrics import group_collapse, nats_to_bits_per_dim, two_pass_variance, unit_activity


def test_hand_built_units() -> None:
    torch.manual_seed(0)
    n = 5000
    means = torch.stack(
        [
            torch.randn(n),  # active: variance 1
            torch.full((n,), 3.0),  # collapsed: constant posterior mean
            0.05 * torch.randn(n),  # collapsed: variance 0.0025 < 0.01
            0.2 * torch.randn(n),  # active: variance 0.04
        ],
        dim=1,
    )
    kl = torch.tensor([2.0, 0.0, 0.005, 0.3])
    stats = group_collapse(means, kl, au_threshold=0.01, kl_threshold=0.01)
    assert stats == {
        "units": 4,
        "active_units": 2,
        "collapse_rate": 0.5,
        "kl_collapse_rate": 0.5,
        "kl_nats": stats["kl_nats"],
    }
    assert abs(stats["kl_nats"] - 2.305) < 1e-6


def test_two_pass_variance_is_stable_far_from_zero() -> None:
    """A naive E[x²] − E[x]² in float32 loses a variance of 0.04 at an offset of 1e4."""
    torch.manual_seed(0)
    x = (1e4 + 0.2 * torch.randn(10_000, 1)).float()
    assert abs(float(two_pass_variance(x)) - 0.04) < 0.004


def test_spatial_groups_average_positions_per_channel() -> None:
    n = 1000
    means = torch.zeros(n, 2, 3, 3)
    means[:, 0, 1, 1] = torch.randn(n) * 3  # one position of channel 0 varies
    activity = unit_activity(means)
    assert activity.shape == (2,)
    assert abs(float(activity[0]) - 9 / 9) < 0.15 and float(activity[1]) == 0.0


def test_bits_per_dim() -> None:
    assert abs(nats_to_bits_per_dim(3072 * 0.6931471805599453, 3072) - 1.0) < 1e-12
